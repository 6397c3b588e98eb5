"""MaskCut: several objects per image from repeated normalized cuts on patch features, without labels.

Wang, Girdhar, Yu, Misra, "Cut and Learn for Unsupervised Object Detection and Instance Segmentation"
(CutLER), CVPR 2023, https://arxiv.org/abs/2301.11320, Sec. 3.1. For ``t = 1..N``:

1. build the binary patch graph ``W_ij = 1`` if ``cos(K_i, K_j) > τ`` else ``ε`` (:func:`affinity_graph`),
   with the patches of objects found so far disconnected (their rows and columns set to ``ε``);
2. take the second-smallest eigenvector of ``(D - W) x = λ D x`` (:func:`second_smallest_eigenvector`);
3. split by the mean, choose the foreground side by the seed ``argmax |x|`` and the corner rule
   (:func:`foreground_from_eigenvector`), keep the 4-connected component holding the seed;
4. from the second object on, stop if the new mask covers at most ``min_area`` of the patches (CutLER's
   released code drops such masks; later cuts of the same graph would return them again).

Patch masks are upsampled to the image (bilinear on the patch grid, thresholded at 0.5) and boxed. The
paper refines masks with a dense CRF; that step is optional and not done here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from frugalvision._checks import check_ndim, check_tensor
from frugalvision.data import load_image
from frugalvision.discover.features import feature_stride, fixed_input_size, patch_features
from frugalvision.discover.ncut import (
    Solver,
    affinity_graph,
    connected_component,
    foreground_from_eigenvector,
    second_smallest_eigenvector,
)
from frugalvision.errors import ImageTooSmallError
from frugalvision.models import Backbone

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "Discovery",
    "ImageTooSmallError",
    "maskcut",
    "maskcut_patches",
    "masks_to_boxes",
    "upsample_masks",
]

#: Side of the square MaskCut resizes every image to (CutLER's ``fixed_size``).
DEFAULT_IMAGE_SIZE = 480

Upsample = Literal["bilinear", "nearest"]


@dataclass(frozen=True, eq=False)
class Discovery:
    """Objects MaskCut found in one image, in the order they were found.

    Attributes:
        masks: ``(K, H, W)`` bool, at the image's size.
        boxes: ``(K, 4)`` float32 ``(x0, y0, x1, y1)`` pixels, the tight box of each mask (``x1`` exclusive).
        scores: ``(K,)`` float32 ``1 - λ`` of each cut, in [0, 1]: a cleaner cut scores higher.
        patch_masks: ``(K, h, w)`` bool masks on the feature grid.
        image_size: ``(width, height)`` of the image.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    patch_masks: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``(K, 4)`` float32 ``(x0, y0, x1, y1)`` of ``(K, H, W)`` bool masks (``x1 = last column + 1``).

    An empty mask gives ``(0, 0, 0, 0)``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {masks.shape}")
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size:
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _check_settings(num_objects: int, tau: float, eps: float, min_area: float) -> None:
    if isinstance(num_objects, bool) or not isinstance(num_objects, (int, np.integer)) or num_objects < 1:
        raise ValueError(f"num_objects must be an integer >= 1, got {num_objects!r}")
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"tau is a cosine-similarity threshold and must lie in [-1, 1], got {tau}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be a small weight in (0, 1) for edges below tau, got {eps}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area is a fraction of the patches in [0, 1), got {min_area}")


