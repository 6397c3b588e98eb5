"""The map layout: PCA equals scikit-learn's PCA (up to sign and one scale), is cached once and atomically."""

from __future__ import annotations

import numpy as np
import pytest

from frugalvision.explore import Collection, compute_layout
from frugalvision.explore import collection as collection_module


def test_pca_layout_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 12)) * np.linspace(3, 0.1, 12)).astype(np.float32)
    xy, used = compute_layout(x, "pca")
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x.astype(np.float64))
    ref *= np.sign((ref * xy).sum(0))  # the sign of a principal axis is arbitrary
    ref -= (ref.max(0) + ref.min(0)) / 2
    ref /= np.abs(ref).max()
    assert used == "pca" and xy.dtype == np.float32 and xy.shape == (500, 2)
    np.testing.assert_allclose(xy, ref, atol=1e-5)


def test_layout_is_cached_beside_the_store(explore_data, monkeypatch):
    col = Collection.open(explore_data["store"])
    first, _ = col.layout("pca")
    cached = col.cache / "layout-pca.npy"
    assert cached.is_file() and cached.parent.parent.name == ".explore"
    assert cached.parent.parent.parent == explore_data["store"]

    def boom(*args, **kwargs):
        raise AssertionError("the layout was computed again")

    monkeypatch.setattr(collection_module, "compute_layout", boom)
    again, _ = Collection.open(explore_data["store"]).layout("pca")
    np.testing.assert_array_equal(first, again)


def test_bad_layout_inputs():
    with pytest.raises(ValueError, match="2-D"):
        compute_layout(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="layout"):
        compute_layout(np.zeros((3, 3)), "tsne")


@pytest.mark.slow
def test_umap_layout_runs():
    pytest.importorskip("umap", reason="umap-learn not installed (pip install 'frugalvision[explore]')")
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    xy, used = compute_layout(x, "umap")
    assert used == "umap" and xy.shape == (200, 2) and np.isfinite(xy).all()
