from __future__ import annotations

import pytest
import torch
from PIL import Image

from frugalvision.bundle import embedder_from_spec
from frugalvision.errors import StoreError
from frugalvision.models import (
    Backbone,
    create_embedding_model,
    embedding_model_from_description,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_native_pooling_is_the_backbones_own_forward() -> None:
    torch.manual_seed(0)
    model = create_embedding_model("test_efficientnet", pretrained=False, embedding_size=16, input_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.backbone(x))
        torch.testing.assert_close(model(x), model.embed_features(model.features(x)))
    assert model(x).shape == (2, 16) and model.embedding_size == 16 and model.num_features == 256
    assert model.data_config["input_size"] == (3, 32, 32)
    assert model.transform()(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_vit_token_pooling_skips_the_class_token() -> None:
    torch.manual_seed(0)
    model = create_embedding_model(
        "test_vit", pretrained=False, pooling="avg", head="identity", normalization="none"
    )
    assert model.pooling.num_prefix_tokens == 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(dim=1))


def test_description_rebuilds_the_same_model() -> None:
    torch.manual_seed(0)
    model = create_embedding_model(
        "test_efficientnet",
        pretrained=False,
        pooling="gem",
        head="mlp",
        hidden_size=24,
        embedding_size=8,
        input_size=32,
    ).eval()
    twin = embedding_model_from_description(model.describe())
    twin.load_state_dict(model.state_dict())
    twin.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    assert twin.data_config == model.data_config
    assert model.spec.to_dict() == {"embedding_model": model.describe()}


def test_embedder_from_spec() -> None:
    rebuilt = embedder_from_spec({"name": "test_efficientnet", "pretrained": False})
    assert isinstance(rebuilt, Backbone)
    with pytest.raises(StoreError, match="never saved"):
        embedder_from_spec({"embedding_model": {}})
    with pytest.raises(StoreError, match="no model bundle"):
        embedder_from_spec({"bundle": "/nonexistent/bundle", "id": "x"})


def test_head_size_must_fit_the_backbone() -> None:
    from frugalvision.models import EmbeddingHead, GlobalPool, create_backbone
    from frugalvision.models.embedding_model import EmbeddingModel

    backbone = create_backbone("test_efficientnet", pretrained=False)
    with pytest.raises(ValueError, match="head expects 100 features"):
        EmbeddingModel(backbone, GlobalPool("avg"), EmbeddingHead(100, 8))
    with pytest.raises(ValueError, match="input_size"):
        create_embedding_model("test_efficientnet", pretrained=False, input_size=4)


def test_models_with_a_head_layer_before_the_classifier() -> None:
    """MobileNetV3: forward_features gives 576 channels, its conv_head turns the pooled map into 1024 pre-logits;
    native pooling sees the latter, other poolings the former."""
    native = create_embedding_model(
        "mobilenetv3_small_100", pretrained=False, embedding_size=8, input_size=64
    )
    avg = create_embedding_model(
        "mobilenetv3_small_100", pretrained=False, embedding_size=8, input_size=64, pooling="avg"
    )
    assert (native.backbone.num_features, native.backbone.map_features) == (1024, 576)
    assert native.num_features == 1024 and avg.num_features == 576
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert native(x).shape == avg(x).shape == (2, 8)
        assert native.features(x).shape == (2, 1024) and avg.features(x).shape == (2, 576)


def test_vit_is_built_at_the_requested_input_size() -> None:
    """A ViT's position embeddings fix its input size: input_size builds it there (distil/train at 112 px)."""
    from frugalvision.models import embedding_model_from_description

    model = create_embedding_model("test_vit", pretrained=False, embedding_size=8, input_size=64)
    assert model.data_config["input_size"] == (3, 64, 64)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 8)
    rebuilt = embedding_model_from_description(model.describe())  # a bundle reload builds the same model
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(torch.zeros(2, 3, 64, 64)), out)
    cnn = create_embedding_model("test_efficientnet", pretrained=False, embedding_size=8, input_size=48)
    assert cnn(torch.zeros(1, 3, 48, 48)).shape == (1, 8)  # no img_size for a CNN: it takes any size