def maskcut_patches(
    features: torch.Tensor,
    num_objects: int = 3,
    *,
    tau: float = 0.15,
    eps: float = 1e-5,
    min_area: float = 0.01,
    solver: Solver = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """MaskCut on one feature grid (CutLER Sec. 3.1); the maths without the image handling.

    Args:
        features: ``(h, w, C)`` patch features.
        num_objects: most objects to find (the paper's ``N``; 3 by default as in CutLER).
        tau: affinity threshold on cosine similarity (paper: 0.15).
        eps: weight of the edges below ``tau`` and of the edges of patches already taken.
        min_area: from the second object on, a mask covering at most this fraction of the patches ends
            the search (CutLER's code: 0.01).
        solver: eigen-solver, see :func:`second_smallest_eigenvector`.

    Returns:
        ``(patch_masks, eigenvalues)``: ``(K, h, w)`` bool, disjoint, ``K <= num_objects``, and the ``(K,)``
        eigenvalue ``λ`` of each cut.
    """
    features = check_tensor(features, "features")
    check_ndim(features, 3, "features", "(h, w, C)")
    _check_settings(num_objects, tau, eps, min_area)
    h, w, c = features.shape
    if h * w < 3:
        raise ValueError(f"the feature grid {h}x{w} has fewer than 3 patches: the image is too small to cut")
    base = affinity_graph(features.reshape(h * w, c), tau=tau, eps=eps)
    taken = np.zeros((h, w), dtype=bool)
    masks: list[np.ndarray] = []
    eigenvalues: list[float] = []
    for k in range(num_objects):
        if (~taken).sum() < 3:
            break
        graph = base.copy()
        flat = taken.reshape(-1)
        graph[flat, :] = eps
        graph[:, flat] = eps
        vector, lam = second_smallest_eigenvector(graph, solver=solver)
        foreground, seed = foreground_from_eigenvector(vector, (h, w), exclude=taken)
        mask = connected_component(foreground, seed)
        area = float(mask.mean())
        if area == 0.0 or (k >= 1 and area <= min_area):
            break
        masks.append(mask)
        eigenvalues.append(lam)
        taken |= mask
    stacked = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
    return stacked, np.asarray(eigenvalues, dtype=np.float64)


def upsample_masks(patch_masks: np.ndarray, size: tuple[int, int], mode: Upsample = "bilinear") -> np.ndarray:
    """Resize ``(K, h, w)`` bool patch masks to ``size = (H, W)`` pixels.

    ``"bilinear"``: interpolate the 0/1 grid (half-pixel centres) and keep values >= 0.5, which gives the
    patch-boundary edges of ``"nearest"`` with rounded corners.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {mode!r}")
    out = np.zeros((patch_masks.shape[0], *size), dtype=bool)
    for k, m in enumerate(patch_masks):
        grid = torch.from_numpy(np.asarray(m, dtype=np.float32))[None, None]
        if mode == "bilinear":
            up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False) >= 0.5
        else:
            up = F.interpolate(grid, size=size, mode="nearest") > 0.5
        out[k] = up[0, 0].numpy()
    return out


def _as_image(image: str | os.PathLike[str] | Image.Image) -> tuple[Image.Image, str]:
    if isinstance(image, Image.Image):
        return image.convert("RGB"), "the given PIL image"
    if isinstance(image, (str, os.PathLike)):
        return load_image(image), str(Path(image))
    raise TypeError(f"image must be a file path or a PIL.Image, got {type(image).__name__}")


def _input_size(backbone: Backbone, image_size: int | None, stride: int) -> tuple[int, int]:
    """``(H, W)`` of the network input: a fixed-size ViT's own size, else ``image_size`` squared."""
    fixed = fixed_input_size(backbone)
    if fixed is not None:
        if image_size is not None and (max(3, round(image_size / stride)) * stride,) * 2 != fixed:
            raise ValueError(
                f"this ViT was built for {fixed[0]}x{fixed[1]} inputs, not image_size={image_size}: pass "
                f"image_size=None, or build it with frugalvision.discover.create_discovery_backbone(name, "
                f"image_size={image_size})"
            )
        return fixed
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 3 * stride:
        raise ValueError(f"image_size must be at least 3 patches ({3 * stride} px), got {size}")
    side = round(size / stride) * stride
    return side, side


def preprocess(image: Image.Image, backbone: Backbone, size: tuple[int, int]) -> torch.Tensor:
    """Squash ``image`` to ``size = (H, W)`` (CutLER squashes to 480x480) and normalise with the backbone's mean/std.

    Returns ``(1, 3, H, W)``.
    """
    cfg = backbone.data_config
    interpolation = InterpolationMode(cfg.get("interpolation", "bicubic"))
    resized = TF.resize(image, list(size), interpolation=interpolation, antialias=True)
    tensor = TF.normalize(TF.to_tensor(resized), mean=list(cfg["mean"]), std=list(cfg["std"]))
    return tensor.unsqueeze(0)


def maskcut(
    image: str | os.PathLike[str] | Image.Image,
    backbone: Backbone,
    num_objects: int = 3,
    *,
    tau: float = 0.15,
    eps: float = 1e-5,
    image_size: int | None = None,
    upsample: Upsample = "bilinear",
    min_area: float = 0.01,
    solver: Solver = "auto",
) -> Discovery:
    """Find up to ``num_objects`` objects in an image without labels (MaskCut, CutLER Sec. 3.1).

    The image is squashed to ``image_size x image_size`` (480 by default, CutLER's ``fixed_size``; a ViT
    built for a fixed size uses that size), patch features are taken (ViT: last-block attention keys; CNN: the
    stride-16 map, see :func:`~frugalvision.discover.patch_features`), :func:`maskcut_patches` cuts them, and
    the patch masks are upsampled to the original image and boxed. No CRF refinement.

    Args:
        image: a file path or a PIL image.
        backbone: from :func:`~frugalvision.discover.create_discovery_backbone` or
            :func:`~frugalvision.models.create_backbone`; runs on the device of its parameters.
        num_objects: most objects to return.
        tau: cosine-similarity threshold of the patch graph (paper: 0.15).
        eps: weight of sub-threshold edges.
        image_size: square network input side in pixels, rounded to a multiple of the feature stride.
        upsample: ``"bilinear"`` (smooth, thresholded at 0.5) or ``"nearest"`` (blocky, as CutLER before its CRF).
        min_area: see :func:`maskcut_patches`.
        solver: see :func:`~frugalvision.discover.second_smallest_eigenvector`.

    Returns:
        :class:`Discovery`.

    Raises:
        ImageFileMissingError, CorruptImageError: the file is missing or not a readable image.
        ImageTooSmallError: the image is smaller than one feature patch (a ``ValueError``).
        ValueError: bad arguments.

    Example:
        >>> bb = create_discovery_backbone("tf_efficientnet_lite0.in1k_offline")  # doctest: +SKIP
        >>> found = maskcut("cat.jpg", bb, num_objects=3)  # doctest: +SKIP
        >>> found.boxes  # (K, 4) x0 y0 x1 y1 pixels  # doctest: +SKIP
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a frugalvision Backbone, got {type(backbone).__name__}")
    if upsample not in ("bilinear", "nearest"):
        raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
    _check_settings(num_objects, tau, eps, min_area)
    pil, name = _as_image(image)
    stride = feature_stride(backbone)
    width, height = pil.size
    if width < stride or height < stride:
        raise ImageTooSmallError(
            f"{name} is {width}x{height} pixels, smaller than one {stride}x{stride} feature patch; "
            "MaskCut needs images of at least one patch per side"
        )
    size = _input_size(backbone, image_size, stride)
    device = next(backbone.parameters()).device
    x = preprocess(pil, backbone, size).to(device)
    with torch.inference_mode():
        feats = patch_features(backbone, x)[0].float().cpu()
    patch_masks, eigenvalues = maskcut_patches(
        feats, num_objects, tau=tau, eps=eps, min_area=min_area, solver=solver
    )
    masks = upsample_masks(patch_masks, (height, width), upsample)
    keep = masks.reshape(masks.shape[0], -1).any(axis=1)
    masks, patch_masks, eigenvalues = masks[keep], patch_masks[keep], eigenvalues[keep]
    return Discovery(
        masks=masks,
        boxes=masks_to_boxes(masks),
        scores=np.clip(1.0 - eigenvalues, 0.0, 1.0).astype(np.float32),
        patch_masks=patch_masks,
        image_size=(width, height),
    )
