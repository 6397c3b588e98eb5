"""Options choosing where ``index``, ``search`` and ``serve`` keep the vectors: a faiss folder or PostgreSQL (and
the pgvector search's ``--ef-search``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: environment variable read for ``--dsn`` (keeps a password out of the process list and shell history)
DSN_ENVVAR = "FRUGALVISION_PG_DSN"


def backend_options(f: F) -> F:
    """``--backend faiss|pgvector``, ``--dsn`` (or ``$FRUGALVISION_PG_DSN``) and ``--table``."""
    from frugalvision.vectordb import DEFAULT_TABLE

    for option in reversed(
        (
            click.option(
                "--backend",
                type=click.Choice(["faiss", "pgvector"]),
                default="faiss",
                help="faiss = an index folder on this machine; pgvector = a table in PostgreSQL with pgvector "
                "(--dsn), shared by several stores and services, filterable by metadata.",
            ),
            click.option(
                "--dsn",
                envvar=DSN_ENVVAR,
                show_envvar=True,
                default=None,
                help="With --backend pgvector: the PostgreSQL server, e.g. postgresql://user@host:5432/db. Prefer "
                "the environment variable for a password.",
            ),
            click.option(
                "--table",
                default=DEFAULT_TABLE,
                help="With --backend pgvector: the table holding the vectors.",
            ),
        )
    ):
        f = option(f)
    return f


#: ``--ef-search`` of the commands that search a pgvector table (``search``, ``serve``).
pgvector_ef_search_option = click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=None,
    help="With --backend pgvector: HNSW candidates per query (hnsw.ef_search; more = slower, higher recall) "
    "[default: 10 x k, within 40-1000: 100 for k = 10].",
)


def check_backend(backend: str, dsn: str | None) -> None:
    """``--backend pgvector`` needs ``--dsn`` (a DSN with ``--backend faiss`` is ignored: it may come from the
    environment)."""
    if backend == "pgvector" and not dsn:
        raise click.UsageError(f"--backend pgvector needs --dsn postgresql://... (or ${DSN_ENVVAR})")
