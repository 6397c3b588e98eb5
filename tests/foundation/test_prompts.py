"""Prompt templates, class-name files and prompt ensembling (Radford et al. 2021)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frugalvision.errors import DataError
from frugalvision.foundation import (
    DEFAULT_TEMPLATES,
    SIMPLE_TEMPLATES,
    create_feature_model,
    ensemble_text_embeddings,
    format_prompts,
    parse_class_names,
    read_class_names,
    read_templates,
    resolve_templates,
    text_classifier,
)


def test_ensembling_is_the_renormalised_mean_of_normalised_template_embeddings() -> None:
    emb = torch.randn(3, 5, 8, dtype=torch.float64) * torch.rand(3, 5, 1, dtype=torch.float64) * 10
    out = ensemble_text_embeddings(emb)
    for c in range(3):  # the slow, obvious way, in float64
        mean = sum(emb[c, t] / emb[c, t].norm() for t in range(5)) / 5
        torch.testing.assert_close(out[c].double(), mean / mean.norm(), atol=1e-6, rtol=1e-6)
    # one template: the class embedding is that template's embedding, normalised
    torch.testing.assert_close(
        ensemble_text_embeddings(emb[:, :1]), (emb[:, 0] / emb[:, 0].norm(dim=1, keepdim=True)).float()
    )
    with pytest.raises(ValueError, match=r"3-D \(C, T, D\)"):
        ensemble_text_embeddings(emb[0])


def test_text_classifier_ensembles_the_models_prompt_embeddings(clip) -> None:
    templates = ["a photo of a {}.", "a drawing of the {}."]
    weights = text_classifier(clip, ["cat", "red_fox"], templates)
    assert weights.shape == (2, 32)
    with torch.inference_mode():
        for row, name in enumerate(["cat", "red fox"]):
            each = [clip.encode_text([t.replace("{}", name)])[0] for t in templates]
            mean = sum(e / e.norm() for e in each) / len(each)
            torch.testing.assert_close(weights[row], mean / mean.norm(), atol=1e-5, rtol=1e-5)
    timm_model = create_feature_model("test_efficientnet", pretrained=False)
    with pytest.raises(ValueError, match="no text tower"):
        text_classifier(timm_model, ["cat"], templates)


def test_prompts_and_template_sets(tmp_path: Path) -> None:
    assert format_prompts("golden_retriever", ["a photo of a {}.", "{}!"]) == [
        "a photo of a golden retriever.",
        "golden retriever!",
    ]
    assert resolve_templates("default") == list(DEFAULT_TEMPLATES)
    assert resolve_templates("simple") == list(SIMPLE_TEMPLATES)
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)
    f = tmp_path / "templates.txt"
    f.write_text("# mine\na sketch of a {}.\n\nthe {} in the wild\n", encoding="utf-8")
    assert read_templates(f) == ["a sketch of a {}.", "the {} in the wild"]
    assert resolve_templates(str(f)) == read_templates(f)
    f.write_text("a sketch of a {}.\nno placeholder here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"templates.txt:2: a template must contain"):
        read_templates(f)
    with pytest.raises(DataError, match="one of"):
        resolve_templates("fancy")


def test_class_names(tmp_path: Path) -> None:
    assert parse_class_names("cat, dog,red fox") == ["cat", "dog", "red fox"]
    with pytest.raises(DataError, match="empty class name"):
        parse_class_names("cat,,dog")
    with pytest.raises(DataError, match="cannot contain '\\|'"):
        parse_class_names("cat|kitten,dog")
    with pytest.raises(DataError, match=r"repeated: \['cat'\]"):
        parse_class_names("cat,dog,cat")
    f = tmp_path / "classes.txt"
    f.write_text("cat\n# comment\n\ndog\n", encoding="utf-8")
    assert read_class_names(f) == ["cat", "dog"]
    f.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(DataError, match="lists nothing"):
        read_class_names(f)
