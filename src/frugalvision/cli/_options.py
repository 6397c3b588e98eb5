"""Option declarations shared by the commands, each written once.

The options every command that embeds images takes (``--model/--weights/--pretrained``, which
:func:`model_options` hands to the command as one :class:`ModelSettings`, ``--batch-size``, ``--workers``,
``--device``, ``--on-corrupt``, ``--progress``; :func:`run_options` hands the last four to the command as one
:class:`RunSettings`), those several commands take alike (``--data``, ``--out``, ``--format``, ``--seed``,
``--clusters``, ``--cache``, ``--json``, a near-duplicate threshold; :func:`input_option` for any option naming an
existing file or folder, :func:`out_option` for where a command writes), the ONNX Runtime ``--threads``,
and for the run commands (``train``, ``distill``): :func:`config_option`, whose options show ``[default: X]`` read
from the configuration dataclass when help is shown (so help text cannot drift from the configuration),
:func:`lightning_run_options`, :func:`holdout_options` and :func:`recipe_option`, the flags both runs take, and
:class:`LazyChoice`, a choice whose values come from a registry when a value is checked (``train --task``).

Importing this module imports neither torch nor the configurations: the command line starts fast. Showing
``train --help`` or ``distill --help`` imports the configuration's package (and with it torch).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from frugalvision._defaults import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "RECIPE_NAMES",
    "ConfigDefaultOption",
    "LazyChoice",
    "ModelSettings",
    "RunSettings",
    "batch_size_option",
    "cache_option",
    "clusters_option",
    "config_default",
    "config_option",
    "data_option",
    "device_option",
    "duplicate_threshold_option",
    "format_option",
    "holdout_options",
    "input_option",
    "json_option",
    "lightning_run_options",
    "model_option",
    "model_options",
    "on_corrupt_option",
    "out_option",
    "pretrained_option",
    "progress_option",
    "recipe_option",
    "run_options",
    "seed_option",
    "threads_option",
    "weights_option",
    "workers_option",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The augmentation presets, = ``frugalvision.train.recipes.RECIPES`` (not imported here: it imports torch).
RECIPE_NAMES = ("none", "light", "medium", "strong")

_MODEL_HELP = "timm name, offline backbone name, or open_clip:ARCH/TAG."
_WEIGHTS_HELP = "Local .safetensors/.pth weights for --model (timm key names). Wins over --pretrained."
_PRETRAINED_HELP = (
    "Load pretrained weights (hub, cache or offline package); --no-pretrained gives random weights."
)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators`` as if written above the function in this order (first on top)."""

    def wrap(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The backbone a command embeds with: what :func:`model_options` reads from the command line."""

    name: str
    weights: Path | None
    pretrained: bool

    def feature_model(self) -> Any:
        """:func:`frugalvision.foundation.create_feature_model` of these settings (a timm, offline or open_clip
        model); imports torch."""
        from frugalvision.foundation import create_feature_model

        return create_feature_model(self.name, pretrained=self.pretrained, weights=self.weights)


def model_options(
    default: str = DEFAULT_MODEL,
    *,
    model_help: str = _MODEL_HELP,
    weights_help: str = _WEIGHTS_HELP,
    pretrained_help: str = _PRETRAINED_HELP,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--model/-m``, ``--weights`` and ``--pretrained/--no-pretrained``: the backbone a command embeds with,
    given to the command as one parameter ``model`` (a :class:`ModelSettings`)."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, model: str, weights: Path | None, pretrained: bool, **kwargs: Any) -> Any:
            return f(*args, model=ModelSettings(model, weights, pretrained), **kwargs)

        return _stack(
            model_option(default, model_help),
            weights_option(weights_help),
            pretrained_option(pretrained_help),
        )(command)

    return wrap


def model_option(default: str = DEFAULT_MODEL, help: str = _MODEL_HELP) -> Callable[[F], F]:
    """``--model/-m NAME``: a backbone name (default :data:`DEFAULT_MODEL`, the offline one)."""
    return click.option("--model", "-m", default=default, help=help)


def pretrained_option(help: str = _PRETRAINED_HELP) -> Callable[[F], F]:
    """``--pretrained/--no-pretrained`` (default on)."""
    return click.option("--pretrained/--no-pretrained", default=True, help=help)


def weights_option(help: str = _WEIGHTS_HELP, name: str = "--weights") -> Callable[[F], F]:
    """``--weights FILE`` (or another ``name``, e.g. ``--teacher-weights``): local weights for a backbone name."""
    return input_option(name, help=help, kind="file")


def data_option(help: str) -> Callable[[F], F]:
    """``--data DATA``: the labelled images a command trains or evaluates on (a folder, a manifest, COCO JSON...,
    whatever :func:`frugalvision.data.open_dataset` reads); ``None`` when left out."""
    return input_option("--data", help=help)


def batch_size_option(default: int = 64, help: str = "Images per forward pass.") -> Callable[[F], F]:
    """``--batch-size/-b N`` (N >= 1)."""
    return click.option("--batch-size", "-b", default=default, type=click.IntRange(min=1), help=help)


def workers_option(
    help: str = "Data-loading processes [default: one per core, at most 8].", dest: str = "workers"
) -> Callable[[F], F]:
    """``--workers/-j N``: data-loading processes, ``None`` = one per core (at most 8); ``dest`` names the
    parameter."""
    return click.option("--workers", "-j", dest, default=None, type=click.IntRange(min=0), help=help)


def device_option(help: str = "cpu, cuda, cuda:1, or auto.") -> Callable[[F], F]:
    """``--device``: where the model runs (default cpu)."""
    return click.option("--device", default="cpu", help=help)


def progress_option(help: str = "Show a progress bar.") -> Callable[[F], F]:
    """``--progress/--no-progress`` (default on)."""
    return click.option("--progress/--no-progress", default=True, help=help)


def on_corrupt_option(
    help: str = "Unreadable images: skip them with a warning listing the files, or stop with an error.",
) -> Callable[[F], F]:
    """``--on-corrupt skip|fail``."""
    return click.option("--on-corrupt", type=click.Choice(["skip", "fail"]), default="skip", help=help)


def threads_option(
    help: str = "ONNX Runtime threads [default: one per physical core].", default: int | None = None
) -> Callable[[F], F]:
    """``--threads N``: ONNX Runtime threads, ``None`` = its own choice (said in ``help``); a number is shown as
    the default."""
    return click.option(
        "--threads", type=click.IntRange(min=1), default=default, show_default=default is not None, help=help
    )


def seed_option(help: str, default: int = 0) -> Callable[[F], F]:
    """``--seed N``: the random seed of a command that draws (k-means, samples, generated views)."""
    return click.option("--seed", type=int, default=default, help=help)


def format_option(choices: Sequence[str], help: str) -> Callable[[F], F]:
    """``--format`` (passed as ``fmt``): how to read DATA, one of ``choices`` (``auto`` first: from what DATA is),
    as :func:`frugalvision.data.open_dataset` takes it."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], help=help)


def duplicate_threshold_option(name: str, help: str) -> Callable[[F], F]:
    """A cosine similarity from which two images are near duplicates (``None``:
    :data:`frugalvision.curation.NEAR_DUPLICATE_THRESHOLD`, said in ``help``)."""
    return click.option(name, type=click.FloatRange(-1, 1, min_open=True), default=None, help=help)


def clusters_option(help: str, min: int = 1) -> Callable[[F], F]:
    """``--clusters/-k K``: k-means clusters, ``None`` = the command's rule (said in ``help``)."""
    return click.option("--clusters", "-k", type=click.IntRange(min=min), default=None, help=help)


def _path_type(kind: str, exists: bool = False) -> click.Path:
    """A ``click.Path`` (as :class:`pathlib.Path`) of a ``kind``: ``"folder"``, ``"file"`` or ``"any"``."""
    if kind not in ("folder", "file", "any"):
        raise ValueError(f"kind must be 'folder', 'file' or 'any', got {kind!r}")
    return click.Path(exists=exists, file_okay=kind != "folder", dir_okay=kind != "file", path_type=Path)


def input_option(*names: str, help: str, kind: str = "any") -> Callable[[F], F]:
    """An existing file or folder a command reads, given by an option (``names`` as ``click.option`` takes them:
    ``"--index", "index_dir"``); ``None`` when left out; ``kind`` is ``"file"``, ``"folder"`` or ``"any"``."""
    return click.option(*names, type=_path_type(kind, exists=True), default=None, help=help)


def out_option(
    help: str,
    *,
    kind: str = "folder",
    required: bool = True,
    default: str | None = None,
) -> Callable[[F], F]:
    """``--out/-o PATH``: where a command writes; ``kind`` is ``"folder"``, ``"file"`` or ``"any"``. A
    ``default`` is shown in the help; without one the option is required unless ``required=False``."""
    return click.option(
        "--out",
        "-o",
        type=_path_type(kind),
        required=required and default is None,
        default=default,
        show_default=default is not None,
        help=help,
    )


def cache_option(help: str) -> Callable[[F], F]:
    """``--cache FOLDER``: keep what a command computes over a data set (a store folder, resumable)."""
    return click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None, help=help)


