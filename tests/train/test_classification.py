"""The ``classification`` task: soft targets (label smoothing, Mixup, CutMix) and their loss against float64 hand
computations, temperature scaling, metrics against scikit-learn, LP-FT, configuration errors, exact resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, top_k_accuracy_score
from timm.loss import SoftTargetCrossEntropy

from frugalvision.classify import Classifier
from frugalvision.data import open_dataset
from frugalvision.metrics import fit_temperature
from frugalvision.train import ConfigError, fit, load_config
from frugalvision.train.classification import build_mixup, calibration_summary, smoothed_targets
from frugalvision.train.data import split_dataset

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


def _config(data: Path, out: Path, *overrides: str):
    return load_config(
        None,
        [
            "task=classification",
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


def _soft_ce_float64(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``-(1/B) Σ_i Σ_c t_ic log softmax(z_i)_c`` in float64 numpy, with an explicit log-sum-exp."""
    z, t = logits.detach().double().numpy(), targets.detach().double().numpy()
    m = z.max(axis=1, keepdims=True)
    log_p = z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
    return float(-(t * log_p).sum(axis=1).mean())


def test_label_smoothed_targets_and_their_loss() -> None:
    labels = torch.tensor([0, 3, 1, 1, 4])
    t = smoothed_targets(labels, 5, 0.1)
    expected = np.full((5, 5), 0.1 / 5)
    expected[np.arange(5), labels.numpy()] = 1 - 0.1 + 0.1 / 5
    np.testing.assert_allclose(t.double().numpy(), expected, atol=1e-7)
    z = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 3
    loss = SoftTargetCrossEntropy()(z, t)
    assert float(loss) == pytest.approx(_soft_ce_float64(z, t), abs=1e-6)
    # the same as torch's hard-label cross-entropy with label smoothing
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z, labels, label_smoothing=0.1))


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_and_cutmix_targets_sum_to_one_blend_with_the_image_weight_and_the_loss_is_exact(
    tmp_path: Path, mixup: float, cutmix: float
) -> None:
    cfg = _config(tmp_path, tmp_path, f"augment.mixup={mixup}", f"augment.cutmix={cutmix}")
    mixer = build_mixup(cfg, num_classes=6)
    assert mixer is not None and build_mixup(_config(tmp_path, tmp_path), 6) is None
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
    seen_cutmix = seen_mixup = False
    for seed in range(12):
        np.random.seed(seed)  # noqa: NPY002  (timm's Mixup draws from NumPy's global generator)
        x = torch.rand(8, 3, 16, 16, generator=gen) + 1.0  # strictly positive: pixels can be told apart
        mixed, targets = mixer(x.clone(), labels)
        t = targets.double().numpy()
        np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
        assert (t >= 0).all()
        # λ from the images alone: CutMix keeps a fraction λ of each image's pixels; Mixup is λ x + (1-λ) x_flip
        flipped = x.flip(0)
        kept = torch.isclose(mixed, x).all(dim=1).double().mean(dim=(1, 2))
        pasted = torch.isclose(mixed, flipped).all(dim=1).double().mean(dim=(1, 2))
        partition = bool(torch.allclose(kept + pasted, torch.ones(8, dtype=torch.float64)))
        if partition and bool((pasted > 0).any()) and bool((kept > 0).any()):
            lam = float(kept[0])
            seen_cutmix = True
        else:
            d = (x - flipped).double()
            lam = float(((mixed.double() - flipped.double()) * d).sum() / (d * d).sum())
            seen_mixup = seen_mixup or 1e-3 < lam < 1 - 1e-3
        s = smoothed_targets(labels, 6, 0.1).double().numpy()
        np.testing.assert_allclose(t, lam * s + (1 - lam) * s[::-1], atol=1e-5)
        z = torch.randn(8, 6, generator=gen) * 4
        assert float(SoftTargetCrossEntropy()(z, targets)) == pytest.approx(
            _soft_ce_float64(z, targets), abs=1e-6
        )
    assert seen_cutmix == (cutmix > 0) and seen_mixup == (mixup > 0)


def test_temperature_scaling_lowers_the_nll_and_keeps_the_argmax() -> None:
    rng = np.random.default_rng(0)
    n, c = 400, 7
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    right = rng.random(n) < 0.6
    logits[np.arange(n), np.where(right, labels, (labels + 1) % c)] += 2.0
    logits *= 4.0  # over-confident
    s = calibration_summary(logits, labels, temperature=fit_temperature(logits, labels))
    t = s["temperature"]

    def nll(temp: float) -> float:  # float64 from the equation
        z = logits / temp
        m = z.max(axis=1, keepdims=True)
        return float(np.mean(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - z[np.arange(n), labels]))

    assert t > 1.5  # over-confident logits are softened
    assert s["nll_after"] == pytest.approx(nll(t), abs=1e-9) and s["nll_before"] == pytest.approx(
        nll(1.0), abs=1e-9
    )
    assert s["nll_after"] < s["nll_before"] - 0.1
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03))  # a minimum of the NLL
    assert s["ece_after"] < s["ece_before"]
    assert (np.argmax(logits / t, axis=1) == np.argmax(logits, axis=1)).all()
    assert s["top1"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))


