"""``distill``: a tiny random teacher teaches a tiny student on generated images -- teacher targets, held-out
metrics against an independent computation, exact resume, stores as teachers, the bundle in the other tools, ONNX
export, the CLI and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from lightning.pytorch.callbacks import Callback

import frugalvision
from frugalvision.cli.main import cli
from frugalvision.distill import (
    DistillConfig,
    build_student,
    distill,
    heldout_metrics,
    holdout_split,
)
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import DataError
from frugalvision.foundation import create_feature_model, open_images
from frugalvision.losses import DistillationLoss
from frugalvision.metrics import retrieval_metrics
from frugalvision.train.config import ConfigError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.usefixtures("one_thread"),
]

TEACHER = "resnet10t"  # 4.9M random parameters, run at 32 px
STUDENT = "mobilenetv3_small_050"  # 0.4M


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teacher_cache")


def _config(data: Path, out: Path, cache: Path | None = None, **changes: Any) -> DistillConfig:
    values: dict[str, Any] = {
        "data": str(data),
        "out": str(out),
        "teacher": TEACHER,
        "teacher_pretrained": False,
        "teacher_input_size": 32,
        "teacher_cache": str(cache) if cache else None,
        "student": STUDENT,
        "input_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "progress": False,
        "accelerator": "cpu",
    }
    return DistillConfig.from_dict({**values, **changes})


def _teacher_by_hand(dataset) -> torch.Tensor:
    """The random teacher distill builds (seed 0), run image by image on the clean evaluation preprocessing."""
    torch.manual_seed(0)
    teacher = create_feature_model(TEACHER, pretrained=False)
    teacher.data_config = {**teacher.data_config, "input_size": (3, 32, 32)}
    transform = teacher.transform()
    with torch.no_grad():
        rows = [teacher(transform(dataset[i]["image"]).unsqueeze(0)) for i in range(len(dataset))]
    return F.normalize(torch.cat(rows), dim=1)


@pytest.fixture(scope="module")
def run(labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    out = tmp_path_factory.mktemp("distill") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as the function-scoped tests run (one_thread), so that runs compare bit for bit
    try:
        return distill(_config(labelled_folder, out, cache_dir, epochs=3))
    finally:
        torch.set_num_threads(threads)


def test_run_writes_bundle_and_metrics_match_an_independent_computation(run, labelled_folder: Path) -> None:
    out = run.out
    assert run.bundle == out / "model" and (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and list(
        (out / "logs").glob("version_*/metrics.csv")
    )
    assert [h["epoch"] for h in run.history] == [0, 1, 2]
    assert run.history[-1]["train/loss"] < run.history[0]["train/loss"]
    assert set(run.metrics) == {"val/cosine", "val/nn_agreement", "val/recall@1", "val/map@r"}
    assert run.teacher["kind"] == "model" and run.teacher["params"] > 4 * run.student_params

    # The held-out part: 2 of the 5 images of each of the 8 classes.
    dataset = open_images(labelled_folder)
    _, held = holdout_split(dataset, "images", 0.2, 0)
    val = dataset.subset(held)
    labels = val.primary_labels()
    assert len(held) == 16 and np.all(np.bincount(labels) == 2)

    # Teacher targets = the teacher's embeddings of the clean images; its metrics = retrieval_metrics on them.
    teacher = _teacher_by_hand(val)
    expected = retrieval_metrics(teacher, labels, k=(1,), metric="cosine", include=("recall", "map_at_r"))
    assert run.teacher_metrics == pytest.approx({f"val/{k}": v for k, v in expected.items()}, abs=1e-6)

    # The bundle: a normal embedding model (linear head to the teacher's width, L2), the same function as the run's.
    model = frugalvision.load(run.bundle)
    assert model.embedding_size == teacher.shape[1] == 512 and model.normalization == "l2"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), run.model(x), rtol=0, atol=0)
        student = torch.cat([model(model.transform()(val[i]["image"]).unsqueeze(0)) for i in range(len(val))])
    by_hand = heldout_metrics(student, teacher, labels)
    assert by_hand == pytest.approx(run.metrics, abs=1e-5)
    cos = float((F.normalize(student, dim=1) * teacher).sum(dim=1).mean())
    assert run.metrics["val/cosine"] == pytest.approx(cos, abs=1e-5)

    saved = json.loads((run.bundle / "config.json").read_text())
    assert saved["task"] == "embedding" and saved["loss"]["name"] == "distillation"
    assert saved["metrics"]["teacher"] == pytest.approx(run.teacher_metrics)
    assert saved["data"]["train"]["images"] == 24 and saved["data"]["val"]["images"] == 16
    assert "## Distillation" in (run.bundle / "report.md").read_text()


def test_a_teacher_store_gives_the_same_run(
    run, labelled_folder: Path, tmp_path: Path, cache_dir: Path
) -> None:
    stores = [p for p in cache_dir.iterdir() if EmbeddingStore.exists(p)]
    assert len(stores) == 1  # one extraction, reused by every run of this module
    store = EmbeddingStore.load(stores[0])
    assert len(store) == 40 and store.normalized
    again = distill(
        _config(labelled_folder, tmp_path / "b", teacher=str(stores[0]), teacher_input_size=None, epochs=3)
    )
    assert again.history == run.history and again.teacher["kind"] == "store"

    partial = extract_embeddings(
        create_feature_model(TEACHER, pretrained=False),
        open_images(labelled_folder).subset(np.arange(30)),
        tmp_path / "partial",
        num_workers=0,
        progress=False,
    )
    assert len(partial) == 30
    with pytest.raises(DataError, match="has no embedding for 10 of the 40 images"):
        distill(
            _config(
                labelled_folder, tmp_path / "c", teacher=str(tmp_path / "partial"), teacher_input_size=None
            )
        )


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resumed_run_equals_uninterrupted_run(labelled_folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    # augmentation, stochastic depth and a learnt temperature: everything that makes runs random
    settings = {"epochs": 3, "recipe": "medium", "drop_path_rate": 0.2, "learnable_temperature": True}
    reference = distill(_config(labelled_folder, tmp_path / "ref", cache_dir, **settings))
    cfg = _config(labelled_folder, tmp_path / "crash", cache_dir, **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(cfg, callbacks=[_CrashAtEpoch(2)])
    with pytest.raises(ConfigError, match="already holds a distillation run"):
        distill(cfg)
    resumed = distill(cfg, resume=True)
    assert resumed.history == reference.history  # losses, temperature and held-out metrics, bit for bit
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_distilled_bundle_exports_to_onnx(run, tmp_path: Path) -> None:
    from frugalvision.deploy import export_bundle

    result = export_bundle(run.bundle, tmp_path / "deploy", exporter="torchscript")
    assert result.parity["min_cosine"] >= 0.9999  # ONNX Runtime against PyTorch, checked by the export
    deploy = json.loads((tmp_path / "deploy" / "deploy.json").read_text())
    assert deploy["task"] == "embedding"
    assert deploy["output"] == {"name": "embeddings", "size": 512, "normalization": "l2"}


def test_unlabeled_photos_and_other_splits(labelled_folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(labelled_folder.rglob("*.png"))):
        shutil.copy(p, flat / f"{i:02d}.png")
    result = distill(_config(flat, tmp_path / "u", cache_dir, epochs=1))
    assert set(result.metrics) == {"val/cosine", "val/nn_agreement"} and result.teacher_metrics == {}
    assert json.loads((result.bundle / "config.json").read_text())["data"]["val"]["images"] == 8

    classes = distill(_config(labelled_folder, tmp_path / "k", cache_dir, epochs=1, val_split="classes"))
    data = json.loads((classes.bundle / "config.json").read_text())["data"]
    assert data["train"]["images"] == 30 and data["val"]["images"] == 10  # 2 of 8 classes held out
    separate = distill(_config(labelled_folder, tmp_path / "v", cache_dir, epochs=1, val_data=str(flat)))
    assert set(separate.metrics) == {"val/cosine", "val/nn_agreement"}
    none = distill(_config(labelled_folder, tmp_path / "n", cache_dir, epochs=1, val_split="none"))
    assert none.metrics == {} and "val/cosine" not in none.history[0]
    every = distill(_config(labelled_folder, tmp_path / "e", cache_dir, epochs=3, eval_every=2))
    assert ["val/cosine" in h for h in every.history] == [
        False,
        True,
        True,
    ]  # the last epoch is always evaluated


def test_holdout_split() -> None:
    from frugalvision.data import ImageDataset, Sample

    samples = [Sample(Path(f"{c}_{i}.png"), (c,)) for c, n in enumerate([10, 5, 3, 2, 1]) for i in range(n)]
    samples += [Sample(Path(f"u{i}.png")) for i in range(10)]
    dataset = ImageDataset(samples, ["a", "b", "c", "d", "e"])
    train, held = holdout_split(dataset, "images", 0.2, 0)
    labels = dataset.primary_labels()
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(dataset)))
    assert np.bincount(labels[held][labels[held] >= 0], minlength=5).tolist() == [2, 2, 2, 1, 0]
    assert int((labels[held] < 0).sum()) == 2
    assert np.array_equal(holdout_split(dataset, "images", 0.2, 0)[1], held)
    _, by_class = holdout_split(dataset, "classes", 0.4, 1)
    chosen = set(labels[by_class][labels[by_class] >= 0].tolist())
    assert len(chosen) == 2 and all(
        int((labels == c).sum()) == int((labels[by_class] == c).sum()) for c in chosen
    )
    assert len(holdout_split(dataset, "none", 0.2, 0)[1]) == 0
    with pytest.raises(ConfigError, match="val_split=classes holds out whole classes"):
        holdout_split(ImageDataset([Sample(Path("x.png"))], []), "classes", 0.2, 0)


def test_student_pooling_and_the_loss_decreasing_over_steps() -> None:
    config = DistillConfig(student="mobilenetv3_small_050", input_size=32)
    torch.manual_seed(0)
    student = build_student(config, 24)
    # auto = the model's own pre-logits, MobileNetV3's conv_head included and trained
    assert student.pooling.kind == "native" and student.embedding_size == 24
    assert all(p.requires_grad for p in student.backbone.model.conv_head.parameters())
    # average pooling of the last map never reaches conv_head: it is frozen rather than idle in the optimiser
    averaged = build_student(config.replace(pooling="avg"), 24)
    assert not any(p.requires_grad for p in averaged.backbone.model.conv_head.parameters())
    assert (
        build_student(DistillConfig(student="test_efficientnet", input_size=32), 24).pooling.kind == "native"
    )

    images, targets = torch.randn(8, 3, 32, 32), torch.randn(8, 24)
    loss = DistillationLoss()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    student.train()
    values = []
    for _ in range(15):
        out = loss(student(images), targets)["loss"]
        optimizer.zero_grad()
        out.backward()
        optimizer.step()
        values.append(float(out.detach()))
    assert values[-1] < 0.5 * values[0]


def test_user_errors(labelled_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot resume: no checkpoint"):
        distill(_config(labelled_folder, tmp_path / "r"), resume=True)
    with pytest.raises(ConfigError, match="data is required"):
        distill(DistillConfig(out=str(tmp_path)))
    with pytest.raises(DataError, match="training images not found"):
        distill(_config(tmp_path / "missing", tmp_path / "m"))
    (tmp_path / "junk").mkdir()
    with pytest.raises(ConfigError, match=r"neither an embedding store .* nor a model bundle"):
        distill(
            _config(labelled_folder, tmp_path / "j", teacher=str(tmp_path / "junk"), teacher_input_size=None)
        )
    with pytest.raises(ConfigError, match="no such store or bundle folder"):
        distill(_config(labelled_folder, tmp_path / "j", teacher="./nowhere", teacher_input_size=None))
    with pytest.raises(ValueError, match="unknown model 'resnet_nope'"):
        distill(_config(labelled_folder, tmp_path / "j", teacher="resnet_nope"))
    with pytest.raises(ConfigError, match="unknown distillation setting 'learning_rate'; did you mean 'lr'"):
        DistillConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        DistillConfig.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        DistillConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="both 0"):
        DistillConfig(mse_weight=0, contrastive_weight=0)
    assert DistillConfig.from_dict({"epochs": "3", "lr": "1e-3", "progress": "false"}).epochs == 3


def test_cli_round_trip(labelled_folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    from frugalvision.cli import distill as _distill  # noqa: F401  (registers the commands)
    from frugalvision.cli import retrieval  # noqa: F401

    runner = CliRunner()
    out = tmp_path / "run"
    args = ["distill", "--data", str(labelled_folder), "--teacher", TEACHER, "--no-teacher-pretrained",
            "--teacher-input-size", "32", "--teacher-cache", str(cache_dir), "--student", STUDENT, "--input-size",
            "32", "--epochs", "1", "-b", "8", "-j", "0", "--accelerator", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    r = runner.invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (
        "recall@1" in r.output and "nn_agreement" in r.output and f"model bundle: {out / 'model'}" in r.output
    )

    r = runner.invoke(
        cli, ["distill", "--out", str(out), "--resume", "--epochs", "2"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads((out / "model" / "config.json").read_text())["history"]) == 2

    store = tmp_path / "store"
    args = [
        "embed",
        str(labelled_folder),
        "--model",
        str(out / "model"),
        "--out",
        str(store),
        "-j",
        "0",
        "--no-progress",
    ]
    r = runner.invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0 and "wrote 40 embeddings of size 512" in r.output, r.output

    r = runner.invoke(cli, ["distill", "--data", str(labelled_folder)])
    assert r.exit_code == 1 and "Error: no run folder: pass --out" in r.output
    r = runner.invoke(cli, ["distill", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 1 and "cannot resume" in r.output
    r = runner.invoke(
        cli,
        ["distill", "--data", str(labelled_folder), "--out", str(tmp_path / "x"), "--teacher", "./nowhere"],
    )
    assert r.exit_code == 1 and "no such store or bundle folder" in r.output and "Traceback" not in r.output
    command = cli.commands["distill"]
    assert all(p.help for p in command.params if p.name != "help"), (
        "every option of `frugalvision distill` has help"
    )


class _Snapshots(Callback):
    """Backbone and head weights (and BatchNorm statistics) at the start of training and after every epoch."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        self.rows.append(
            (
                {k: v.detach().clone() for k, v in model.backbone.state_dict().items()},
                {k: v.detach().clone() for k, v in model.head.state_dict().items()},
            )
        )


