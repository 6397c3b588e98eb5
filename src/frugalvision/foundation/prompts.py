"""Prompt templates and prompt ensembling for CLIP-style zero-shot classification.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(https://arxiv.org/abs/2103.00020), §3.1.4: a class is described by several sentences ("a photo of a {}.",
"a blurry photo of a {}.", ...); its classifier weight is the average of the sentences' L2-normalised text
embeddings, renormalised:

    w_c = normalize( (1/T) Σ_t normalize(text(template_t(c))) )

Templates use ``{}`` where the class name goes. Class names have ``_`` replaced by spaces in prompts
(``golden_retriever`` -> "a photo of a golden retriever."), while labels keep the name as given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from frugalvision._checks import check_tensor
from frugalvision.errors import DataError

if TYPE_CHECKING:
    from frugalvision.foundation.features import FeatureModel

__all__ = [
    "DEFAULT_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "TEMPLATE_SETS",
    "ensemble_text_embeddings",
    "format_prompts",
    "parse_class_names",
    "read_class_names",
    "read_templates",
    "resolve_templates",
    "text_classifier",
]

#: General-purpose photo templates (ours; in the spirit of CLIP's ImageNet ensemble, without the
#: ImageNet-specific ones such as "origami" or "in a video game").
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a good photo of a {}.",
    "a bad photo of the {}.",
)
#: The single prompt of CLIP's plain zero-shot baseline.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
#: Named template sets accepted by :func:`resolve_templates`.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"default": DEFAULT_TEMPLATES, "simple": SIMPLE_TEMPLATES}


def _check_template(template: str, where: str) -> str:
    if template.count("{}") != 1:
        raise DataError(
            f"{where}: a template must contain '{{}}' exactly once (where the class name goes), got {template!r}"
        )
    return template


def _read_lines(path: str | os.PathLike[str], what: str) -> list[tuple[int, str]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {p}")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), 1):
        text = line.strip()
        if text and not text.startswith("#"):
            out.append((lineno, text))
    if not out:
        raise DataError(f"{what} file {p} lists nothing (blank lines and '#' comments are skipped)")
    return out


def read_templates(path: str | os.PathLike[str]) -> list[str]:
    """Templates from a text file, one per line (``{}`` marks the class name); blank and ``#`` lines skipped.

    Raises:
        DataError: missing/empty file, or a line without exactly one ``{}`` (the message names file and line).
    """
    return [_check_template(t, f"{path}:{n}") for n, t in _read_lines(path, "templates")]


def resolve_templates(spec: str | Sequence[str]) -> list[str]:
    """``"default"`` / ``"simple"`` / a path to a templates file / a sequence of templates -> checked list."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        if Path(spec).is_file():
            return read_templates(spec)
        raise DataError(f"templates must be one of {sorted(TEMPLATE_SETS)} or an existing file, got {spec!r}")
    templates = list(spec)
    if not templates:
        raise ValueError("templates is empty; give at least one, e.g. 'a photo of a {}.'")
    return [_check_template(t, f"templates[{i}]") for i, t in enumerate(templates)]


def _check_names(names: list[str], where: str) -> list[str]:
    if not names:
        raise DataError(f"{where}: no class names given")
    piped = [n for n in names if "|" in n]
    if piped:
        raise DataError(
            f"{where}: class names cannot contain '|' (it separates labels in manifests), got {piped}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{where}: class names must be unique, repeated: {repeated}")
    return names


def parse_class_names(text: str) -> list[str]:
    """``"cat, dog,red fox"`` -> ``["cat", "dog", "red fox"]`` (comma-separated, stripped, unique)."""
    names = [t.strip() for t in text.split(",")]
    if any(not n for n in names):
        raise DataError(f"empty class name in {text!r}; separate names with single commas")
    return _check_names(names, "classes")


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one per line; blank and ``#`` lines skipped; names must be unique."""
    return _check_names([t for _, t in _read_lines(path, "class names")], str(path))


def format_prompts(class_name: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: each template filled with the name (underscores read as spaces)."""
    name = class_name.replace("_", " ")
    return [t.replace("{}", name) for t in templates]


def ensemble_text_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """Prompt ensembling (Radford et al. 2021, §3.1.4): mean of normalised template embeddings, renormalised.

    Args:
        embeddings: ``(C, T, D)`` text embeddings of ``T`` templates for each of ``C`` classes.

    Returns:
        ``(C, D)`` unit-norm class embeddings.
    """
    check_tensor(embeddings, "embeddings")
    if embeddings.ndim != 3 or 0 in embeddings.shape:
        raise ValueError(
            f"embeddings must be 3-D (C, T, D) and non-empty, got shape {tuple(embeddings.shape)}"
        )
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(dim=1), dim=-1)


@torch.inference_mode()
def text_classifier(model: FeatureModel, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot classifier weights ``(C, D)``: ensembled, unit-norm text embeddings of every class.

    Args:
        model: a feature model with a text tower (``model.has_text``).
        classes: class names (``C``).
        templates: prompt templates (``T``), each with one ``{}``.
    """
    if not model.has_text:
        raise ValueError(
            f"model {model.spec.name!r} has no text tower; zero-shot needs an open_clip model, e.g. "
            "'open_clip:ViT-B-32/laion2b_s34b_b79k'"
        )
    names = _check_names(list(classes), "classes")
    temps = resolve_templates(templates)
    prompts = [p for c in names for p in format_prompts(c, temps)]
    emb = model.encode_text(prompts).float()
    return ensemble_text_embeddings(emb.view(len(names), len(temps), -1))
