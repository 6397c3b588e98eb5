"""Token Merging (ToMe): r = 0 is the original model, the merge and the proportional attention against float64 /
unmodified-timm references, and the exported ToMe models against torch in ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from frugalvision.deploy import add_tome, choose_model, default_tome_r, export_onnx
from frugalvision.errors import UnsupportedModelError
from frugalvision.models.tome import _attention, apply_tome, bipartite_merge, merged_token_counts
from frugalvision.runtime import Predictor
from helpers import TIMM_DATA_CONFIG as DATA_CONFIG
from helpers import tiny_cnn, tiny_vit


def _vit(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"num_classes": 0, "img_size": 32, "patch_size": 8, "depth": 3, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def _images(n: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32))


@pytest.mark.parametrize(
    "kwargs", [{}, {"global_pool": "avg", "class_token": False}, {"reg_tokens": 2}, {"qk_norm": True}]
)
def test_r0_is_the_original_model(kwargs: dict) -> None:
    model, x = _vit(**kwargs), _images()
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(apply_tome(model, 0)(x), expected)
        merged = apply_tome(model, 2)(x)
        assert torch.equal(model(x), expected)  # the original is not modified
    assert merged.shape == expected.shape and not torch.equal(merged, expected)


def _merge_reference(x: np.ndarray, size: np.ndarray, metric: np.ndarray, r: int, p: int) -> list[np.ndarray]:
    """Bipartite soft matching in float64 with plain loops, one image at a time: rows ``[token..., size]``."""
    out = []
    for xb, sb, mb in zip(
        x.astype(np.float64), size.astype(np.float64), metric.astype(np.float64), strict=True
    ):
        a_idx, b_idx = list(range(p, len(xb), 2)), list(range(p + 1, len(xb), 2))
        unit = mb / np.linalg.norm(mb, axis=1, keepdims=True)
        best = {a: max(b_idx, key=lambda b, a=a: unit[a] @ unit[b]) for a in a_idx}
        score = {a: unit[a] @ unit[best[a]] for a in a_idx}
        merged = sorted(a_idx, key=lambda a: -score[a])[:r]
        rows = [np.append(xb[i], sb[i, 0]) for i in range(p)]
        rows += [np.append(xb[a], sb[a, 0]) for a in a_idx if a not in merged]
        for b in b_idx:
            group = [b] + [a for a in merged if best[a] == b]
            total = sum(sb[i, 0] for i in group)
            rows.append(np.append(sum(sb[i, 0] * xb[i] for i in group) / total, total))
        out.append(np.array(rows))
    return out


@pytest.mark.parametrize(("n", "p", "r"), [(9, 1, 3), (10, 2, 4), (7, 0, 2), (9, 1, 10)])
def test_merge_equals_float64_hand_computation(n: int, p: int, r: int) -> None:
    rng = np.random.default_rng(n + r)
    x = rng.standard_normal((2, n, 5)).astype(np.float32)
    size = rng.integers(1, 4, (2, n, 1)).astype(np.float32)
    metric = rng.standard_normal((2, n, 4)).astype(np.float32)
    got_x, got_s = bipartite_merge(
        torch.from_numpy(x), torch.from_numpy(size), torch.from_numpy(metric), r, p
    )
    expected = _merge_reference(x, size, metric, min(r, (n - p) // 2), p)
    assert got_x.shape[1] == n - min(r, (n - p) // 2) == expected[0].shape[0]
    for i, ref in enumerate(expected):
        got = np.concatenate([got_x[i].double().numpy(), got_s[i].double().numpy()], axis=1)
        np.testing.assert_array_equal(got[:p], ref[:p])  # the prefix tokens come first, untouched
        # the token order after the prefix is an implementation detail: compare the rows as sets
        np.testing.assert_allclose(np.array(sorted(map(tuple, got[p:]))), np.array(sorted(map(tuple, ref[p:]))),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
        assert got[:, -1].sum() == size[i].sum()  # every patch is still counted once


def test_proportional_attention_equals_attention_over_repeated_tokens() -> None:
    """With integer sizes, ``softmax(q k^T / sqrt(d) + log s)`` is timm's own attention over a sequence in which
    token j appears s_j times (the reference runs the unmodified timm module)."""
    attn = _vit().blocks[0].attn
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 6, 192)).astype(np.float32))
    sizes = [[1, 3, 1, 2, 1, 4], [2, 1, 1, 1, 5, 1]]
    size = torch.tensor(sizes, dtype=torch.float32)[..., None]
    with torch.inference_mode():
        got, _ = _attention(attn, x, size)
        for i, s in enumerate(sizes):
            repeated = x[i : i + 1].repeat_interleave(torch.tensor(s), dim=1)
            first = np.cumsum([0, *s[:-1]])
            expected = attn(repeated)[0, first]
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-5)


def test_token_counts_and_default_r() -> None:
    assert merged_token_counts(197, 1, [13] * 12)[-1] == 41
    assert merged_token_counts(17, 1, [9] * 3) == [9, 5, 3]  # r capped at half the patch tokens left
    vits16 = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=12)
    assert default_tome_r(vits16) == 8  # half of 196 patches over 12 blocks
    assert default_tome_r(_vit()) == 3  # 16 patches, 3 blocks


def test_unsupported_models_are_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedModelError, match="holds no timm VisionTransformer"):
        apply_tome(tiny_cnn(), 2)
    with pytest.raises(UnsupportedModelError, match="attention pooling"):
        apply_tome(_vit(global_pool="map"), 2)
    from frugalvision.models import create_embedding_model

    gem = create_embedding_model("test_vit", pretrained=False, pooling="gem", embedding_size=8)
    with pytest.raises(UnsupportedModelError, match="pooling 'gem' over the tokens"):
        apply_tome(gem, 2)
    native = create_embedding_model("test_vit", pretrained=False, embedding_size=8).eval()
    with torch.inference_mode():
        x = torch.randn(2, 3, *native.data_config["input_size"][1:])
        assert torch.equal(apply_tome(native, 0)(x), native(x))
    with pytest.raises(UnsupportedModelError, match="r must be"):
        apply_tome(_vit(), [1, 2])
    with pytest.raises(UnsupportedModelError, match="r must be"):
        apply_tome(_vit(), -1)


@pytest.fixture
def vit_bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tiny_vit(), folder, data_config=DATA_CONFIG, exporter="torchscript")
    return folder


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_runtime_equals_torch_on_the_merged_model(tmp_path: Path, exporter: str) -> None:
    folder = tmp_path / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_onnx(tiny_vit(), folder, data_config=DATA_CONFIG, exporter=exporter)
    assert result.model is not None
    config = add_tome(folder, result.model, r=3)
    record = config.models["tome"]
    assert (
        record["r"] == [3, 3] and record["tokens_after_block"] == [14, 11] and record["exporter"] == exporter
    )
    x = _images(7, seed=11)
    with torch.inference_mode():
        expected = apply_tome(tiny_vit(), 3)(x).numpy()
        original = tiny_vit()(x).numpy()
    got = Predictor(folder, precision="tome", threads=1).run(x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert np.abs(got - original).max() > 1e-2  # merging did change the outputs: this is the merged model
    q = Predictor(folder, precision="tome-int8-dynamic", threads=1).run(x.numpy())
    cos = (q * expected).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.98
    assert config.models["tome-int8-dynamic"]["source"] == "tome"


def test_choice_keeps_tome_only_within_budget(vit_bundle: Path) -> None:
    add_tome(vit_bundle, tiny_vit(), r=8, int8=False)  # 16 patches -> 1 left
    choice = choose_model(vit_bundle, threads=1, seconds=0.05, batch_sizes=(1,), min_mean_cosine=0.999)
    rows = {r["precision"]: r for r in choice.rows}
    assert rows["tome"]["mean_cosine"] < 0.999 and not rows["tome"]["within_budget"]
    assert choice.precision == "fp32"


def test_add_tome_refuses_a_cnn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_onnx(tiny_cnn(), tmp_path / "cnn", data_config=DATA_CONFIG, exporter="torchscript")
    with pytest.raises(UnsupportedModelError, match="no timm VisionTransformer"):
        add_tome(tmp_path / "cnn", result.model)
