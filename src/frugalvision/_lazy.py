"""Lazy package attributes (PEP 562): a package lists where each public name lives, and a name's module is
imported on first use, so importing the package -- or a light module of it, such as a torch-free config -- does
not import every heavy module beside it. And :func:`optional_import`: an optional dependency imported where it is
used, with the install advice when it is missing."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``modules`` maps each public name to the module defining it."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            value = getattr(importlib.import_module(modules[name]), name)
            setattr(sys.modules[package], name, value)  # found once; later look-ups are plain attributes
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(modules))

    return __getattr__, __dir__


def optional_import(module: str, advice: str, error: type[Exception] = ImportError) -> Any:
    """``importlib.import_module(module)``, or ``error(advice)`` (raised from the ``ImportError``) when the optional
    package is not installed; ``advice`` says what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise error(advice) from e
