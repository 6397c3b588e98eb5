"""Typed settings from YAML files and ``key=value`` overrides: the one loader behind every run configuration.

A configuration is a frozen dataclass that inherits :class:`Settings`; its sections are nested frozen dataclasses.
Keys are dotted (``optim.lr``; a flat configuration simply has no dots), values are coerced to the field's
annotation (``"3e-4"`` -> ``0.0003`` for a ``float``, ``"true"`` -> ``True``, a list -> a ``tuple``), and an
unknown key raises :class:`ConfigError` naming the key, the file it came from and the closest known key::

    cfg = MyConfig.from_dict(read_yaml("run.yaml"), source="run.yaml")
    cfg = cfg.replace(**{"optim.lr": 3e-4})     # or merge_layers(MyConfig, [(values, "where they came from")])
    cfg.save_yaml("runs/x/config.yaml")          # MyConfig.from_yaml reads it back

Why not ``jsonargparse`` (Lightning's ``LightningCLI``)? It is not a dependency, its errors are multi-line
argparse reports without a "did you mean" or the file's name, and our configurations add what it does not have (a
recipe layer below the user's values, a resolve step after them). This module is ~250 lines and torch-free.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

from frugalvision.errors import ConfigError

__all__ = [
    "ConfigError",
    "Settings",
    "coerce_value",
    "merge_layers",
    "parse_override",
    "read_yaml",
]

S = TypeVar("S", bound="Settings")


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is read as YAML (``true``, ``[1, 5]``, ``null``)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-4")
    key, _, raw = text.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot read value {raw!r} ({e})") from e
    return key, value


class Settings:
    """Base of the frozen-dataclass configurations: building from a (nested or dotted) mapping with type checks,
    dotted-key copies, YAML round trips.

    Subclasses set :attr:`_what` (the word in "unknown <what> 'x'") and :attr:`_aliases` (a leaf name users
    may try -> the leaf it means, used for suggestions only: an alias is never silently accepted).
    """

    _what: ClassVar[str] = "config key"
    _aliases: ClassVar[Mapping[str, str]] = {}

    # ------------------------------------------------------------------------------------------ the keys
    @classmethod
    def sections(cls) -> dict[str, Any]:
        """Name -> dataclass type of the nested sections."""
        return _schema(cls)[0]

    @classmethod
    def keys(cls) -> list[str]:
        """Every settable dotted key (a section's fields as ``section.field``)."""
        return list(_schema(cls)[1])

    @classmethod
    def dict_fields(cls) -> tuple[str, ...]:
        """The dotted keys of mapping-valued fields (``loss.kwargs``): keys below them are free."""
        return _schema(cls)[2]

    @classmethod
    def check_key(cls, key: Any, source: str | None = None) -> None:
        """Raise :class:`ConfigError` for a key that is not settable, with a suggestion (and ``source``)."""
        where = f"{source}: " if source else ""
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}config keys must be non-empty strings, got {key!r}")
        if key in cls.sections() or any(key == d or key.startswith(d + ".") for d in cls.dict_fields()):
            return
        known = cls.keys()
        if key not in known:
            raise ConfigError(f"{where}unknown {cls._what} {key!r}{cls._suggest(key, known)}")

    @classmethod
    def _suggest(cls, key: str, known: list[str]) -> str:
        """``"; did you mean 'optim.lr'?"``: the same leaf (or the leaf an alias means) in the same section, then
        in any section, else the closest spelling."""
        leaf = key.rsplit(".", 1)[-1]
        leaf = cls._aliases.get(leaf, leaf)
        same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
        section = key.rsplit(".", 1)[0] if "." in key else ""
        close = [k for k in same_leaf if k.startswith(section + ".")] or same_leaf
        close = close or difflib.get_close_matches(key, known, n=1)
        if close:
            return f"; did you mean {close[0]!r}?"
        return f"; known keys: {', '.join(known)}"

    # -------------------------------------------------------------------------------------- conversions
    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any], source: str | None = None) -> S:
        """Build from a nested (or dotted) mapping, filling defaults; unknown keys and bad values raise
        :class:`ConfigError` naming the key (and ``source``)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source or 'a configuration'} must be a mapping, got {type(values).__name__}")
        flat = flatten(values, cls.dict_fields())
        for key in flat:
            cls.check_key(key, source)
        return typing.cast(S, _build(cls, unflatten(flat), ""))

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists): JSON/YAML-able, and :meth:`from_dict` reads it back."""
        return typing.cast(dict[str, Any], _plain(dataclasses.asdict(self)))  # type: ignore[call-overload]

    def replace(self: S, **overrides: Any) -> S:
        """A copy with dotted-key overrides applied, e.g. ``cfg.replace(**{"optim.lr": 1e-3})``."""
        return merge_layers(type(self), [(self.to_dict(), None), (overrides, None)])

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the configuration as YAML, atomically."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        os.replace(tmp, p)
        return p

    @classmethod
    def from_yaml(cls: type[S], path: str | os.PathLike[str]) -> S:
        """Read a configuration file (e.g. a run's ``config.yaml`` written by :meth:`save_yaml`)."""
        return cls.from_dict(read_yaml(path), source=str(path))


