from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.data import load_image, read_folder
from frugalvision.embeddings import extract as extract_module
from frugalvision.models import create_embedding_model
from frugalvision.train.cache import cached_features, feature_cache_key


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_embedding_model(
        "test_efficientnet", pretrained=False, pooling="gem", gem_learnable=False, input_size=32
    )


def test_features_are_computed_once_then_read_back(
    model, labelled_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    dataset = read_folder(labelled_folder)
    feats, kept = cached_features(
        model, dataset, tmp_path, source=str(labelled_folder), num_workers=0, progress=False
    )
    assert feats.shape == (len(dataset), model.num_features) and kept.all()
    # the cached value is the model's pooled features of the evaluation-preprocessed image
    tf = model.transform()
    first = tf(load_image(dataset.paths[0])).unsqueeze(0)
    with torch.no_grad():
        np.testing.assert_allclose(feats[0], model.eval().features(first)[0].numpy(), rtol=1e-5, atol=1e-6)

    calls = []
    monkeypatch.setattr(extract_module, "embed_images", lambda *a, **k: calls.append(1))
    again, _ = cached_features(
        model, dataset, tmp_path, source=str(labelled_folder), num_workers=0, progress=False
    )
    np.testing.assert_array_equal(again, feats)
    assert not calls  # nothing was embedded the second time
    assert len(list(tmp_path.iterdir())) == 1


def test_cache_key_depends_on_everything_that_changes_features(model) -> None:
    key = feature_cache_key(model, "/data")
    assert key == feature_cache_key(model, "/data") and key != feature_cache_key(model, "/other")
    other_p = create_embedding_model(
        "test_efficientnet", pretrained=False, pooling="gem", gem_p=4.0, input_size=32
    )
    other_size = create_embedding_model("test_efficientnet", pretrained=False, pooling="gem", input_size=48)
    other_pool = create_embedding_model("test_efficientnet", pretrained=False, pooling="max", input_size=32)
    assert len({key, *(feature_cache_key(m, "/data") for m in (other_p, other_size, other_pool))}) == 4
