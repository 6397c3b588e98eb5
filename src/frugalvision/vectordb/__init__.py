"""Embeddings in a database server: PostgreSQL + pgvector (``pip install 'frugalvision[pgvector]'``).

The drivers (psycopg 3, pgvector) are imported when a connection is made, so importing this package needs neither.
"""

from frugalvision.vectordb.pgvector import (
    DEFAULT_TABLE,
    WHERE_KEYS,
    PgSearchResult,
    PgVectorIndex,
    parse_where,
    redact_dsn,
)

__all__ = ["DEFAULT_TABLE", "WHERE_KEYS", "PgSearchResult", "PgVectorIndex", "parse_where", "redact_dsn"]
