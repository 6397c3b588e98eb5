"""frugalvision: practical, small-scale computer vision that runs fast on a CPU.

The package is laid out along the flow of data::

    data -> models -> embeddings -> index / metrics -> (losses -> train) -> deploy / runtime -> serve

Each subpackage re-exports its public names, e.g. ``frugalvision.data.read_folder`` or
``frugalvision.models.create_backbone``. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
