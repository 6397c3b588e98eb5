"""The HTTP service (FastAPI) over the torch-free runtime: ``/embed``, ``/predict``, ``/search``, ``/health``, ``/info``.

Start it with ``frugalvision serve DEPLOY_DIR`` or build the app in Python::

    from frugalvision.runtime import Predictor
    from frugalvision.serve import create_app
    app = create_app(Predictor("model-onnx/", threads=2), max_batch=32)

The library never imports this package; it imports :mod:`frugalvision.runtime` only (and the index for
``/search``).
"""

from frugalvision.serve._batching import BatcherFullError, BatchStats, MicroBatcher
from frugalvision.serve.app import (
    BodyLimitMiddleware,
    ServeLimits,
    check_index_matches,
    create_app,
    load_index,
)

__all__ = [
    "BatchStats",
    "BatcherFullError",
    "BodyLimitMiddleware",
    "MicroBatcher",
    "ServeLimits",
    "check_index_matches",
    "create_app",
    "load_index",
]
