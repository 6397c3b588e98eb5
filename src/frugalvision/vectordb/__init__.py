"""Embeddings in a database server: PostgreSQL + pgvector (``pip install 'frugalvision[pgvector]'``).

The drivers (psycopg 3, pgvector) are imported when a connection is made, so importing this package needs neither.
"""

from frugalvision.vectordb.pgvector import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    DEFAULT_TABLE,
    WHERE_KEYS,
    PgSearchResult,
    PgVectorIndex,
    default_ef_search,
    parse_where,
    redact_dsn,
)

__all__ = [
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "DEFAULT_TABLE",
    "WHERE_KEYS",
    "PgSearchResult",
    "PgVectorIndex",
    "default_ef_search",
    "parse_where",
    "redact_dsn",
]
