from __future__ import annotations

from pathlib import Path

import pytest

from frugalvision.train import RECIPES, ConfigError, TrainConfig, load_config, parse_override


def test_defaults_and_recipe_presets() -> None:
    cfg = load_config()
    assert (
        cfg.recipe == "light"
        and cfg.loss.resolved_name(cfg.task) == "proxynca++"
        and cfg.optim.head_lr_multiplier == 10
    )
    assert cfg.augment.auto_augment == RECIPES["light"]["augment.auto_augment"]
    strong = load_config(overrides=["recipe=strong"])
    assert (
        strong.model.drop_path_rate == 0.1
        and strong.augment.re_prob == 0.25
        and strong.optim.weight_decay == 0.1
    )
    assert load_config(overrides={"recipe": "none"}).augment.random_crop is False


def test_precedence_defaults_recipe_yaml_overrides(tmp_path: Path) -> None:
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(
        "recipe: medium\noptim:\n  lr: 3.0e-4\n  weight_decay: 0.2\nloss:\n  name: triplet\n  kwargs: {margin: 0.3}\n"
    )
    cfg = load_config(yaml_file, ["optim.lr=1e-3", "loss.kwargs.mining=semihard", "trainer.eval_k=[1, 2, 4]"])
    assert cfg.optim.lr == 1e-3  # override > YAML ("1e-3" is a string to YAML, read as a number here)
    assert cfg.optim.weight_decay == 0.2  # YAML > recipe
    assert cfg.model.drop_path_rate == 0.1  # recipe > default
    assert cfg.loss.kwargs == {"margin": 0.3, "mining": "semihard"}
    assert cfg.trainer.eval_k == (1, 2, 4)


def test_round_trips_through_yaml_and_dict(tmp_path: Path) -> None:
    cfg = load_config(overrides=["data.path=/x", "model.model_kwargs.img_size=64", "trainer.devices=2"])
    assert cfg.model.model_kwargs == {"img_size": 64} and cfg.trainer.devices == 2
    path = cfg.save_yaml(tmp_path / "config.yaml")
    assert load_config(path) == cfg == TrainConfig.from_dict(cfg.to_dict())
    assert cfg.replace(**{"optim.lr": 0.5}).optim.lr == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.learning_rate=1", "unknown config key 'optim.learning_rate'; did you mean 'optim.lr'"),
        ("modle.name=x", "unknown config key 'modle.name'"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("model.pooling=mean", "model.pooling must be one of 'native' | 'avg' | 'gem' | 'max'; got 'mean'"),
        ("trainer.epochs=0", "trainer.epochs must be >= 1"),
        ("data.batch_size=7", "data.batch_size must be a multiple of data.m_per_class"),
        ("loss.name=nope", "loss.name: unknown loss 'nope'"),
        ("augment.mixup=0.2", "augment.mixup=0.2 / augment.cutmix=0.0: Mixup and CutMix blend labels"),
        ("model.freeze_backbone=maybe", "model.freeze_backbone must be true or false"),
        ("recipe=extreme", "recipe must be one of"),
        ("augment.scale=[0.5]", "augment.scale must be a list of 2 values"),
        ("data=3", "data must be a mapping"),
        ("model.input_size=20000", r"model.input_size must be in \[8, 2048\] pixels, got 20000"),
    ],
)
def test_bad_keys_and_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")
    ):
        load_config(overrides=[override])


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")


def test_load_config_resolves_every_auto_once() -> None:
    """The engine only reads: what "auto" stands for is in the config load_config returns (and its YAML)."""
    from frugalvision.train import resolve_config

    cfg = load_config(overrides=["loss.name=HYPERBOLIC"])
    assert (cfg.loss.name, cfg.data.sampler, cfg.data.val_split) == (
        "hyperbolic_pce",
        "m_per_class",
        "classes",
    )
    assert (cfg.model.normalization, cfg.model.embedding_size) == ("poincare", 128)
    assert cfg.trainer.precision == "auto"  # the machine's business: worked out when the run starts
    frozen = load_config(overrides=["model.freeze_backbone=true"])
    assert frozen.model.embedding_size is None and frozen.model.normalization == "l2"
    tags = load_config(overrides=["task=multilabel"])
    assert (tags.loss.name, tags.data.sampler, tags.data.val_split) == ("asl", "shuffle", "images")
    assert tags.model.normalization == "none" and tags.model.embedding_size is None
    assert resolve_config(cfg) is cfg  # resolved once: no second pass, no second validation
    built = TrainConfig()  # built in Python: resolved by fit / build_model through the same step
    assert built.data.sampler == "auto" and resolve_config(built).data.sampler == "m_per_class"
    with pytest.raises(
        ConfigError, match=r"task must be one of 'embedding' \| 'multilabel' \| 'detection'; got 'nope'"
    ):
        load_config(overrides=["task=nope"])


def test_unknown_keys_in_a_file_name_the_file(tmp_path: Path) -> None:
    from frugalvision.distill import DistillConfig

    bad = tmp_path / "train.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"train\.yaml: unknown config key 'optim\.learning_rate'; did you mean"
    ):
        load_config(bad)
    bad.write_text("tau: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"train\.yaml: unknown distillation setting 'tau'; did you mean 'temp"
    ):
        DistillConfig.from_yaml(bad)
    saved = DistillConfig(epochs=3).save_yaml(tmp_path / "d.yaml")
    assert DistillConfig.from_yaml(saved) == DistillConfig(epochs=3)


def test_config_and_recipes_do_not_import_each_other() -> None:
    """The schema (config.py) sits below the presets and transforms (recipes.py): no import circle."""
    import ast

    import frugalvision.train.config as config_module
    import frugalvision.train.recipes as recipes_module

    def imports(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    assert not (
        "frugalvision.train.recipes" in imports(config_module)
        and "frugalvision.train.config" in imports(recipes_module)
    )
