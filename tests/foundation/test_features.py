"""Feature models: timm and open_clip behind one API, their preprocessing, weights and offline behaviour."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from frugalvision.data import ImageDataset, Sample
from frugalvision.embeddings import EmbeddingStore
from frugalvision.errors import WeightsError
from frugalvision.foundation import (
    OpenClipFeatureModel,
    create_feature_model,
    extract_features,
    feature_model_from_spec,
    parse_open_clip_name,
)


def test_open_clip_model_shapes(clip: OpenClipFeatureModel) -> None:
    assert isinstance(clip, OpenClipFeatureModel)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert clip(x).shape == (2, 32) and clip.num_features == 32
        torch.testing.assert_close(clip.encode_image(x, normalize=True).norm(dim=1), torch.ones(2))
        torch.testing.assert_close(clip(x), clip.model.encode_image(x))
        assert clip.patch_features(x).shape == (2, 64, 4, 4)  # width 64 on the 4x4 patch grid
        text = clip.encode_text(["a photo of a cat", "a dog"], normalize=True)
    assert text.shape == (2, 32)
    assert clip.has_text and clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial value
    assert clip.spec.name == "open_clip:ViT-B-32" and clip.spec.pretrained is False
    with pytest.raises(ValueError, match="no classifier"):
        clip.classify(x)


def test_open_clip_preprocessing_matches_its_timm_description(clip: OpenClipFeatureModel) -> None:
    # data_config (timm vocabulary) must describe exactly open_clip's own transform
    rng = np.random.default_rng(0)
    for shape in [(50, 70, 3), (90, 40, 3)]:
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        torch.testing.assert_close(clip.transform()(img), create_transform(**clip.data_config)(img))
    assert clip.data_config["input_size"] == (3, 32, 32) and clip.data_config["crop_mode"] == "center"


def test_open_clip_local_weights_round_trip(
    clip: OpenClipFeatureModel, tiny_kwargs: dict, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(path))
    again = create_feature_model("open_clip:ViT-B-32", weights=path, **tiny_kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(again(x), clip(x))
        torch.testing.assert_close(again.encode_text(["x"]), clip.encode_text(["x"]))
    assert again.spec.weights == str(path) and again.spec.pretrained is False
    other = {**tiny_kwargs, "embed_dim": 16}
    with pytest.raises(WeightsError, match="do not fit the model"):
        create_feature_model("open_clip:ViT-B-32", weights=path, **other)


def test_timm_feature_model_dense_features() -> None:
    vit = create_feature_model("test_vit", pretrained=False, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        dense = vit.patch_features(x)
        tokens = vit.forward_features(x)  # (B, prefix + h*w, C), final norm applied
    prefix = vit.model.num_prefix_tokens
    h = w = 64 // vit.model.patch_embed.patch_size[0]
    assert dense.shape == (2, vit.num_features, h, w)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), tokens[:, prefix:])
    cnn = create_feature_model("test_efficientnet", pretrained=False)
    with torch.inference_mode():
        torch.testing.assert_close(cnn.patch_features(x), cnn.forward_features(x))
    with pytest.raises(ValueError, match="no text tower"):
        cnn.encode_text(["a cat"])


def test_extract_features_caches_an_open_clip_store(
    clip: OpenClipFeatureModel, tiny_folder: Path, tmp_path: Path
) -> None:
    paths = sorted(tiny_folder.rglob("*.png"))[:4]
    ds = ImageDataset([Sample(path=p) for p in paths], [])
    store = extract_features(clip, ds, tmp_path / "store", num_workers=0, progress=False)
    x = torch.stack([clip.transform()(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        expected = clip.encode_image(x, normalize=True).numpy()
    np.testing.assert_allclose(store.vectors, expected, atol=1e-5, rtol=1e-5)
    assert EmbeddingStore.load(tmp_path / "store").info["backbone"]["name"] == "open_clip:ViT-B-32"


def test_spec_rebuilds_timm_models() -> None:
    fm = create_feature_model("test_efficientnet", pretrained=False)
    again = feature_model_from_spec(fm.spec.to_dict())
    assert again.spec == fm.spec


def test_open_clip_names() -> None:
    assert parse_open_clip_name("open_clip:ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_open_clip_name("open_clip:ViT-B-32") == ("ViT-B-32", None)
    with pytest.raises(ValueError, match="malformed"):
        parse_open_clip_name("open_clip:ViT-B-32/")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        create_feature_model("open_clip:ViT-Q-99", pretrained=False)
    with pytest.raises(WeightsError, match=r"no pretrained tag 'nope'.*laion2b_s34b_b79k"):
        create_feature_model("open_clip:ViT-B-32/nope")
    with pytest.raises(WeightsError, match="names no pretrained tag"):
        create_feature_model("open_clip:ViT-B-32")


@pytest.mark.parametrize(
    "name",
    [
        "open_clip:ViT-B-32/laion2b_s34b_b79k",  # hub-only weights
        "open_clip:ViT-B-16/openai",  # hub + URL weights
        "vit_small_patch14_dinov2.lvd142m",  # timm names go through create_backbone
        "vit_base_patch16_clip_224.openai",
    ],
)
def test_hub_models_fail_fast_offline(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache ~/.cache/clip is empty too
    start = time.perf_counter()
    with pytest.raises(WeightsError, match=r"offline mode.*weights"):
        create_feature_model(name)
    assert time.perf_counter() - start < 10


def test_open_clip_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses connections at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="cannot be reached"):
        create_feature_model("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert time.perf_counter() - start < 10


def test_open_clip_weights_in_cache_pass_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from frugalvision.foundation import check_open_clip_weights_available, features

    seen = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(features, "_in_hf_cache", lambda repo, fname: seen.append((repo, fname)) or True)
    check_open_clip_weights_available("ViT-B-32", "laion2b_s34b_b79k")  # no error: open_clip reads the cache
    assert seen[0] == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
