"""The detection task on the run scaffold: a tiny COCO set of coloured rectangles, bundle round trip, exact
resume after a crash, anchors, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from frugalvision.bundle import load_detector
from frugalvision.errors import DataError, StoreError
from frugalvision.train import ConfigError, fit
from helpers import detection_config, write_coco

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"))


def test_fit_writes_a_detection_bundle_that_loads(coco: Path, tmp_path: Path) -> None:
    result = fit(detection_config(coco, tmp_path / "run"))
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert {"val/map", "val/ap50", "val/ap75", "train/loss"} <= set(result.history[-1])
    config = json.loads((result.bundle / "config.json").read_text())
    assert config["task"] == "detection" and config["classes"] == ["red", "blue"]
    assert config["model"]["detector"]["image_size"] == 64 and config["data_config"]["input_size"] == [
        3,
        64,
        64,
    ]
    assert config["data"]["train"]["images"] + config["data"]["val"]["images"] == 10
    assert "mAP" in (result.bundle / "report.md").read_text()
    loaded = load_detector(result.bundle)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), result.model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    import frugalvision

    with pytest.raises(StoreError, match="load_detector"):
        frugalvision.load(result.bundle)


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resumed_run_equals_uninterrupted_run(coco: Path, tmp_path: Path) -> None:
    settings = (
        "trainer.epochs=3",
        "detection.close_mosaic=1",
        "detection.mixup=0.5",
        "detection.ema_decay=0.9",
    )
    reference = fit(detection_config(coco, tmp_path / "ref", *settings))
    cfg = detection_config(coco, tmp_path / "crash", *settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpoch(2)])
    resumed = fit(cfg, resume=True)
    # losses and metrics of every epoch, bit for bit (JSON: NaN, an AP of an absent size range, equals itself)
    assert json.dumps(resumed.history) == json.dumps(reference.history)
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_anchor_head_and_class_agnostic(coco: Path, tmp_path: Path) -> None:
    result = fit(
        detection_config(
            coco, tmp_path, "detection.head=anchor", "detection.class_agnostic=true", "trainer.epochs=1"
        )
    )
    config = json.loads((result.bundle / "config.json").read_text())
    assert config["classes"] == ["object"] and config["model"]["detector"]["head"] == "anchor"
    assert len(config["model"]["detector"]["anchors"]) == 3 and 0 <= config["data"]["anchor_bpr"] <= 1


def test_bad_input(tmp_path: Path, coco: Path) -> None:
    no_boxes = write_coco(tmp_path / "plain", n=3, boxes=False)
    # a COCO file without annotations still has boxes (empty arrays): all negatives is allowed, a folder is not
    folder = tmp_path / "folder" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    with pytest.raises(DataError, match="has no boxes"):
        fit(detection_config(folder.parent, tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"detection\.image_size must be a positive multiple of 32"):
        detection_config(coco, tmp_path / "b", "detection.image_size=100")
    with pytest.raises(ConfigError, match="val_split=classes"):
        detection_config(coco, tmp_path / "c", "data.val_split=classes")
    with pytest.raises(ConfigError, match="is a loss for the embedding task"):
        detection_config(coco, tmp_path / "d", "loss.name=triplet")
    assert no_boxes.is_file()


BCCD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "bccd"


@pytest.mark.slow
@pytest.mark.skipif(not BCCD.is_dir(), reason="real data ../shared/data/bccd is absent")
def test_real_voc_folder_uses_its_own_split(tmp_path: Path) -> None:
    train_ids = (BCCD / "ImageSets" / "Main" / "train.txt").read_text().split()
    val_ids = (BCCD / "ImageSets" / "Main" / "val.txt").read_text().split()
    cfg = detection_config(
        BCCD, tmp_path, "trainer.epochs=1", "data.steps_per_epoch=1", "data.eval_batch_size=32"
    )
    result = fit(cfg)
    data = json.loads((result.bundle / "config.json").read_text())["data"]
    assert data["train"]["images"] == len(train_ids) and data["val"]["images"] == len(val_ids)
    assert json.loads((result.bundle / "config.json").read_text())["classes"] == ["Platelets", "RBC", "WBC"]
    assert 0.0 <= result.metrics["val/map"] <= 1.0


# ------------------------------------------------------------------------------------------- multi-scale
class _RecordSteps(Callback):
    """Records, per training step, the batch the loader gave and what the detector and the loss received."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        # on the trained detector only (the EMA copy, which validation runs, was made before)
        pl_module.detector.register_forward_pre_hook(self._detector_input)
        pl_module.loss.register_forward_pre_hook(self._loss_input)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "batch": batch})

    def _detector_input(self, module, args) -> None:
        self.steps[-1]["images"] = args[0]

    def _loss_input(self, module, args) -> None:
        self.steps[-1]["targets"] = args[1]