def test_fit_saves_a_calibrated_bundle_whose_metrics_equal_scikit_learn(
    labelled_folder: Path, tmp_path: Path
) -> None:
    result = fit(_config(labelled_folder, tmp_path / "run", "trainer.epochs=2"))
    bundle = result.bundle
    assert bundle is not None
    for name in (
        "config.json",
        "model.safetensors",
        "report.md",
        "curves.png",
        "confusion_matrix.png",
        "reliability.png",
    ):
        assert (bundle / name).is_file(), name
    saved = json.loads((bundle / "config.json").read_text())
    assert saved["task"] == "classification" and len(saved["classes"]) == 8
    assert saved["loss"] == {"name": "cross_entropy", "kwargs": {"label_smoothing": 0.1}}
    report = (bundle / "report.md").read_text()
    assert "ECE" in report and "confusion_matrix.png" in report and "| class00 |" in report

    # the same validation images, through the saved bundle (timm's eval transform), scored by scikit-learn
    _, val = split_dataset(open_dataset(labelled_folder), "images", 0.25, 0, require_pairs=False)
    assert val is not None
    clf = Classifier(bundle)
    assert clf.temperature == pytest.approx(saved["temperature"]) == pytest.approx(result.temperature)
    logits = clf.logits(val.dataset.paths).astype(np.float64)
    y = val.labels
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    best = result.metrics
    assert best["val/top1"] == pytest.approx(accuracy_score(y, logits.argmax(1)), abs=1e-9)
    assert best["val/top5"] == pytest.approx(top_k_accuracy_score(y, logits, k=5, labels=range(8)), abs=1e-9)
    assert best["val/balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y, logits.argmax(1)), abs=1e-9
    )
    assert best["val/macro_f1"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"), abs=1e-9)
    assert best["val/nll"] == pytest.approx(log_loss(y, probs, labels=range(8)), abs=1e-5)
    assert best["val/top1"] == max(h["val/top1"] for h in result.history)
    # the temperature is the NLL minimiser on these logits, and the calibrated probabilities use it

    assert saved["temperature"] == pytest.approx(fit_temperature(logits, y), rel=1e-4)
    cal = saved["metrics"]["calibration"]
    assert cal["nll_after"] <= cal["nll_before"] + 1e-12
    zt = logits / saved["temperature"]
    zt -= zt.max(axis=1, keepdims=True)
    np.testing.assert_allclose(
        clf.calibrate(logits), np.exp(zt) / np.exp(zt).sum(1, keepdims=True), atol=1e-6
    )


def test_linear_probe_and_class_aware_sampling(labelled_folder: Path, tmp_path: Path) -> None:
    result = fit(
        _config(
            labelled_folder,
            tmp_path / "lp",
            "model.freeze_backbone=true",
            "data.sampler=class_aware",
            f"data.cache_dir={tmp_path / 'cache'}",
            "trainer.epochs=3",
        )
    )
    saved = json.loads((result.bundle / "config.json").read_text())
    assert saved["data"]["fast_path"] is True and saved["training"]["data"]["sampler"] == "class_aware"
    assert [h["epoch"] for h in result.history] == [0, 1, 2] and saved["temperature"] > 0


class _Threads(Callback):
    """``torch.get_num_threads()`` at every training and validation batch."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.add(torch.get_num_threads())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.add(torch.get_num_threads())


def test_linear_probe_trains_its_small_head_on_one_thread_and_restores_the_count(
    labelled_folder: Path, tmp_path: Path
) -> None:
    # Many threads on microsecond-sized head steps made the probe scheduling-bound on a busy CPU (issue 15).
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = _Threads()
        settings = ("model.freeze_backbone=true", f"data.cache_dir={tmp_path / 'cache'}")
        fit(_config(labelled_folder, tmp_path / "lp", *settings), callbacks=[threads])
        assert threads.seen == {1} and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="simulated crash"):  # a failed run restores it too
            fit(_config(labelled_folder, tmp_path / "crash", *settings), callbacks=[_CrashAtEpoch(1)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("macs", "device", "during"), [(1000, "cpu", 1), (1 << 30, "cpu", 3), (1000, "cuda", 3)]
)
def test_small_head_threads_only_for_small_heads_on_the_cpu(macs: int, device: str, during: int) -> None:
    from types import SimpleNamespace

    from frugalvision.train.cache import SmallHeadThreads

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        cb = SmallHeadThreads(macs)
        cb.setup(trainer, None, "fit")  # type: ignore[arg-type]
        assert torch.get_num_threads() == during
        cb.teardown(trainer, None, "fit")  # type: ignore[arg-type]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


class _Snapshot(Callback):
    """The backbone's state (weights and BatchNorm statistics) at the end of each training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.model.backbone.state_dict().items()})


def test_lp_ft_trains_only_the_head_during_the_head_epochs(labelled_folder: Path, tmp_path: Path) -> None:
    from frugalvision.train import build_model

    cfg = _config(
        labelled_folder, tmp_path / "lpft", "model.head_epochs=1", "trainer.epochs=2", "augment.mixup=0.2"
    )
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, num_classes=8).backbone.state_dict()
    snap = _Snapshot()
    fit(cfg, callbacks=[snap])
    after_head, after_all = snap.states
    for k, v in initial.items():
        assert torch.equal(after_head[k], v), k  # epoch 0: weights and BatchNorm statistics untouched
    assert any(not torch.equal(after_all[k], v) for k, v in initial.items())  # epoch 1: fine-tuned


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _crash_resume_and_compare(folder: Path, tmp_path: Path, settings: tuple[str, ...]) -> Path:
    """Train ``settings`` uninterrupted, and again crashed at epoch 2 then resumed: both end identical (history,
    temperature, every weight). Returns the resumed run's folder."""
    reference = fit(_config(folder, tmp_path / "ref", *settings))
    cfg = _config(folder, tmp_path / "crash", *settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_CrashAtEpoch(2)])
    resumed = fit(cfg, resume=True)
    assert resumed.history == reference.history and resumed.temperature == reference.temperature
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    return tmp_path / "crash"


