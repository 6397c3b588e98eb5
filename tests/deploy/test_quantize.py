"""int8 static quantisation: calibration reader, QDQ graph, the int8 model runs and stays close to fp32."""

from __future__ import annotations

import json
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from frugalvision.deploy import (
    ImageCalibrationReader,
    add_bf16_fastmath,
    compare_precisions,
    export_onnx,
    list_images,
    mean_average_precision,
    output_agreement,
    quantize_int8,
)
from frugalvision.errors import DataError, FrugalVisionError
from frugalvision.runtime import Predictor, Preprocessor
from helpers import TIMM_DATA_CONFIG as DATA_CONFIG
from helpers import tiny_cnn, tiny_vit


@pytest.fixture(scope="module")
def _exported_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "m"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tiny_cnn(), folder, data_config=DATA_CONFIG, exporter="torchscript")
    return folder


@pytest.fixture
def exported(_exported_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of the exported tiny CNN's deploy bundle (tests add models to it)."""
    return Path(shutil.copytree(_exported_once, tmp_path / "m"))


def test_calibration_reader(image_folder: Path) -> None:
    images = list_images(image_folder)
    assert len(images) == 12 and images == sorted(images)
    reader = ImageCalibrationReader(images, Preprocessor(DATA_CONFIG), "images", batch_size=5)
    sizes = []
    while (item := reader.get_next()) is not None:
        sizes.append(item["images"].shape)
    assert sizes == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)] and len(reader) == 3
    reader.rewind()
    first = reader.get_next()
    assert first is not None
    np.testing.assert_array_equal(first["images"], Preprocessor(DATA_CONFIG).batch(images[:5]))
    empty = image_folder.parent / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files"):
        list_images(empty)
    with pytest.raises(DataError, match="not a folder"):
        list_images(empty / "missing")


def test_quantize_int8(exported: Path, image_folder: Path) -> None:
    result = quantize_int8(exported, image_folder, max_images=8, check_images=4)
    ops = {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = json.loads((exported / "deploy.json").read_text())["models"]["int8"]
    assert record["calibration_images"] == 8 and record["check_images"] == 4 and record["check_held_out"]
    assert result.agreement["min_cosine"] > 0.95  # random weights; real models: see the slow test
    fp32, int8 = Predictor(exported), Predictor(exported, precision="int8")
    x = Preprocessor(DATA_CONFIG).batch(list_images(image_folder))
    assert output_agreement(fp32.run(x), int8.run(x))["mean_cosine"] > 0.98
    meta = {p.key: p.value for p in onnx.load(str(result.model_path)).metadata_props}
    assert meta["frugalvision.precision"] == "int8"


def test_transformers_quantise_matmuls_only(tmp_path: Path, image_folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tiny_vit(), tmp_path / "v", data_config=DATA_CONFIG, exporter="torchscript")
    result = quantize_int8(tmp_path / "v", image_folder, max_images=8, check_images=4)
    assert result.record["op_types"] == ["Conv", "MatMul", "Gemm"]
    ops = [n.op_type for n in onnx.load(str(result.model_path)).graph.node]
    assert "LayerNormalization" in ops and "QuantizeLinear" in ops
    assert result.agreement["mean_cosine"] > 0.99
    with pytest.raises(ValueError, match="op_types"):
        quantize_int8(tmp_path / "v", image_folder, op_types="MatMul")


def test_compare_precisions(exported: Path, image_folder: Path) -> None:
    quantize_int8(exported, image_folder, max_images=6, check_images=2)
    rows = compare_precisions(exported, image_folder, speed_seconds=0.01, batch_sizes=(1, 4))
    assert [r["precision"] for r in rows] == ["fp32", "int8"]
    for row in rows:
        assert 0.0 <= row["recall@1"] <= 1.0 and 0.0 <= row["map@r"] <= 1.0 and row["images/s@b4"] > 0
    assert rows[1]["min_cosine_vs_first"] > 0.9


def test_bf16_entry(exported: Path) -> None:
    config = add_bf16_fastmath(exported)
    assert config.models["bf16"]["session_config"] == {"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"}
    if platform.machine().lower() not in ("aarch64", "arm64"):
        with pytest.raises(FrugalVisionError, match="ARM64"):
            Predictor(exported, precision="bf16")


def test_mean_average_precision_matches_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    targets = rng.random((50, 6)) < 0.3
    scores = rng.random((50, 6)) + targets * 0.3
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(6)])
    assert mean_average_precision(scores, targets) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_int8_lite0_on_real_photos(tmp_path: Path, shared_data) -> None:
    """Real weights, real photos: int8 embeddings of held-out Caltech-101 images stay close to fp32."""
    from frugalvision.deploy import export_backbone

    root = shared_data("caltech101-dev")
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    calib = [p for d in classes[:25] for p in sorted(d.glob("*.jpg"))[:4]]
    check = [p for d in classes[25:] for p in sorted(d.glob("*.jpg"))[:2]]
    export_backbone("tf_efficientnet_lite0.in1k_offline", tmp_path / "lite0")
    quantize_int8(tmp_path / "lite0", calib, max_images=len(calib), check_images=0)
    fp32, int8 = Predictor(tmp_path / "lite0"), Predictor(tmp_path / "lite0", precision="int8")
    x = fp32.preprocess(check)
    agreement = output_agreement(fp32.run(x), int8.run(x))
    print(f"Lite0 int8 vs fp32 on {len(check)} held-out photos: {agreement}")
    assert agreement["mean_cosine"] > 0.98 and agreement["min_cosine"] > 0.95
