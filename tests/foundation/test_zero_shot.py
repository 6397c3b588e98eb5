"""Zero-shot labeling: probabilities, thresholds, the manifest (read back by read_manifest), the review queue."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

from frugalvision.data import read_manifest
from frugalvision.foundation import (
    FeatureModel,
    ZeroShotResult,
    open_images,
    write_label_manifest,
    write_review_queue,
    zero_shot_classify,
    zero_shot_probs,
)
from frugalvision.models import BackboneSpec

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColourClip(FeatureModel):
    """A fake CLIP whose answer is known: images -> mean RGB, text -> the RGB of the colour word it names."""

    def __init__(self) -> None:
        trunk = nn.Identity()
        trunk.num_features = 3  # type: ignore[assignment]
        cfg = {
            "input_size": (3, 16, 16),
            "interpolation": "bilinear",
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        super().__init__(trunk, BackboneSpec(name="colour-clip"), cfg)

    @property
    def has_text(self) -> bool:
        return True

    @property
    def logit_scale(self) -> float:
        return 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) - 0.3  # centred, so that cosine similarity separates the colours

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        rows = [next(torch.tensor(v) - 0.3 for k, v in COLOURS.items() if k in t) for t in texts]
        out = torch.stack(rows).float()
        return F.normalize(out, dim=1) if normalize else out


def test_zero_shot_probs_is_softmax_of_scaled_cosines() -> None:
    img, cls = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    p = zero_shot_probs(img.float(), cls.float(), logit_scale=50.0)
    cos = (img / img.norm(dim=1, keepdim=True)) @ (cls / cls.norm(dim=1, keepdim=True)).T
    expected = torch.exp(50 * cos) / torch.exp(50 * cos).sum(1, keepdim=True)
    torch.testing.assert_close(p.double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        zero_shot_probs(img.float(), cls.float(), logit_scale=0.0)


def test_result_scores_margins_and_thresholds() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]], dtype=np.float32)
    r = ZeroShotResult(["a.jpg", "b.jpg", "c.jpg"], ["cat", "dog", "fox"], probs)
    np.testing.assert_array_equal(r.prediction, [0, 0, 2])
    np.testing.assert_allclose(r.score, [0.7, 0.4, 0.8])
    np.testing.assert_allclose(r.margin, [0.5, 0.05, 0.7], atol=1e-6)
    assert r.labels() == ["cat", "cat", "fox"]
    assert r.labels(min_score=0.5) == ["cat", None, "fox"]
    assert r.labels(min_margin=0.6) == [None, None, "fox"]
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        ZeroShotResult(["a.jpg"], ["cat", "dog"], np.ones((2, 2)))


@pytest.fixture
def colour_images(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A flat folder of plain-coloured images (with noise): file -> true colour."""
    rng = np.random.default_rng(0)
    root = tmp_path / "unlabeled"
    root.mkdir()
    truth = {}
    for i in range(9):
        name = list(COLOURS)[i % 3]
        rgb = np.array(COLOURS[name]) * 200 + 30
        arr = np.clip(rgb + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
        path = root / f"img_{i}.png"
        Image.fromarray(arr).save(path)
        truth[str(path)] = name
    return root, truth


def test_zero_shot_labels_a_folder_and_the_manifest_reads_back(colour_images, tmp_path: Path) -> None:
    root, truth = colour_images
    ds = open_images(root)
    assert len(ds) == 9 and ds.classes == []
    classes = ["red", "green", "blue"]
    result = zero_shot_classify(
        ColourClip(), ds, classes, ["a {} thing", "the colour {}"], num_workers=0, progress=False
    )
    assert result.labels() == [truth[p] for p in result.paths]  # the known answer

    # probabilities = softmax(s * cos(image, ensembled text)) computed by hand
    x = torch.stack([ColourClip().transform()(Image.open(p).convert("RGB")) for p in result.paths])
    img = x.mean(dim=(2, 3)) - 0.3
    txt = F.normalize(torch.tensor([COLOURS[c] for c in classes]) - 0.3, dim=1)
    expected = (5.0 * F.normalize(img, dim=1) @ txt.T).softmax(dim=1)
    np.testing.assert_allclose(result.probs, expected.numpy(), atol=1e-5)

    manifest = tmp_path / "out" / "labels.csv"
    ranked = np.sort(result.score)
    assert ranked[2] < ranked[3]
    cut = float(ranked[2] + ranked[3]) / 2  # leaves the 3 least confident images unlabeled
    write_label_manifest(result, manifest, min_score=cut)
    back = read_manifest(manifest, classes=classes)  # extra columns (prediction, score, margin) are ignored
    labels = {str(s.path): [classes[c] for c in s.labels] for s in back.samples}
    assert sum(1 for v in labels.values() if not v) == 3
    for p, lab in labels.items():
        assert lab in ([], [truth[p]])
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "prediction", "score", "margin"]
    assert not Path(rows[0]["path"]).is_absolute()  # relative to the manifest's folder
    assert all(r["prediction"] == truth[str((manifest.parent / r["path"]).resolve())] for r in rows)


def test_review_queue_lists_the_most_uncertain_first(tmp_path: Path, tiny_folder: Path) -> None:
    paths = [str(p) for p in sorted(tiny_folder.rglob("*.png"))[:4]]
    probs = np.array([[0.9, 0.1], [0.52, 0.48], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    r = ZeroShotResult(paths, ["a", "b"], probs)
    out = write_review_queue(
        r, tmp_path / "review.csv", sheet=tmp_path / "review.png", top_k=2, min_score=0.65
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r_["path"] for r_ in rows] == [paths[1], paths[3], paths[2], paths[0]]  # margins .04, .2, .4, .8
    assert rows[0]["class1"] == "a" and rows[0]["class2"] == "b" and rows[0]["labeled"] == "0"
    assert rows[2]["class1"] == "b" and rows[2]["labeled"] == "1"
    assert Image.open(tmp_path / "review.png").size[0] > 0


def test_label_cli_end_to_end(colour_images, tmp_path: Path, tiny_kwargs: dict[str, Any]) -> None:
    import open_clip

    from frugalvision.cli import foundation  # noqa: F401  (registers `label`)
    from frugalvision.cli.main import cli

    # register the tiny CLIP as an open_clip architecture so that the real loading path runs
    cfg = tmp_path / "fv-tiny-clip.json"
    cfg.write_text(json.dumps(tiny_kwargs), encoding="utf-8")
    open_clip.add_model_config(cfg)
    root, _ = colour_images
    out = tmp_path / "labels.csv"
    args = [
        "label",
        str(root),
        "--classes",
        "red,green,blue",
        "--model",
        "open_clip:fv-tiny-clip",
        "--no-pretrained",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        "--templates",
        "simple",
    ]
    res = CliRunner().invoke(cli, [*args, "--min-score", "0.99"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "0 labelled, 9 left unlabeled" in res.output  # a random model is never that sure
    assert all(not s.labels for s in read_manifest(out, classes=["red", "green", "blue"]).samples)
    assert out.with_suffix(".review.csv").is_file() and out.with_suffix(".review.png").is_file()
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert "9 labelled, 0 left unlabeled" in res.output
    assert len(read_manifest(out).samples) == 9
    res = CliRunner().invoke(cli, ["label", str(root), "--out", str(out), "--no-pretrained"])
    assert res.exit_code != 0 and "exactly one of --classes or --classes-file" in res.output
