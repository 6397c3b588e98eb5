"""Quality views: OOD scores from a fitted detector (against the kNN score computed in float64 from its
equation), near-duplicate groups (against groups built from a float64 cosine matrix), and their gallery views;
`frugalvision explore` reports bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from frugalvision.cli.main import cli
from frugalvision.embeddings import EmbeddingStore
from frugalvision.explore import Collection, ExploreState, create_app, duplicate_group_ids, ood_scores
from frugalvision.ood import OODDetector


def test_ood_scores_are_the_knn_distance(explore_data, tmp_path):
    v = EmbeddingStore.load(explore_data["store"]).vectors
    OODDetector(scores=["knn"], k=3).fit(features=v[:30]).save(tmp_path / "det")
    got, name = ood_scores(tmp_path / "det", v)
    x = v.astype(np.float64) / np.linalg.norm(v, axis=1, keepdims=True)
    cos = np.sort(x @ x[:30].T, axis=1)[:, ::-1]
    ref = np.sqrt(
        np.clip(2 - 2 * cos[:, 2], 0, None)
    )  # distance to the 3rd nearest ID vector (Sun et al. 2022)
    assert name == "knn"
    np.testing.assert_allclose(got, ref, atol=1e-5)

    state = ExploreState.build(Collection.open(explore_data["store"]), ood=got, layout="pca")
    with TestClient(create_app(state), base_url="http://127.0.0.1") as c:
        items = c.post(
            "/api/items", json={"view": "ood", "limit": 40}, headers={"X-Explore-Token": state.token}
        ).json()
        scores = [it["ood"] for it in items["items"]]
        assert scores == sorted(scores, reverse=True) and items["items"][0]["id"] == int(np.argmax(ref))
        hi = c.post("/api/items", json={"min_score": float(np.median(ref)), "limit": 40},
                    headers={"X-Explore-Token": state.token}).json()  # fmt: skip
        assert hi["total"] == int((got >= np.median(ref)).sum())


def test_ood_detector_without_feature_scores_is_refused(explore_data, tmp_path):
    rng = np.random.default_rng(0)
    OODDetector(scores=["energy"]).fit(logits=rng.standard_normal((20, 4))).save(tmp_path / "det")
    with pytest.raises(Exception, match="no score computed from embeddings"):
        ood_scores(tmp_path / "det", np.zeros((3, 16), np.float32))


def test_duplicate_groups_match_a_float64_reference():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 8))
    v = np.concatenate([base, base[[2, 2, 7, 11]] + rng.normal(0, 0.01, (4, 8))]).astype(np.float32)
    got = duplicate_group_ids(v, 0.99)
    x = v.astype(np.float64) / np.linalg.norm(v, axis=1, keepdims=True)
    linked = (x @ x.T) >= 0.99
    groups = {}  # connected components by repeated relaxation
    label = np.arange(len(v))
    for _ in range(len(v)):
        label = np.array([label[linked[i]].min() for i in range(len(v))])
    for i, g in enumerate(label.tolist()):
        groups.setdefault(g, []).append(i)
    ref = sorted(g for g in groups.values() if len(g) > 1)
    assert ref == [[2, 30, 31], [7, 32], [11, 33]]
    assert sorted(np.flatnonzero(got == g).tolist() for g in range(got.max() + 1)) == ref
    assert (got[[i for i in range(len(v)) if all(i not in g for g in ref)]] == -1).all()


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["explore", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "neither an embedding store" in result.output
    assert "Traceback" not in result.output
