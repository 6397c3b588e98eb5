"""Checks of the JSON records the toolkit reads back from disk: types, ranges and file names, field by field.

Used by the model bundle (``config.json``, :mod:`frugalvision.bundle`) and the deploy bundle (``deploy.json``,
:mod:`frugalvision.runtime.config`); torch-free, so the runtime can import it. Every check raises
:class:`~frugalvision.errors.StoreError` naming the file and the dotted field::

    runs/x/model/config.json: field 'data_config.crop_pct' must be a number in (0.3, 1.5], got 0.01

The bounds on preprocessing keep every intermediate image bounded whatever a file says: the resize step makes
the short side ``floor(side / crop_pct) <= MAX_INPUT_SIDE / CROP_PCT_MIN`` pixels (6826 at most), and the
network input is at most ``MAX_INPUT_SIDE``² pixels per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from frugalvision.errors import StoreError

__all__ = [
    "CROP_MODES",
    "CROP_PCT_MAX",
    "CROP_PCT_MIN",
    "INTERPOLATIONS",
    "MAX_INPUT_SIDE",
    "check_choice_field",
    "check_data_config",
    "check_file_inside",
    "check_int_field",
    "check_mapping_field",
    "check_number_field",
    "check_relative_file",
    "check_str_list_field",
    "field_error",
]

#: Largest height or width of a model input, in pixels (timm's largest pretrained inputs are 1024).
MAX_INPUT_SIDE = 2048
#: ``crop_pct`` must lie in ``(CROP_PCT_MIN, CROP_PCT_MAX]``: timm's pretrained configs use 0.875 to 1.0, and 1.15
#: for three VOLO models (a value over 1 resizes below the input size and pads).
CROP_PCT_MIN, CROP_PCT_MAX = 0.3, 1.5
#: timm's evaluation interpolation names (torchvision's ``pil_modes_mapping``).
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: timm's ``crop_mode`` values.
CROP_MODES: tuple[str, ...] = ("center", "squash", "border")


def field_error(where: str, field: str, expected: str, got: Any) -> StoreError:
    """``StoreError("<where>: field '<field>' must be <expected>, got <got!r>")`` (long values shortened)."""
    text = repr(got)
    if len(text) > 80:
        text = text[:77] + "..."
    return StoreError(f"{where}: field {field!r} must be {expected}, got {text}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int_field(
    value: Any, where: str, field: str, *, low: int | None = None, high: int | None = None
) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``."""
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise field_error(
            where, field, "an integer" + (bounds if low is not None or high is not None else ""), value
        )
    return int(value)


def check_number_field(
    value: Any,
    where: str,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if low is None and high is None:
            expected = "a finite number"
        else:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            expected = f"a number in {'(' if low_open or low is None else '['}{lo}, {hi}{']' if high is not None else ')'}"
        raise field_error(where, field, expected, value)
    return float(value)


def check_choice_field(value: Any, choices: Sequence[str], where: str, field: str) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise field_error(where, field, "one of " + ", ".join(map(repr, choices)), value)
    return value


def check_str_list_field(value: Any, where: str, field: str) -> list[str]:
    """``value`` if it is a JSON list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise field_error(where, field, "a list of strings", value)
    return value


def check_mapping_field(value: Any, where: str, field: str, *, optional: bool = False) -> Mapping[str, Any]:
    """``value`` if it is a JSON object (``None`` too with ``optional``, returned as ``{}``)."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise field_error(where, field, "an object" + (" or null" if optional else ""), value)
    return value


def check_data_config(data_config: Any, where: str, field: str = "data_config") -> dict[str, Any]:
    """Check timm's preprocessing record; return it with lists as tuples.

    Fields: ``input_size`` ``(3, H, W)`` with ``1 <= H, W <= MAX_INPUT_SIDE``; ``interpolation`` in
    :data:`INTERPOLATIONS`; ``mean``, ``std`` three numbers (``std > 0``); ``crop_pct`` in
    ``(CROP_PCT_MIN, CROP_PCT_MAX]`` or missing/null (timm's default 0.875); ``crop_mode`` in :data:`CROP_MODES`
    or missing/null; ``crop_border_pixels`` an int in ``[0, MAX_INPUT_SIDE]`` or missing/null.
    """
    config = check_mapping_field(data_config, where, field)
    size = config.get("input_size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 3
        or size[0] != 3
        or not all(_is_int(s) and 1 <= s <= MAX_INPUT_SIDE for s in size)
    ):
        raise field_error(
            where, f"{field}.input_size", f"[3, H, W] with 1 <= H, W <= {MAX_INPUT_SIDE} pixels", size
        )
    if "interpolation" in config:
        check_choice_field(config["interpolation"], INTERPOLATIONS, where, f"{field}.interpolation")
    for key in ("mean", "std"):
        values = config.get(key)
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 3
            or not all(_is_number(v) and (key == "mean" or v > 0) for v in values)
        ):
            expected = "3 finite numbers" + (" > 0" if key == "std" else "") + " (one per RGB channel)"
            raise field_error(where, f"{field}.{key}", expected, values)
    if config.get("crop_pct") is not None:
        check_number_field(
            config["crop_pct"], where, f"{field}.crop_pct", low=CROP_PCT_MIN, high=CROP_PCT_MAX, low_open=True
        )
    if config.get("crop_mode") is not None:
        check_choice_field(config["crop_mode"], CROP_MODES, where, f"{field}.crop_mode")
    if config.get("crop_border_pixels") is not None:
        check_int_field(
            config["crop_border_pixels"], where, f"{field}.crop_border_pixels", low=0, high=MAX_INPUT_SIDE
        )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def check_relative_file(name: Any, where: str, field: str) -> str:
    """``name`` if it is a plain relative file name inside its folder: no absolute path, drive or ``..`` part."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise field_error(where, field, "a file name relative to the bundle folder", name)
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            raise field_error(
                where, field, "a file inside the bundle folder (no absolute path, no '..')", name
            )
    return name


def check_file_inside(folder: Path, name: str, where: str, field: str) -> Path:
    """``folder / name`` resolved, if it stays inside ``folder`` once symbolic links are followed."""
    root = folder.resolve()
    path = (root / check_relative_file(name, where, field)).resolve()
    if not path.is_relative_to(root):
        raise field_error(where, field, f"a file inside the bundle folder {root} (links included)", name)
    return path
