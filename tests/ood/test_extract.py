"""Model outputs for OOD scoring (features, logits, block norms), their cache, the CLI, and a real-photo check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore
from frugalvision.errors import StoreError
from frugalvision.models import create_backbone
from frugalvision.ood import OODDetector, auroc, extract_ood_inputs, jigsaw_block_norms


@pytest.fixture(scope="module")
def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    bb = create_backbone("test_efficientnet", pretrained=False, num_classes=3)
    bb.data_config["input_size"] = (3, 64, 64)  # small inputs keep the test fast
    return bb


def test_inputs_match_the_backbone_and_are_cached(small_cnn, tiny_folder: Path, tmp_path: Path) -> None:
    ds = read_folder(tiny_folder)
    x = extract_ood_inputs(small_cnn, ds, cache=tmp_path / "cache", num_workers=0, progress=False)
    assert x.features.shape == (12, small_cnn.num_features) and x.logits.shape == (12, 3)
    assert x.block_norms.ndim == 2 and x.block_norms.shape[0] == 12 and (x.block_norms >= 0).all()
    np.testing.assert_array_equal(x.labels, ds.primary_labels())
    batch = torch.stack([small_cnn.transform()(ds[i]["image"]) for i in range(3)])
    with torch.inference_mode():
        np.testing.assert_allclose(x.features[:3], small_cnn(batch).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(x.logits[:3], small_cnn.classify(batch).numpy(), rtol=1e-4, atol=1e-5)
    again = extract_ood_inputs(small_cnn, ds, cache=tmp_path / "cache", num_workers=0, progress=False)
    np.testing.assert_array_equal(again.features, x.features)
    assert EmbeddingStore.load(tmp_path / "cache").info["ood_layout"]["logits"] == 3
    # a plain embedding store is not mistaken for a cache of OOD inputs
    EmbeddingStore(np.zeros((1, 4), np.float32), ["a.png"], [()], info={"normalized": True}).save(
        tmp_path / "plain"
    )
    with pytest.raises(StoreError, match="another kind"):
        extract_ood_inputs(small_cnn, ds, cache=tmp_path / "plain", num_workers=0, progress=False)
    ids, jig = jigsaw_block_norms(small_cnn, ds.subset([0, 1]), num_workers=0)
    assert ids.shape == jig.shape == (2, x.block_norms.shape[1])
    np.testing.assert_allclose(ids, x.block_norms[:2], rtol=1e-4)


def test_ood_cli_round_trip(tiny_folder: Path, tmp_path: Path) -> None:
    from frugalvision.cli import ood  # noqa: F401  (registers the group)
    from frugalvision.cli.main import cli

    runner = CliRunner()
    det = tmp_path / "det"
    common = ["--workers", "0", "--no-progress"]
    res = runner.invoke(
        cli,
        [
            "ood",
            "fit",
            str(tiny_folder),
            "--out",
            str(det),
            "--model",
            "test_efficientnet",
            "--no-pretrained",
            "--num-classes",
            "3",
            "-k",
            "3",
            "--select-block",
            "--jigsaw-images",
            "4",
            "--shrinkage",
            "0.1",
            *common,
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert (
        "fitted on 12 images: msp, max_logit, energy, feature_norm, nan, block_norm, knn, mahalanobis"
        in res.output
    )
    saved = OODDetector.load(det)
    assert len(saved.state["norm_ratios"]) == saved.state["blocks"] and saved.shrinkage == 0.1
    res = runner.invoke(
        cli,
        ["ood", "score", str(det), str(tiny_folder), "--out", str(tmp_path / "s.csv"), "--json", *common],
        catch_exceptions=False,
    )
    rows = json.loads(res.stdout)
    assert len(rows) == 12 and set(rows[0]["ood"]) == set(rows[0]) - {"path", "ood"}
    assert (tmp_path / "s.csv").read_text().startswith("path,msp,")
    res = runner.invoke(
        cli,
        ["ood", "evaluate", str(det), str(tiny_folder / "red"), str(tiny_folder / "blue"), "--json", *common],
        catch_exceptions=False,
    )
    out = json.loads(res.stdout)
    assert out["count_id"] == 4 and out["count_ood"] == 4
    assert set(out["scores"]["knn"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    # the defaults adapt to DATA: 3 classes x 4 images -> k = round(4 / 3) = 1; Ledoit-Wolf shrinkage
    auto = tmp_path / "auto"
    args = ["ood", "fit", str(tiny_folder), "--out", str(auto), "--model", "test_efficientnet", "--no-pretrained",
            "--num-classes", "3", "--scores", "knn,mahalanobis", *common]  # fmt: skip
    res = runner.invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = OODDetector.load(auto)
    assert "kNN k=1, Mahalanobis shrinkage" in res.output and saved.k == "auto" and saved.state["k"] == 1
    assert 0 < saved.state["shrinkage"] <= 1
    res = runner.invoke(cli, [*args, "-k", "2", "--shrinkage", "0"], catch_exceptions=False)
    assert "kNN k=2, Mahalanobis shrinkage 0.000" in res.output
    res = runner.invoke(cli, [*args, "-k", "two"])
    assert res.exit_code == 2 and "'two' is not a valid integer" in res.output


def test_real_photos_knn_and_mahalanobis_flag_unseen_photos(tmp_path: Path) -> None:
    """Offline EfficientNet-Lite0 (real ImageNet weights): crops of 3 photos are ID, crops of 2 others OOD."""
    from frugalvision.demo import make_demo_dataset

    root = make_demo_dataset(
        tmp_path / "d",
        views_per_photo=4,
        photos=("chelsea", "coffee", "rocket", "astronaut", "camera"),
        size=64,
    )
    ds = read_folder(root)
    lite0 = create_backbone("tf_efficientnet_lite0.in1k_offline", num_classes=1000)
    x = extract_ood_inputs(lite0, ds, num_workers=0, progress=False)
    names = np.array(ds.classes)[x.labels]
    view = np.array([int(Path(p).stem[-3:]) for p in x.paths])
    is_id = np.isin(names, ["chelsea", "coffee", "rocket"])
    fit, id_test, ood = (
        x.subset(np.flatnonzero(is_id & (view < 2))),
        x.subset(np.flatnonzero(is_id & (view >= 2))),
        x.subset(np.flatnonzero(~is_id)),
    )
    det = OODDetector(scores=["knn", "mahalanobis", "energy"], k=1, shrinkage=0.1).fit(
        features=fit.features, logits=fit.logits, labels=fit.labels
    )
    assert fit.features.shape == (6, 1280) and len(id_test) == 6 and len(ood) == 8
    s_id = det.score(features=id_test.features, logits=id_test.logits)
    s_ood = det.score(features=ood.features, logits=ood.logits)
    assert auroc(s_id["knn"], s_ood["knn"]) > 0.9
    assert auroc(s_id["mahalanobis"], s_ood["mahalanobis"]) > 0.9


def test_long_images_are_skipped_or_fail(
    small_cnn, tiny_folder: Path, tmp_path: Path, long_png, bounded_resize
) -> None:
    """A 1 x 30000 PNG among the images (issue 12, item 1): before the fix the 64 px preprocessing resized it to
    73 x 2,190,000 pixels; now it follows on_corrupt, in the cached extraction and in the jigsaw pass."""
    from frugalvision.errors import DataWarning, ImageTooLargeError

    long = long_png(1, 30000, name="tiny/red/long.png")
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable image\(s\):\n  .*long\.png: 1x30000 pixels"):
        x = extract_ood_inputs(small_cnn, read_folder(tiny_folder), num_workers=0, progress=False)
    assert len(x) == 12 and str(long) not in x.paths
    ids, jigs = jigsaw_block_norms(small_cnn, read_folder(tiny_folder), num_workers=0)
    assert ids.shape[0] == jigs.shape[0] == 12
    with pytest.raises(ImageTooLargeError, match=r"long\.png: 1x30000 pixels has an aspect ratio of 30000:1"):
        extract_ood_inputs(
            small_cnn, read_folder(tiny_folder, on_corrupt="fail"), num_workers=0, progress=False
        )