def test_resumed_run_with_mixup_cutmix_and_lp_ft_equals_an_uninterrupted_run(
    labelled_folder: Path, tmp_path: Path
) -> None:
    settings = (
        "augment.mixup=0.4",
        "augment.cutmix=1.0",
        "model.head_epochs=1",
        "model.drop_rate=0.2",
        "trainer.epochs=3",
        "trainer.patience=null",
    )
    _crash_resume_and_compare(labelled_folder, tmp_path, settings)


def test_resumed_linear_probe_equals_an_uninterrupted_run_and_its_checkpoints_hold_only_the_head(
    labelled_folder: Path, tmp_path: Path
) -> None:
    settings = (
        "model.freeze_backbone=true",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=3",
        "trainer.patience=null",
    )
    run = _crash_resume_and_compare(labelled_folder, tmp_path, settings)
    for name in ("last.ckpt", "best.ckpt"):  # the frozen backbone is not saved, the head is
        saved = torch.load(run / "checkpoints" / name, weights_only=True)["state_dict"]
        assert not any(k.startswith("model.backbone.") for k in saved), name
        assert {"model.head.out.weight", "model.head.out.bias"} <= set(saved), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=classification", "loss.name=asl"], "classification task trains with cross-entropy"),
        (["task=classification", "loss.kwargs.margin=1"], "loss.kwargs.margin: unknown setting"),
        (["task=classification", "loss.kwargs.label_smoothing=1.5"], "label_smoothing must be a number in"),
        (["task=classification", "data.val_split=classes"], "a classifier cannot predict"),
        (["task=classification", "data.sampler=m_per_class"], "data.sampler=m_per_class"),
        (["task=classification", "augment.mixup=-1"], "Beta"),
        (["task=classification", "model.head_epochs=10", "trainer.epochs=3"], "model.head_epochs must be in"),
        (["task=embedding", "model.head_epochs=1"], "classification task only"),
        (["task=multilabel", "augment.cutmix=1"], "Mixup and CutMix blend labels"),
    ],
)
def test_configuration_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_classification_defaults_and_recipes() -> None:
    cfg = load_config(None, ["task=classification"])
    assert (cfg.data.sampler, cfg.data.val_split, cfg.model.normalization) == ("shuffle", "images", "none")
    assert cfg.augment.mixup == 0.0  # the light recipe: no Mixup
    assert load_config(None, ["task=classification", "recipe=medium"]).augment.mixup == 0.2
    assert (
        load_config(None, ["task=classification", "recipe=strong", "augment.mixup=0.1"]).augment.mixup == 0.1
    )
    assert load_config(None, ["recipe=strong"]).augment.mixup == 0.0  # embeddings never get Mixup
