"""frugalvision: practical, small-scale computer vision that runs fast on a CPU.

The package is laid out along the flow of data::

    data -> models -> embeddings -> index / metrics -> (losses -> train) -> deploy / runtime -> serve

Each subpackage re-exports its public names, e.g. ``frugalvision.data.read_folder`` or
``frugalvision.models.create_backbone``. See ``docs/architecture.md``.

``frugalvision.load(path)`` restores a trained model bundle (imported lazily, so ``import frugalvision`` stays
free of torch).
"""

from typing import Any

from frugalvision._version import __version__

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from frugalvision.bundle import load

        return load
    raise AttributeError(f"module 'frugalvision' has no attribute {name!r}")
