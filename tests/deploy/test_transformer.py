"""Transformer paths of the deploy bundle: fused fp32 and dynamic int8 models against torch, the measured choice in
deploy.json, and Predictor(precision="auto") honouring it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.deploy import (
    add_dynamic_int8,
    add_fused,
    choose_model,
    export_onnx,
    is_transformer_graph,
    list_images,
)
from frugalvision.errors import FrugalVisionError
from frugalvision.runtime import Predictor
from helpers import TIMM_DATA_CONFIG as DATA_CONFIG
from helpers import tiny_cnn, tiny_vit


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


@pytest.fixture(scope="module")
def _vit_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vit") / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tiny_vit(), folder, data_config=DATA_CONFIG, exporter="torchscript")
    return folder


@pytest.fixture
def vit_bundle(_vit_once: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(_vit_once, tmp_path / "m"))


def _torch_reference(batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = tiny_vit()(torch.from_numpy(batch)).numpy()
    return out


def _batch(n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_transformer_graph_detection(vit_bundle: Path, tmp_path: Path) -> None:
    assert is_transformer_graph(vit_bundle / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tiny_cnn(), tmp_path / "cnn", data_config=DATA_CONFIG, exporter="torchscript")
    assert not is_transformer_graph(tmp_path / "cnn" / "model.onnx")


def test_fused_model_equals_torch(vit_bundle: Path) -> None:
    config = add_fused(vit_bundle)
    record = config.models["fp32-fused"]
    assert record["fusions"].get("SkipLayerNormalization", 0) > 0  # the optimizer did fuse something
    batch = _batch()
    got = Predictor(vit_bundle, precision="fp32-fused", threads=1).run(batch)
    expected = _torch_reference(batch)
    assert _cosines(got, expected).min() > 0.9999
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-3)


def test_dynamic_int8_close_to_torch(vit_bundle: Path) -> None:
    add_fused(vit_bundle)
    config = add_dynamic_int8(vit_bundle)
    record = config.models["int8-dynamic"]
    assert record["source"] == "fp32-fused" and len(record["kept_fp32"]) == 1
    batch = _batch()
    got = Predictor(vit_bundle, precision="int8-dynamic", threads=1).run(batch)
    cos = _cosines(got, _torch_reference(batch))
    # int8 products of a random 2-block ViT: close to torch's fp32, not equal
    assert cos.min() > 0.98, cos
    assert not np.allclose(got, _torch_reference(batch), atol=1e-5)  # it really is another model


def test_choice_is_recorded_and_honoured(vit_bundle: Path, image_folder: Path) -> None:
    add_fused(vit_bundle)
    add_dynamic_int8(vit_bundle)
    choice = choose_model(vit_bundle, check_images=image_folder, threads=1, seconds=0.05)
    assert {r["precision"] for r in choice.rows} == {"fp32", "fp32-fused", "int8-dynamic"}
    recorded = json.loads((vit_bundle / "deploy.json").read_text())["engine"]
    assert recorded["precision"] == choice.precision and recorded["budget"]["check"] == "images"
    kept = [r for r in choice.rows if r["within_budget"]]
    assert choice.precision == max(kept, key=lambda r: r["score"])["precision"]
    predictor = Predictor(vit_bundle, threads=1)  # precision="auto"
    assert predictor.precision == choice.precision
    batch = _batch()
    np.testing.assert_array_equal(
        predictor.run(batch), Predictor(vit_bundle, precision=choice.precision, threads=1).run(batch)
    )


def test_budget_excludes_models_that_disagree(vit_bundle: Path) -> None:
    add_dynamic_int8(vit_bundle)
    choice = choose_model(vit_bundle, threads=1, seconds=0.05, min_mean_cosine=0.99999)
    rows = {r["precision"]: r for r in choice.rows}
    assert rows["int8-dynamic"]["mean_cosine"] < 0.99999 and not rows["int8-dynamic"]["within_budget"]
    assert choice.precision == "fp32"  # the only model left within the budget


def test_auto_falls_back_to_fp32(vit_bundle: Path) -> None:
    assert Predictor(vit_bundle, threads=1).precision == "fp32"  # no engine record
    add_dynamic_int8(vit_bundle)
    deploy = json.loads((vit_bundle / "deploy.json").read_text())
    deploy["engine"] = {"precision": "int8"}  # a model the bundle does not hold
    (vit_bundle / "deploy.json").write_text(json.dumps(deploy))
    assert Predictor(vit_bundle, threads=1).precision == "fp32"
    deploy["engine"] = {"precision": "int8-dynamic"}
    (vit_bundle / "deploy.json").write_text(json.dumps(deploy))
    assert Predictor(vit_bundle, threads=1).precision == "int8-dynamic"


def test_errors(vit_bundle: Path) -> None:
    with pytest.raises(FrugalVisionError, match="no 'fp32-fused' model"):
        add_dynamic_int8(vit_bundle, source="fp32-fused")
    with pytest.raises(FrugalVisionError, match="deploy bundle folder"):
        add_fused(vit_bundle / "model.onnx")
    with pytest.raises(ValueError, match="min_mean_cosine"):
        choose_model(vit_bundle, min_mean_cosine=0)
    with pytest.raises(ValueError, match="precision must be 'auto'"):
        Predictor(vit_bundle, precision="int4")


def test_check_images_are_read(image_folder: Path) -> None:
    assert len(list_images(image_folder)) == 12