_SCHEMAS: dict[type, tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]] = {}


def _schema(cls: type) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """``(sections, keys, dict_fields)`` of a configuration class (see :class:`Settings`), computed once."""
    if cls in _SCHEMAS:
        return _SCHEMAS[cls]
    hints = typing.get_type_hints(cls)
    sections = {
        f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])
    }
    keys, dicts = [], []
    for f in dataclasses.fields(cls):
        owners = [(f"{f.name}.", sections[f.name])] if f.name in sections else [("", None)]
        for prefix, section in owners:
            if section is None:
                keys.append(f.name)
                if get_origin(hints[f.name]) is dict:
                    dicts.append(f.name)
                continue
            section_hints = typing.get_type_hints(section)
            for g in dataclasses.fields(section):
                keys.append(prefix + g.name)
                if get_origin(section_hints[g.name]) is dict:
                    dicts.append(prefix + g.name)
    _SCHEMAS[cls] = (sections, tuple(keys), tuple(dicts))
    return _SCHEMAS[cls]


def merge_layers(cls: type[S], layers: Iterable[tuple[Mapping[str, Any], str | None]]) -> S:
    """Build ``cls`` from layers of values, later layers winning key by key; each layer is a nested or dotted
    mapping with the name of where it came from (for errors)."""
    return cls.from_dict(merged(cls, layers))


def merged(cls: type[Settings], layers: Iterable[tuple[Mapping[str, Any], str | None]]) -> dict[str, Any]:
    """The dotted keys of :func:`merge_layers`, checked layer by layer, before building."""
    out: dict[str, Any] = {}
    for values, source in layers:
        for key, value in flatten(values, cls.dict_fields()).items():
            cls.check_key(key, source)
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------ dict helpers
def flatten(d: Mapping[str, Any], dict_fields: tuple[str, ...] = (), prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; mapping-valued fields (``dict_fields``) stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in dict_fields:
            out.update(flatten(v, dict_fields, f"{key}."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`; keys below a dict field (``loss.kwargs.margin``) go into that dict."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(
                        f"{'.'.join(parts[: i + 1])} is a value, not a section; cannot set {key}"
                    )
                node[part] = child
            node = child
        last = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = dict(value) if isinstance(value, Mapping) else value
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: Any, values: Any, prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp, value, key = hints[f.name], values[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value or {}, f"{key}.")
        else:
            kwargs[f.name] = coerce_value(value, tp, key)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _number(value: Any, kind: type, key: str, what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    if isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConfigError(f"{key} must be {what}, got {value!r}")


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (numbers and booleans written as strings are accepted)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}; got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        return _number(value, int, key, "an integer")
    if tp is float:
        return _number(value, float, key, "a number")
    if tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and value:
            return value
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(coerce_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - a field type not handled above
