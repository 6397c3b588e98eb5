"""Fixtures of the service tests: the hand-built tiny deploy bundle of ``tests/runtime/conftest.py``."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_path = Path(__file__).resolve().parents[1] / "runtime" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_frugalvision_tiny_bundle", _path)
assert _spec is not None and _spec.loader is not None
tiny = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tiny
_spec.loader.exec_module(tiny)

make_bundle, reference, DATA_CONFIG = tiny.make_bundle, tiny.reference, tiny.DATA_CONFIG


@pytest.fixture
def photos() -> list:
    import skimage.data as data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


@contextlib.contextmanager
def live_server(app: Any, **config: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