def json_option(help: str = "Print JSON instead of a table.") -> Callable[[F], F]:
    """``--json``: machine-readable output, passed as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a command runs a model over a data set: what :func:`run_options` reads from the command line."""

    batch_size: int
    num_workers: int | None
    device: str
    progress: bool

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``extract_embeddings`` and its kin take:
        ``batch_size, num_workers, device, progress``."""
        return dataclasses.asdict(self)


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--batch-size/--workers/--device/--progress`` as the foundation-model commands take them, given to the
    command as one parameter ``run`` (a :class:`RunSettings`)."""

    @functools.wraps(f)
    def command(
        *args: Any, batch_size: int, workers: int | None, device: str, progress: bool, **kwargs: Any
    ) -> Any:
        return f(*args, run=RunSettings(batch_size, workers, device, progress), **kwargs)

    return _stack(
        batch_size_option(), workers_option(), device_option(), progress_option("Show progress bars.")
    )(command)


def config_default(config: str, key: str) -> Any:
    """The default of the dotted field ``key`` of the dataclass ``config`` (``"module:Class"``), e.g.
    ``config_default("frugalvision.train.config:TrainConfig", "trainer.epochs")`` -> ``10``."""
    module, _, name = config.partition(":")
    cls: Any = getattr(importlib.import_module(module), name)
    *sections, leaf = key.split(".")
    for section in sections:
        cls = _field_default(cls, section)
    value = _field_default(cls, leaf)
    return value


