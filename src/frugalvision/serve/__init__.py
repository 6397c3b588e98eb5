"""The HTTP service (FastAPI) over the torch-free runtime: ``/embed``, ``/predict``, ``/search``, ``/health``, ``/info``.

Start it with ``frugalvision serve DEPLOY_DIR`` or build the app in Python::

    from frugalvision.runtime import Predictor
    from frugalvision.serve import create_app
    app = create_app(Predictor("model-onnx/", threads=2), max_batch=32)

The library never imports this package; it imports :mod:`frugalvision.runtime` only (and the index for
``/search``).
"""

from frugalvision.serve._batching import Admission, BatcherFullError, BatchStats, MicroBatcher
from frugalvision.serve.app import (
    LOCAL_HOSTS,
    PATH_MODES,
    BodyLimitMiddleware,
    GuardMiddleware,
    InternalErrorMiddleware,
    ServeLimits,
    check_index_matches,
    create_app,
    display_paths,
    load_index,
)

__all__ = [
    "LOCAL_HOSTS",
    "PATH_MODES",
    "Admission",
    "BatchStats",
    "BatcherFullError",
    "BodyLimitMiddleware",
    "GuardMiddleware",
    "InternalErrorMiddleware",
    "MicroBatcher",
    "ServeLimits",
    "check_index_matches",
    "create_app",
    "display_paths",
    "load_index",
]
