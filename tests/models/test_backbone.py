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


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone("tf_efficientnet_lite0.in1k_offline", num_classes=1000)


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", CATS), ("coffee", COFFEE)])
def test_offline_efficientnet_lite0_classifies_real_photos(lite0, photo: str, expected: set[int]) -> None:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, photo)())
    x = lite0.transform()(img).unsqueeze(0)
    with torch.inference_mode():
        probs = lite0.classify(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in expected, f"{photo}: top-1 class {top} ({float(probs[top]):.3f}) not in {expected}"
    assert float(probs[list(expected)].sum()) > 0.5


def test_offline_backbone_preprocessing_is_timms(lite0) -> None:
    cfg = lite0.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    assert "tf_efficientnet_lite0.in1k_offline" in list_offline_backbones()


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