def _field_default(cls: Any, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ConfigDefaultOption(click.Option):
    """An option whose help ends in ``[default: X]``, X read from a configuration dataclass when help is shown.

    ``keys`` maps the option's parameter name to its dotted configuration key (a name not in it is the key
    itself). The option's own default stays ``None`` (a flag left out keeps the value of ``--config`` / the
    defaults); the configuration is imported only to print help, so the command line still starts without it.
    Declare such options with :func:`config_option`.
    """

    def __init__(
        self, *args: Any, config: str, keys: Mapping[str, str] | None = None, note: str = "", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config, self.keys, self.note = config, keys or {}, note

    @property
    def key(self) -> str:
        """The dotted configuration key whose default the help shows."""
        return self.keys.get(self.name or "", self.name or "")

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        value = config_default(self.config, self.key)
        if self.is_bool_flag and self.secondary_opts:  # shown as click shows a flag's default: its name
            shown = (self.opts if value else self.secondary_opts)[0].lstrip("-")
        else:
            shown = _shown(value)
        return record[0], f"{record[1]} [default: {shown}{self.note}]".lstrip()


def config_option(config: str, keys: Mapping[str, str] | None = None) -> Callable[..., Callable[[F], F]]:
    """``click.option`` for the flags of a run command over the configuration ``config`` (``"module:Class"``):
    default ``None`` (not given), help ending in the configuration's default (:class:`ConfigDefaultOption`)::

        option = config_option("frugalvision.train.config:TrainConfig", {"epochs": "trainer.epochs"})

        @option("--epochs", type=click.IntRange(min=1), help="Training epochs.")   # ... [default: 10]
    """

    def option(*names: str, note: str = "", **kwargs: Any) -> Callable[[F], F]:
        return click.option(
            *names, cls=ConfigDefaultOption, config=config, keys=keys, note=note, default=None, **kwargs
        )

    return option


def lightning_run_options(option: Callable[..., Callable[[F], F]]) -> Callable[[F], F]:
    """The options ``train`` and ``distill`` share: ``--epochs --seed --accelerator --devices --strategy
    --precision --resume --progress``; ``option`` is the command's :func:`config_option`."""
    return _stack(
        option("--epochs", type=click.IntRange(min=1), help="Training epochs."),
        option("--seed", type=int, help="Random seed: splits, batches, augmentation, initialisation."),
        option("--accelerator", help="cpu, gpu, or auto."),
        option(
            "--devices",
            help="Devices per node: 1, 2, ... or auto (with --strategy ddp, one process per device).",
        ),
        option("--strategy", help="Lightning strategy (auto, ddp for several GPUs or CPU processes, ...)."),
        option(
            "--precision",
            help="32-true, bf16-mixed, 16-mixed, or auto (bf16-mixed on GPUs that support it, else 32-true).",
        ),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue the run in --out from its last checkpoint (its config.yaml is reused; flags still "
            "override).",
        ),
        option("--progress/--no-progress", help="Show progress bars."),
    )


def recipe_option(option: Callable[..., Callable[[F], F]], help: str) -> Callable[[F], F]:
    """``--recipe`` of a run (``train``, ``distill``): one of :data:`RECIPE_NAMES`; ``option`` is the command's
    :func:`config_option`."""
    return option("--recipe", type=click.Choice(RECIPE_NAMES), help=help)


def holdout_options(
    option: Callable[..., Callable[[F], F]], splits: Sequence[str], split_help: str, split_note: str = ""
) -> Callable[[F], F]:
    """The held-out images of a run (``train``, ``distill``): ``--val-split`` (one of ``splits``), ``--val-fraction``
    and ``--val-data``; ``option`` is the command's :func:`config_option`."""
    return _stack(
        option("--val-split", type=click.Choice(list(splits)), help=split_help, note=split_note),
        option(
            "--val-fraction",
            type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
            help="Share of classes or images held out for validation.",
        ),
        input_option("--val-data", help="A separate validation data set (wins over --val-split)."),
    )


class LazyChoice(click.ParamType):
    """A choice among the names ``values()`` returns, called only when a value is checked or completed, so the
    registry behind it (which may import torch) is not imported when the command line starts or shows its help;
    help shows ``metavar`` (e.g. the built-in names followed by ``...``)."""

    name = "choice"

    def __init__(self, values: Callable[[], Sequence[str]], metavar: str) -> None:
        self.values = values
        self.metavar = metavar

    def _choice(self) -> click.Choice:
        return click.Choice(list(self.values()))

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self._choice().convert(value, param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return self._choice().shell_complete(ctx, param, incomplete)
