from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import frugalvision
from frugalvision.errors import DataError
from frugalvision.train import ConfigError, fit

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


def fake_text_encoder(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), sum(map(ord, t)) % 97, t.count("a") + 1, 1.0] for t in texts])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


def test_fast_path_fit_writes_run_and_bundle(
    labelled_folder: Path, tmp_path: Path, tiny_config, cache_dir: Path
) -> None:
    cfg = tiny_config(
        labelled_folder, tmp_path / "run", "model.freeze_backbone=true", f"data.cache_dir={cache_dir}"
    )
    result = fit(cfg)
    out = tmp_path / "run"
    assert result.bundle == out / "model" and (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    assert list((out / "logs").glob("version_*/metrics.csv")) and list(
        (out / "tensorboard").rglob("events.out.*")
    )
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert set(result.metrics) >= {"best_epoch", "val/recall@1", "val/recall@5", "val/map@r", "val/nmi"}
    assert set(result.baseline) == {"val/recall@1", "val/recall@5", "val/map@r", "val/nmi"}
    assert result.metrics["val/map@r"] == max(h["val/map@r"] for h in result.history)

    loaded = frugalvision.load(result.bundle)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    saved = json.loads((result.bundle / "config.json").read_text())
    assert saved["loss"] == {"name": "proxynca++", "kwargs": {}} and saved["data"]["fast_path"] is True
    assert saved["training"]["model"]["freeze_backbone"] is True and len(saved["classes"]) == 6
    assert saved["data"]["val"]["classes"] == 2 and saved["metrics"]["baseline"] == result.baseline


@pytest.mark.parametrize("loss", ["hyperbolic_pce", "language_guided"])
def test_fast_path_with_losses_that_need_more(
    loss: str, labelled_folder: Path, tmp_path: Path, tiny_config, cache_dir: Path
) -> None:
    cfg = tiny_config(
        labelled_folder,
        tmp_path,
        f"loss.name={loss}",
        "model.freeze_backbone=true",
        f"data.cache_dir={cache_dir}",
        "trainer.epochs=1",
    )
    result = fit(cfg, text_encoder=fake_text_encoder)
    if loss == "hyperbolic_pce":
        assert result.model.normalization == "poincare" and result.model.head.c == 0.1
    assert result.bundle is not None and result.history[0]["train/loss"] > 0


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resumed_run_equals_uninterrupted_run(
    labelled_folder: Path, tmp_path: Path, tiny_config, cache_dir: Path
) -> None:
    settings = (
        "model.freeze_backbone=true",
        f"data.cache_dir={cache_dir}",
        "model.drop_rate=0.3",
        "trainer.epochs=3",
    )
    reference = fit(tiny_config(labelled_folder, tmp_path / "ref", *settings))
    cfg = tiny_config(labelled_folder, tmp_path / "crash", *settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpoch(2)])
    with pytest.raises(ConfigError, match="already holds a training run"):
        fit(cfg)
    resumed = fit(cfg, resume=True)
    assert resumed.history == reference.history  # losses and metrics of every epoch, bit for bit
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_image_split_and_separate_validation_data(
    labelled_folder: Path, tmp_path: Path, tiny_config, cache_dir: Path
) -> None:
    common = ("model.freeze_backbone=true", f"data.cache_dir={cache_dir}", "trainer.epochs=1")
    images = fit(
        tiny_config(
            labelled_folder, tmp_path / "a", *common, "data.val_split=images", "data.val_fraction=0.4"
        )
    )
    data = json.loads((images.bundle / "config.json").read_text())["data"]
    assert data["train"]["classes"] == data["val"]["classes"] == 8 and data["val"]["images"] == 16
    separate = fit(tiny_config(labelled_folder, tmp_path / "b", *common, f"data.val_data={labelled_folder}"))
    data = json.loads((separate.bundle / "config.json").read_text())["data"]
    assert data["train"]["images"] == data["val"]["images"] == 40
    none = fit(
        tiny_config(labelled_folder, tmp_path / "c", *common, "data.val_split=none", "trainer.patience=null")
    )
    assert none.history == [] and none.bundle is not None


def test_user_errors(labelled_folder: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="cannot resume: no checkpoint"):
        fit(tiny_config(labelled_folder, tmp_path, "model.freeze_backbone=true"), resume=True)
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        fit(tiny_config(labelled_folder, tmp_path).replace(**{"data.path": None}))
    with pytest.raises(ConfigError, match="needs 8 training classes"):
        fit(tiny_config(labelled_folder, tmp_path, "data.batch_size=16"))
    with pytest.raises(DataError, match="at least 2 training classes"):
        fit(tiny_config(labelled_folder, tmp_path, "data.val_fraction=0.9"))
    with pytest.raises(ConfigError, match="normalization=none"):
        fit(tiny_config(labelled_folder, tmp_path, "loss.name=hyperbolic_pce", "model.normalization=none"))


def test_default_head_width_follows_the_training_path(labelled_folder: Path, tmp_path: Path) -> None:
    from frugalvision.train import build_model, load_config

    common = [f"data.path={labelled_folder}", "model.name=test_efficientnet", "model.pretrained=false"]
    frozen = build_model(load_config(None, [*common, "model.freeze_backbone=true"]))
    assert frozen.embedding_size == frozen.num_features  # the pooled features' width: no compression
    weight = frozen.head.out.weight.detach()  # square and orthogonal: a rotation of the pretrained features
    torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-5, rtol=0)
    assert build_model(load_config(None, common)).embedding_size == 128
    assert (
        build_model(
            load_config(None, [*common, "model.freeze_backbone=true", "model.embedding_size=32"])
        ).embedding_size
        == 32
    )


def test_fit_skips_or_fails_on_long_images(
    labelled_folder: Path, tmp_path: Path, tiny_config, long_png, bounded_resize
) -> None:
    """A 1 x 30000 PNG in every class, trained on without augmentation: skipped with one warning per side, or an
    ImageTooLargeError with data.on_corrupt=fail (issue 12, item 1)."""
    import shutil

    from frugalvision.errors import DataWarning, ImageTooLargeError

    data = tmp_path / "data"
    shutil.copytree(labelled_folder, data)
    for folder in sorted(data.iterdir()):
        long_png(1, 30000, name=f"data/{folder.name}/long.png")
    settings = ("augment.random_crop=false", "trainer.epochs=1")
    with pytest.warns(
        DataWarning, match=r"(?s)skipped \d unreadable image.*long\.png: 1x30000 pixels has an aspect"
    ):
        result = fit(tiny_config(data, tmp_path / "skip", *settings))
    assert result.bundle is not None
    with pytest.raises(ImageTooLargeError, match=r"long\.png: 1x30000 pixels has an aspect ratio of 30000:1"):
        fit(tiny_config(data, tmp_path / "fail", *settings, "data.on_corrupt=fail"))
