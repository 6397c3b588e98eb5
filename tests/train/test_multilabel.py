"""The multi-label task on the shared engine: fit (fast path and fine-tuning), thresholds in the bundle, resume,
tagging with the bundle and with its ONNX export, partial annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

import frugalvision
from frugalvision.data import read_manifest
from frugalvision.losses import list_losses
from frugalvision.train import ConfigError, fit, load_config
from frugalvision.train.data import multilabel_split

CLASSES = ("blue", "green", "red", "white", "yellow")  # the classes of the multilabel_manifest fixture

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


@pytest.fixture(scope="module")
def manifest(multilabel_manifest: Path) -> Path:
    return multilabel_manifest


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


def _config(data: Path, out: Path, *overrides: str):
    return load_config(
        None,
        [
            "task=multilabel",
            f"data.path={data}",
            f"out={out}",
            "model.name=test_efficientnet",
            "model.pretrained=false",
            "model.input_size=32",
            "data.batch_size=8",
            "data.val_fraction=0.25",
            "data.num_workers=0",
            "trainer.epochs=2",
            "trainer.progress=false",
            "optim.lr=1e-3",
            *overrides,
        ],
    )


def test_targets_and_split_keep_unknown_entries(manifest: Path) -> None:
    dataset = read_manifest(manifest)
    targets = dataset.target_matrix()
    assert dataset.multilabel and dataset.classes == list(CLASSES) and targets.shape == (48, 5)
    assert set(np.unique(targets)) == {-1.0, 0.0, 1.0} and (targets == -1).sum() == 12
    train, val = multilabel_split(dataset, "images", 0.25, seed=0)
    assert val is not None and len(train.labels) == 36 and len(val.labels) == 12
    rows = {str(p): i for i, p in enumerate(dataset.paths)}
    for split in (train, val):
        index = [rows[str(p)] for p in split.dataset.paths]
        np.testing.assert_array_equal(split.labels, targets[index])
    assert not set(map(str, train.dataset.paths)) & set(map(str, val.dataset.paths))


@pytest.mark.parametrize("loss", list_losses(include_aliases=False, task="multilabel"))
def test_fast_path_fit_with_every_multilabel_loss(
    loss: str, manifest: Path, tmp_path: Path, cache_dir: Path
) -> None:
    cfg = _config(
        manifest,
        tmp_path / "run",
        f"loss.name={loss}",
        "model.freeze_backbone=true",
        f"data.cache_dir={cache_dir}",
    )
    result = fit(cfg)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert {"val/map", "val/cf1", "val/of1", "val/cf1@top3", "val/tuned/cf1"} <= set(result.metrics)
    assert result.metrics["val/map"] == max(h["val/map"] for h in result.history)
    assert result.baseline == {}
    saved = json.loads((result.bundle / "config.json").read_text())
    assert saved["task"] == "multilabel" and saved["classes"] == list(CLASSES)
    assert saved["loss"]["name"] == loss and len(saved["thresholds"]) == 5
    assert all(0 <= t <= 1 for t in saved["thresholds"]) and result.thresholds == saved["thresholds"]
    assert [r["class"] for r in saved["per_class"]] == list(CLASSES)
    assert (result.bundle / "per_class_ap.png").is_file() and "Per class" in (
        result.bundle / "report.md"
    ).read_text()
    loaded = frugalvision.load(result.bundle)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded(x).shape == (2, 5)
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_classifier_bias_starts_at_the_class_log_odds(manifest: Path, tmp_path: Path) -> None:
    from frugalvision.train import build_model

    cfg = _config(manifest, tmp_path, "model.freeze_backbone=true")
    prior = np.array([0.4, 0.2, 0.001, 0.05, 0.9])
    model = build_model(cfg, num_classes=5, prior=prior)
    expected = np.log(np.clip(prior, 1e-3, 0.5) / (1 - np.clip(prior, 1e-3, 0.5)))
    np.testing.assert_allclose(model.head.out.bias.detach().numpy(), expected, rtol=1e-6)
    assert model.embedding_size == 5 and model.normalization == "none"


def test_fine_tuning_learns_the_tags_and_the_tagger_uses_the_thresholds(
    manifest: Path, tmp_path: Path
) -> None:
    from frugalvision.tagging import Tagger, evaluate_tagger

    cfg = _config(
        manifest,
        tmp_path / "run",
        "data.sampler=class_aware",
        "recipe=none",
        "trainer.epochs=6",
        "optim.lr=3e-3",
        "loss.name=bce",
        "optim.warmup_epochs=0",
    )
    result = fit(cfg)
    first, best = result.history[0]["val/map"], result.metrics["val/map"]
    assert best > 0.6 and best >= first, result.history  # a random scorer gets about the positive rate, ~0.4
    tagger = Tagger(result.bundle)
    np.testing.assert_allclose(tagger.thresholds, result.thresholds, rtol=0, atol=1e-7)
    dataset = read_manifest(manifest)
    probs = tagger.probabilities(dataset.paths[:4])
    with torch.no_grad():
        x = torch.stack([result.model.transform()(Image.open(p).convert("RGB")) for p in dataset.paths[:4]])
        np.testing.assert_allclose(probs, torch.sigmoid(result.model(x)).numpy(), rtol=1e-5, atol=1e-6)
    for p, row in zip(tagger.decide(probs), probs, strict=True):
        expected = {c for c, s, t in zip(tagger.classes, row, tagger.thresholds, strict=True) if s >= t}
        assert set(p.labels) == expected and list(p.scores) == sorted(p.scores, reverse=True)
    report = evaluate_tagger(tagger, dataset, progress=False)
    assert report["images"] == 48 and 0 < report["metrics"]["map"] <= 1
    assert {"cf1", "of1", "cf1@0.5", "cf1@top3"} <= set(report["metrics"]) and len(report["per_class"]) == 5


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_with_selective_partial_loss_equals_an_uninterrupted_run(
    manifest: Path, tmp_path: Path, cache_dir: Path
) -> None:
    settings = (
        "model.freeze_backbone=true",
        f"data.cache_dir={cache_dir}",
        "loss.partial=selective",
        "trainer.epochs=3",
        "model.drop_rate=0.2",
    )
    reference = fit(_config(manifest, tmp_path / "ref", *settings))
    cfg = _config(manifest, tmp_path / "crash", *settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpoch(2)])
    resumed = fit(cfg, resume=True)
    assert resumed.history == reference.history
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.thresholds == reference.thresholds
    saved = json.loads((resumed.bundle / "config.json").read_text())
    assert saved["loss"]["partial"] == "selective"


def test_onnx_export_predicts_like_the_bundle(manifest: Path, tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    from frugalvision.deploy import export_bundle
    from frugalvision.runtime import Predictor
    from frugalvision.tagging import Tagger

    result = fit(
        _config(manifest, tmp_path / "run", "model.freeze_backbone=true", f"data.cache_dir={cache_dir}")
    )
    export_bundle(result.bundle, tmp_path / "deploy")
    predictor = Predictor(tmp_path / "deploy")
    assert predictor.task == "multilabel" and list(predictor.classes) == list(CLASSES)
    np.testing.assert_allclose(predictor.config.thresholds, result.thresholds, rtol=0, atol=1e-7)
    paths = [str(p) for p in read_manifest(manifest).paths[:6]]
    tagger = Tagger(result.bundle)
    np.testing.assert_allclose(
        predictor.predict(paths)[0].probabilities, tagger.probabilities(paths)[0], atol=1e-5
    )
    assert [p.labels for p in predictor.predict(paths)] == [p.labels for p in tagger.predict(paths)]


def test_fast_path_head_learning_rate_default(manifest: Path, tmp_path: Path) -> None:
    """The multi-label fast path trains its head at 1e-2 by default (1e-3 left ASL's prior-initialised head
    under-trained: benchmarks/train_multilabel.py); an explicit lr or multiplier, fine-tuning and the embedding
    task keep the usual lr x 10."""
    from frugalvision.train import build_model
    from frugalvision.train.optim import build_optimizer

    def head_lr(*overrides: str) -> float:
        cfg = load_config(None, [f"data.path={manifest}", *overrides])
        if cfg.task == "embedding":
            return cfg.optim.lr * cfg.optim.head_lr_multiplier
        model = build_model(cfg.replace(**{"model.name": "test_efficientnet", "model.pretrained": False}), 5)
        optimizer, _ = build_optimizer(
            model, torch.nn.Identity(), cfg, steps_per_epoch=1, frozen_backbone=cfg.model.freeze_backbone
        )
        return {g["name"]: g["initial_lr"] for g in optimizer.param_groups}["head"]  # before the warm-up

    frozen = ("task=multilabel", "model.freeze_backbone=true")
    assert head_lr(*frozen) == pytest.approx(1e-2)
    assert load_config(None, [f"data.path={manifest}", *frozen]).optim.lr == pytest.approx(1e-4)
    assert head_lr(*frozen, "optim.lr=1e-3") == pytest.approx(1e-2)  # the user's lr x the usual 10
    assert head_lr(*frozen, "optim.head_lr_multiplier=3") == pytest.approx(3e-4)
    assert head_lr("task=multilabel") == pytest.approx(1e-3)  # fine-tuning
    assert head_lr("model.freeze_backbone=true") == pytest.approx(1e-3)  # the embedding task
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("optim:\n  lr: 0.0005\n", encoding="utf-8")
    cfg = load_config(yaml_file, [f"data.path={manifest}", *frozen])
    assert cfg.optim.lr * cfg.optim.head_lr_multiplier == pytest.approx(5e-3)
    resumed = load_config(None, base=load_config(None, [f"data.path={manifest}", *frozen]).to_dict())
    assert resumed.optim.head_lr_multiplier == 100


def test_multilabel_config_errors(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'proxynca\\+\\+' is a loss for the embedding task"):
        _config(manifest, tmp_path, "loss.name=proxynca++")
    with pytest.raises(ConfigError, match="'asl' is a loss for the multilabel task"):
        load_config(None, [f"data.path={manifest}", "loss.name=asl"])
    with pytest.raises(ConfigError, match="val_split=classes"):
        _config(manifest, tmp_path, "data.val_split=classes")
    with pytest.raises(ConfigError, match="sampler=m_per_class is for the embedding task"):
        _config(manifest, tmp_path, "data.sampler=m_per_class")
    with pytest.raises(ConfigError, match="apply to the multilabel task only"):
        load_config(None, [f"data.path={manifest}", "loss.partial=selective"])
    assert _config(manifest, tmp_path).loss.resolved_name("multilabel") == "asl"


def test_bundle_with_a_class_without_validation_positives(tmp_path: Path) -> None:
    from frugalvision.bundle import save_bundle
    from frugalvision.models import create_embedding_model

    model = create_embedding_model(
        "test_efficientnet", pretrained=False, embedding_size=3, normalization="none", input_size=32
    )
    rows = [
        {"class": "a", "ap": 0.5, "positives": 3},
        {"class": "b", "ap": float("nan"), "positives": 0},  # no positive: AP undefined
        {"class": "c", "ap": 1.0, "positives": 1},
    ]
    path = save_bundle(
        model,
        tmp_path / "b",
        task="multilabel",
        classes=["a", "b", "c"],
        thresholds=[0.5] * 3,
        per_class=rows,
    )
    saved = json.loads((path / "config.json").read_text())
    assert saved["per_class"][1]["ap"] is None and (path / "per_class_ap.png").is_file()
    with pytest.raises(ValueError, match="needs as many classes"):
        save_bundle(model, tmp_path / "x", task="multilabel", classes=["a"])
    with pytest.raises(ValueError, match="one value per class"):
        save_bundle(model, tmp_path / "x", task="multilabel", classes=["a", "b", "c"], thresholds=[0.5])


def test_untuned_classes_get_the_pooled_threshold() -> None:
    from frugalvision.metrics import tune_thresholds
    from frugalvision.train.engine import decision_thresholds

    rng = np.random.default_rng(0)
    targets = (rng.random((60, 4)) < 0.3).astype(np.float32)
    targets[:, 3] = 0  # no validation positive for class 3
    targets[:5, 2] = -1
    scores = np.clip(0.25 * targets + rng.random((60, 4)) * 0.5, 0, 1)
    thresholds = decision_thresholds(scores, targets)
    np.testing.assert_array_equal(thresholds[:3], tune_thresholds(scores, targets)[:3])
    pooled = tune_thresholds(scores.reshape(-1, 1), targets.reshape(-1, 1))[
        0
    ]  # every known entry, one column
    assert thresholds[3] == pytest.approx(pooled) and thresholds[3] != 0.5
    assert np.all(decision_thresholds(scores, np.zeros_like(targets)) == 0.5)


def test_tagger_errors(tmp_path: Path) -> None:
    from frugalvision.bundle import save_bundle
    from frugalvision.errors import FrugalVisionError
    from frugalvision.models import create_embedding_model
    from frugalvision.tagging import Tagger, decide

    model = create_embedding_model("test_efficientnet", pretrained=False, embedding_size=3, input_size=32)
    embedding = save_bundle(model, tmp_path / "emb", task="embedding")
    with pytest.raises(FrugalVisionError, match="task 'embedding'; tagging needs a multilabel bundle"):
        Tagger(embedding)
    tags = save_bundle(model, tmp_path / "tags", task="multilabel", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="one number or one per class \\(3\\), got 2"):
        Tagger(tags, thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        Tagger(tags, thresholds=1.5)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        decide(np.zeros((1, 3)), ["a", "b", "c"], 0.5, top_k=0)
    assert Tagger(tags).thresholds.tolist() == [0.5, 0.5, 0.5]  # a bundle without tuned thresholds
