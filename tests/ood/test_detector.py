"""OODDetector: fit, score, thresholds, block selection, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from frugalvision.errors import StoreError
from frugalvision.ood import SCORES, OODDetector, auroc, auto_knn_k


def _gaussians(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(centres), n)
    return (centres[y] + rng.normal(0, 0.5, (n, centres.shape[1]))).astype(np.float32), y


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 6
    f_fit, y_fit = _gaussians(rng, 300, centres)
    f_id, _ = _gaussians(rng, 100, centres)
    f_ood = rng.normal(0, 0.5, (100, 8)).astype(np.float32) + np.r_[np.zeros(4), np.ones(4)] * 4
    w = centres.T / 6  # a linear "classifier" whose logits follow the class centres
    return {
        "f_fit": f_fit,
        "y_fit": y_fit,
        "l_fit": f_fit @ w,
        "f_id": f_id,
        "l_id": f_id @ w,
        "f_ood": f_ood.astype(np.float32),
        "l_ood": f_ood.astype(np.float32) @ w,
        "b_fit": rng.random((300, 3)).astype(np.float32),
        "b_id": rng.random((100, 3)).astype(np.float32),
    }


def test_fit_score_and_separation(data: dict[str, np.ndarray]) -> None:
    det = OODDetector(k=10).fit(features=data["f_fit"], logits=data["l_fit"], labels=data["y_fit"])
    assert det.fitted_scores == [s for s in SCORES if s != "block_norm"]  # no block norms given
    assert det.state["mahalanobis_classes"] == "labels" and det.state["k"] == 10
    s_id = det.score(features=data["f_id"], logits=data["l_id"])
    s_ood = det.score(features=data["f_ood"], logits=data["l_ood"])
    for name in ("msp", "max_logit", "energy", "knn", "mahalanobis"):
        assert auroc(s_id[name], s_ood[name]) > 0.95, name
    # thresholds keep (at least) 95 % of the fit data, and flag most of the OOD set
    fit_scores = det.score(features=data["f_fit"], logits=data["l_fit"])
    for name in ("msp", "energy", "mahalanobis"):
        assert (fit_scores[name] >= det.thresholds[name]).mean() >= 0.95
        assert det.is_ood(s_ood, name).mean() > 0.8
    # logits only -> only the logit scores
    part = det.score(logits=data["l_id"])
    assert set(part) == {"msp", "max_logit", "energy"}


def test_mahalanobis_without_labels_uses_predicted_classes(data: dict[str, np.ndarray]) -> None:
    det = OODDetector(scores=["mahalanobis"]).fit(features=data["f_fit"], logits=data["l_fit"])
    assert det.state["mahalanobis_classes"] == "predicted" and det.arrays["maha_means"].shape == (4, 8)
    alone = OODDetector(scores=["mahalanobis", "knn"]).fit(features=data["f_fit"])
    assert alone.state["mahalanobis_classes"] == "none" and alone.arrays["maha_means"].shape == (1, 8)


def test_block_choice(data: dict[str, np.ndarray]) -> None:
    kw = {"features": data["f_fit"], "block_norms": data["b_fit"]}
    assert OODDetector(scores=["block_norm"]).fit(**kw).state["block"] == 1  # penultimate of 3
    assert OODDetector(scores=["block_norm"], block=0).fit(**kw).state["block"] == 0
    ids = np.ones((10, 3), np.float32)
    jig = np.array([[1.0, 0.25, 0.5]] * 10, np.float32)  # NormRatio = (1, 4, 2): block 1 separates best
    det = OODDetector(scores=["block_norm"]).fit(**kw, pseudo_ood_block_norms=(ids, jig * np.r_[1, 1, 1]))
    assert det.state["norm_ratios"] == pytest.approx([1.0, 4.0, 2.0]) and det.state["block"] == 1
    jig2 = np.array([[0.1, 1.0, 1.0]] * 10, np.float32)
    assert (
        OODDetector(scores=["block_norm"]).fit(**kw, pseudo_ood_block_norms=(ids, jig2)).state["block"] == 0
    )
    np.testing.assert_array_equal(det.score(block_norms=data["b_id"])["block_norm"], data["b_id"][:, 1])


def test_save_load_round_trip(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    det = OODDetector(k=5, temperature=2.0, shrinkage=0.1, info={"backbone": {"name": "x"}}).fit(
        features=data["f_fit"], logits=data["l_fit"], labels=data["y_fit"], block_norms=data["b_fit"]
    )
    det.save(tmp_path / "det")
    back = OODDetector.load(tmp_path / "det")
    a = det.score(features=data["f_id"], logits=data["l_id"], block_norms=data["b_id"])
    b = back.score(features=data["f_id"], logits=data["l_id"], block_norms=data["b_id"])
    assert a.keys() == b.keys() and back.thresholds == det.thresholds and back.info == det.info
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert back.temperature == 2.0 and back.shrinkage == 0.1
    det.save(tmp_path / "det")  # replacing a saved detector is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        det.save(tmp_path / "other")
    with pytest.raises(StoreError, match=r"detector\.json is missing"):
        OODDetector.load(tmp_path / "other")
    meta = tmp_path / "det" / "detector.json"
    meta.write_bytes(
        meta.read_text(encoding="utf-8").replace("{", '{"note": "caf\u00e9", ', 1).encode("latin-1")
    )
    with pytest.raises(StoreError, match=r"detector\.json is not valid JSON"):
        OODDetector.load(tmp_path / "det")


def test_errors(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="score must be one of"):
        OODDetector(scores=["odin"])
    with pytest.raises(ValueError, match=r"msp \(needs logits\)"):
        OODDetector(scores=["msp"]).fit(features=data["f_fit"])
    with pytest.raises(ValueError, match="same number of rows"):
        OODDetector().fit(features=data["f_fit"], logits=data["l_id"])
    with pytest.raises(ValueError, match="not fitted"):
        OODDetector().score(features=data["f_id"])
    det = OODDetector(scores=["knn"]).fit(features=data["f_fit"])
    with pytest.raises(ValueError, match="fitted on 8"):
        det.score(features=data["f_id"][:, :4])


def test_auto_knn_k_rule() -> None:
    # k = clip(round(m / 3), 1, 50) from the median images per class m; N / 1000 without labels; <= N - 1
    by_hand = {(60, 3): 1, (100, 5): 2, (280, 14): 5, (400, 20): 7, (500, 50): 17, (50_000, 5000): 50}
    for (count, per_class), k in by_hand.items():
        assert auto_knn_k(count, per_class) == k, (count, per_class)
    assert auto_knn_k(280) == 1 and auto_knn_k(50_000) == 50 and auto_knn_k(1_000_000) == 50
    assert auto_knn_k(3, 30) == 2  # never beyond the other fit images
    with pytest.raises(ValueError, match="count must be an int"):
        auto_knn_k(0)
    with pytest.raises(ValueError, match="images_per_class"):
        auto_knn_k(10, 0)


def test_default_k_adapts_to_the_fit_set() -> None:
    # 20 classes x 14 images (the case where the old fixed k = 50 reached past every class)
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(20), 14)
    f = (rng.normal(size=(20, 16))[y] + 0.3 * rng.normal(size=(280, 16))).astype(np.float32)
    assert OODDetector(scores=["knn"]).fit(features=f, labels=y).state["k"] == 5
    assert OODDetector(scores=["knn"]).fit(features=f).state["k"] == 1  # unlabeled: N / 1000
    y_unlabelled = y.copy()
    y_unlabelled[::2] = -1  # 7 labelled images per class -> round(7 / 3) = 2
    assert OODDetector(scores=["knn"]).fit(features=f, labels=y_unlabelled).state["k"] == 2
    assert OODDetector(scores=["knn"], k=50).fit(features=f, labels=y).state["k"] == 50  # explicit k kept


def test_default_mahalanobis_covariance_is_sklearns_ledoit_wolf() -> None:
    # 40 images of 4 classes with 64-d features: fewer images than dimensions
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 10)
    f = (rng.normal(size=(4, 64))[y] * 3 + rng.normal(size=(40, 64)) * np.linspace(0.5, 2, 64)).astype(
        np.float32
    )
    det = OODDetector(scores=["mahalanobis"]).fit(features=f, labels=y)
    x = f.astype(np.float64)
    centred = x - np.stack([x[y == c].mean(0) for c in range(4)])[y]
    ref = LedoitWolf(assume_centered=True).fit(centred)  # scikit-learn's estimator, the reference
    assert det.state["shrinkage"] == pytest.approx(ref.shrinkage_, rel=1e-6)
    np.testing.assert_allclose(np.linalg.inv(det.arrays["maha_precision"]), ref.covariance_, rtol=1e-6)
    plain = OODDetector(scores=["mahalanobis"], shrinkage=0.0).fit(features=f, labels=y)
    assert plain.state["shrinkage"] == 0.0 and np.linalg.matrix_rank(plain.arrays["maha_precision"]) < 64


def test_auto_settings_survive_save_and_load(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    det = OODDetector(scores=["knn", "mahalanobis"]).fit(features=data["f_fit"], labels=data["y_fit"])
    det.save(tmp_path / "det")
    back = OODDetector.load(tmp_path / "det")
    assert back.k == "auto" and back.shrinkage == "auto" and back.state == det.state
    np.testing.assert_array_equal(
        back.score(features=data["f_id"])["knn"], det.score(features=data["f_id"])["knn"]
    )
    with pytest.raises(ValueError, match="k must be an int >= 1 or 'auto'"):
        OODDetector(k="many")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shrinkage must be a number in \\[0, 1\\] or 'auto'"):
        OODDetector(shrinkage="lw")  # type: ignore[arg-type]