def _sides(image_size: int, ratio: str) -> set[int]:
    """The allowed sides, from the definition in exact arithmetic: multiples of 32 in [S (1 - r), S (1 + r)]."""
    from fractions import Fraction

    r = Fraction(ratio)
    return {s for s in range(32, 4 * image_size + 1, 32) if image_size * (1 - r) <= s <= image_size * (1 + r)}


def test_multi_scale_side_draws_multiples_of_32_in_range() -> None:
    from frugalvision.train.detection import multi_scale_side

    cases = [
        (416, "0.5"),
        (640, "0.25"),
        (64, "0.5"),
        (320, "0.1"),
        (96, "0.3"),
        (256, "0.05"),
        (800, "0.16"),
    ]
    for size, text in cases:  # 800 x 1.16 = 928 exactly, 927.99... in floating point
        ratio = float(text)
        drawn = [multi_scale_side(size, ratio, seed=3, step=k) for k in range(400)]
        assert set(drawn) == _sides(size, text), (size, ratio)  # every allowed side, and only those
        assert drawn == [
            multi_scale_side(size, ratio, seed=3, step=k) for k in range(400)
        ]  # (seed, step) decide
        assert (
            drawn != [multi_scale_side(size, ratio, seed=4, step=k) for k in range(400)]
            or len(set(drawn)) == 1
        )
    assert {multi_scale_side(416, 0.0, seed=0, step=k) for k in range(50)} == {416}


def test_multi_scale_trains_at_the_drawn_sides_and_resumes_exactly(coco: Path, tmp_path: Path) -> None:
    from frugalvision.train.detection import multi_scale_side

    settings = (
        "trainer.epochs=3",
        "data.batch_size=2",
        "detection.close_mosaic=1",
        "detection.multi_scale=0.5",
        "seed=1",
    )
    record = _RecordSteps()
    reference = fit(detection_config(coco, tmp_path / "ref", *settings), callbacks=[record])
    sides = []
    for row in record.steps:
        side = multi_scale_side(64, 0.5, seed=1, step=row["step"])
        images, targets, batch = row["images"], row["targets"], row["batch"]
        assert images.shape == (batch["image"].shape[0], 3, side, side)
        for got, given in zip(targets, batch["targets"], strict=True):
            torch.testing.assert_close(got["boxes"], given["boxes"] * (side / 64), rtol=0, atol=0)
            assert torch.equal(got["labels"], given["labels"])
        sides.append(side)
    assert len(sides) == 9 and len(set(sides)) > 1  # 7 training images, 3 full batches of 2, 3 epochs
    config = json.loads((reference.bundle / "config.json").read_text())
    assert config["model"]["detector"]["image_size"] == 64  # validation and the bundle stay at image_size
    assert config["training"]["detection"]["multi_scale"] == 0.5

    cfg = detection_config(coco, tmp_path / "crash", *settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpoch(2)])
    resumed = fit(cfg, resume=True)
    assert json.dumps(resumed.history) == json.dumps(reference.history)
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_multi_scale_off_passes_the_batch_through(coco: Path, tmp_path: Path) -> None:
    record = _RecordSteps()
    settings = ("trainer.epochs=1", "data.batch_size=2", "detection.multi_scale=0")
    fit(detection_config(coco, tmp_path, *settings), callbacks=[record])
    assert len(record.steps) == 3
    for row in record.steps:  # the loader's own tensors reach the detector and the loss
        assert row["images"] is row["batch"]["image"] and row["targets"] is row["batch"]["targets"]


@pytest.mark.parametrize("value", ["-0.1", "0.6", "nan"])
def test_multi_scale_out_of_range(coco: Path, tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"detection\.multi_scale must be in \[0, 0\.5\]"):
        detection_config(coco, tmp_path, f"detection.multi_scale={value}")