def test_head_only_epochs_train_the_head_first(labelled_folder: Path, tmp_path: Path) -> None:
    snapshots = _Snapshots()
    config = _config(labelled_folder, tmp_path / "run", epochs=3, head_only_epochs=2, warmup_epochs=0)
    start = build_student(config, 8)  # not the run's student: only its architecture is compared
    run = distill(config, callbacks=[snapshots])
    (b_start, h_start), _, (b1, h1), (b2, _) = snapshots.rows
    assert all(
        torch.equal(b_start[k], b1[k]) for k in b1
    )  # epochs 0 and 1: backbone (and BN statistics) frozen
    assert any(not torch.equal(h_start[k], h1[k]) for k in h1)  # ... while the head trains
    assert any(not torch.equal(b1[k], b2[k]) for k in b1)  # epoch 2: everything trains
    assert set(b1) == set(start.backbone.state_dict()) and run.bundle is not None
    with pytest.raises(ConfigError, match="head_only_epochs must be in"):
        _config(labelled_folder, tmp_path / "x", epochs=2, head_only_epochs=2)
    with pytest.raises(ConfigError, match="cannot be used with a DDP strategy"):
        _config(labelled_folder, tmp_path / "x", head_only_epochs=1, strategy="ddp")


@pytest.mark.parametrize("key", ["input_size", "teacher_input_size"])
def test_input_sizes_are_bounded(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be in \[8, 2048\] pixels, got 20000"):
        DistillConfig(**{key: 20000})
