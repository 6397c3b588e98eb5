"""Embeddings in PostgreSQL with the pgvector extension: one table shared by several stores and services.

Where faiss keeps an index in a file of one machine, a database table can be filled by several jobs, filtered by
its metadata in SQL, and searched by several services at once. The table (``frugalvision_embeddings`` unless
told otherwise) has one row per image::

    id bigserial PRIMARY KEY, store text, row integer, path text, labels text[], embedding vector(D)
    UNIQUE (store, row); HNSW index on embedding; GIN index on labels; b-tree on store

and ``frugalvision_tables`` one row per such table: its ``dim``, ``metric`` (``ip``: inner product, cosine for
unit vectors, pgvector operator ``<#>`` = minus the inner product; ``l2``: operator ``<->`` = Euclidean distance)
and ``info`` (backbone, preprocessing, normalisation), which every store added to it must share.

Search is ``ORDER BY embedding <op> query LIMIT k`` on the HNSW graph (Malkov & Yashunin, "Efficient and robust
approximate nearest neighbor search using Hierarchical Navigable Small World graphs", 2016/2018), built with
``m = 16`` (pgvector's default) and ``ef_construction = 128`` (pgvector's is 64), searched with
``hnsw.ef_search = clip(10 k, 40, 1000)`` (:func:`default_ef_search`; pgvector's default is 40) unless told
otherwise: on the hard synthetic set of ``benchmarks/scale_pg.py`` these reach recall@10 >= 0.95 where pgvector's
defaults gave 0.82. A filter (``where={"label": ["cat"]}``) is a SQL ``WHERE``; with one (or a query's own path
left out, or ``k`` above ``ef_search``), pgvector 0.8's iterative index scan (``hnsw.iterative_scan =
strict_order``) keeps walking the graph until ``k`` rows pass it, in exact distance order (without it, a filter
that 10 % of the rows pass leaves about 4 of the 40 candidates; at most ``hnsw.max_scan_tuples``, 20,000 by
default, are visited). A filter few rows pass is usually answered by the planner from the labels' GIN index
with an exact sort instead. Scores follow
:class:`~frugalvision.index.EmbeddingIndex`: inner products (higher is closer) for ``ip``, squared Euclidean
distances (lower is closer) for ``l2``.

Any PostgreSQL >= 13 server with pgvector >= 0.8 works (``CREATE EXTENSION vector`` is run if it is missing,
which needs the right to create extensions). A server that does not answer is reported within
``connect_timeout`` seconds.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frugalvision._checks import check_choice
from frugalvision.errors import FrugalVisionError, StoreError

__all__ = [
    "DEFAULT_TABLE",
    "WHERE_KEYS",
    "PgSearchResult",
    "PgVectorIndex",
    "parse_where",
    "redact_dsn",
]

DEFAULT_TABLE = "frugalvision_embeddings"
META_TABLE = "frugalvision_tables"
#: ``where`` keys and the column each filters: ``label`` (any of the row's labels), ``store``, ``path``.
WHERE_KEYS = ("label", "store", "path")
#: settings every store of one table shares
SHARED_INFO = ("backbone", "data_config", "normalized")
_OPS = {"ip": ("<#>", "vector_ip_ops"), "l2": ("<->", "vector_l2_ops")}
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_COPY_ROWS = 10_000  # rows sent per COPY chunk (bounded memory whatever the store's size)
#: HNSW links per row at build (pgvector's default)
DEFAULT_M = 16
#: HNSW build candidates (pgvector's default is 64; see :func:`default_ef_search` for how 128 was chosen)
DEFAULT_EF_CONSTRUCTION = 128
#: ``hnsw.ef_search`` per requested hit, and its floor (pgvector's default 40) and ceiling (pgvector's maximum)
EF_SEARCH_PER_HIT = 10
MIN_EF_SEARCH = 40
MAX_EF_SEARCH = 1000


def default_ef_search(k: int) -> int:
    """``hnsw.ef_search`` used for ``k`` hits when none is given: ``clip(10 k, 40, 1000)`` (100 for ``k = 10``).

    Chosen with ``benchmarks/scale_pg.py`` on 200,000 x 128-d clustered synthetic vectors (200 clusters: the
    per-cluster density of the 1M set of issue 17, on which pgvector's defaults, ``ef_construction = 64`` and
    ``ef_search = 40``, gave recall@10 0.821): building with ``ef_construction = 128`` raised recall@10 at
    ``ef_search`` 40 from 0.926 to 0.979 and at 100 from 0.963 to 0.994 for a build about 1.2x as long, and
    ``ef_search`` 100 costs little per query (a query's round trip dominates). Confirmed on another distribution
    (Zipf-sized anisotropic clusters, 192-d) that was not used to choose: see ``docs/scale_cluster.md``.
    """
    return min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, EF_SEARCH_PER_HIT * int(k)))


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password (for error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn))


def parse_where(items: Sequence[str] | Mapping[str, str | Sequence[str]] | None) -> dict[str, list[str]]:
    """Normalise a filter: ``["label=cat", "label=dog", "store=a"]`` or ``{"label": ["cat", "dog"], "store": "a"}``
    -> ``{"label": ["cat", "dog"], "store": ["a"]}``. Values of one key are OR-ed, keys AND-ed.

    Raises:
        ValueError: an item without ``=``, an unknown key (the message lists :data:`WHERE_KEYS`), or no value.
    """
    out: dict[str, list[str]] = {}
    if items is None:
        return out
    pairs: list[tuple[str, str]] = []
    if isinstance(items, Mapping):
        for key, value in items.items():
            values = [value] if isinstance(value, str) else list(value)
            if not values:
                raise ValueError(f"where[{key!r}] has no value")
            pairs.extend((key, str(v)) for v in values)
    else:
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ValueError(f"a filter must look like KEY=VALUE ({', '.join(WHERE_KEYS)}), got {item!r}")
            pairs.append((key.strip(), value))
    for key, value in pairs:
        if key not in WHERE_KEYS:
            raise ValueError(f"unknown filter key {key!r}; use one of {', '.join(WHERE_KEYS)}")
        out.setdefault(key, []).append(value)
    return out


@dataclass(frozen=True)
class PgSearchResult:
    """Hits of ``Q`` queries, each carrying its metadata from the table.

    Attributes:
        scores: ``(Q, k)`` float32: inner products (``ip``, best first, ``-inf`` where no hit) or squared Euclidean
            distances (``l2``, nearest first, ``+inf`` where no hit).
        ids: ``(Q, k)`` int64: the rows' ``id`` in the table, ``-1`` where fewer than ``k`` rows matched.
        paths: ``Q`` lists of ``k`` paths (``None`` for missing hits).
        labels: ``Q`` lists of ``k`` labels joined with ``|`` like :class:`~frugalvision.index.EmbeddingIndex`.
        stores: ``Q`` lists of ``k`` store ids.
    """

    scores: np.ndarray
    ids: np.ndarray
    paths: list[list[str | None]]
    labels: list[list[str | None]]
    stores: list[list[str | None]]


def _import() -> tuple[Any, Any, Any]:
    try:
        import psycopg
        from pgvector.psycopg import register_vector
        from psycopg import sql
    except ModuleNotFoundError as e:
        raise FrugalVisionError(
            f"the pgvector backend needs the {e.name} package: pip install 'frugalvision[pgvector]'"
        ) from e
    return psycopg, sql, register_vector


def _check_ef(ef_search: object) -> None:
    if ef_search is not None and (
        isinstance(ef_search, bool) or not isinstance(ef_search, int) or ef_search < 1
    ):
        raise ValueError(f"ef_search must be an integer >= 1 or None, got {ef_search!r}")


def _check_table(table: str) -> str:
    if not isinstance(table, str) or _TABLE_NAME.fullmatch(table) is None:
        raise ValueError(
            f"table must be a plain SQL name (letters, digits, _; at most 63 characters), got {table!r}"
        )
    return table


def _connect(dsn: str, connect_timeout: float) -> Any:
    psycopg, _, register_vector = _import()
    if not connect_timeout > 0:
        raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout)))
    except (psycopg.OperationalError, psycopg.ProgrammingError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise StoreError(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {reason}") from e
    try:
        installed = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if installed is None:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
    except psycopg.Error as e:
        conn.close()
        raise StoreError(
            f"the database at {redact_dsn(dsn)} has no pgvector extension and it could not be created "
            f"({' '.join(str(e).split())}); install pgvector there (CREATE EXTENSION vector)"
        ) from e
    return conn


class PgVectorIndex:
    """A table of embeddings in PostgreSQL + pgvector, searched with its HNSW index (see the module docstring).

    Create or fill one with :meth:`add`, open an existing one with :meth:`open`. Thread-safe for searches
    (one connection, searches serialised by a lock); close with :meth:`close` or use it as a context manager.
    """

    kind = "pgvector-hnsw"
    #: each hit of :meth:`search` carries its own path and labels (``frugalvision serve`` reads them there)
    hits_carry_metadata = True

    def __init__(
        self, conn: Any, table: str, dim: int, metric: str, info: dict[str, Any], ef_search: int | None = None
    ) -> None:
        self._conn, self._table, self._dim, self._metric, self._info = conn, table, dim, metric, info
        _check_ef(ef_search)
        #: default ``hnsw.ef_search`` of :meth:`search` (``None``: :func:`default_ef_search` of ``k``)
        self.ef_search = ef_search
        self._lock = (
            threading.Lock()
        )  # one transaction at a time on the connection (services search in threads)

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        dsn: str,
        table: str = DEFAULT_TABLE,
        *,
        connect_timeout: float = 5.0,
        ef_search: int | None = None,
    ) -> PgVectorIndex:
        """Open a table filled by :meth:`add` (``frugalvision index --backend pgvector``); ``ef_search`` is the
        default of :meth:`search` (``None``: :func:`default_ef_search` of each search's ``k``).

        Raises:
            StoreError: the server does not answer within ``connect_timeout`` s, or has no such table.
        """
        _check_table(table)
        _check_ef(ef_search)
        conn = _connect(dsn, connect_timeout)
        meta = _read_meta(conn, table)
        if meta is None:
            conn.close()
            raise StoreError(
                f"no frugalvision table {table!r} in {redact_dsn(dsn)}; fill it with "
                f"`frugalvision index STORE --backend pgvector --dsn ... --table {table}`"
            )
        dim = _column_dim(conn, table)
        if dim is not None and dim != meta["dim"]:
            conn.close()
            raise StoreError(f"table {table!r} holds {dim}-d vectors but {META_TABLE} says {meta['dim']}")
        return cls(conn, table, int(meta["dim"]), str(meta["metric"]), dict(meta["info"]), ef_search)

    @classmethod
    def add(
        cls,
        dsn: str,
        vectors: np.ndarray,
        paths: Sequence[str],
        labels: Sequence[Sequence[str]],
        *,
        store_id: str,
        table: str = DEFAULT_TABLE,
        metric: str = "ip",
        info: Mapping[str, Any] | None = None,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        build_memory: str | None = None,
        connect_timeout: float = 5.0,
    ) -> PgVectorIndex:
        """Put a store's vectors into ``table`` (created with its HNSW index if missing) under ``store_id``.

        Rows already held under ``store_id`` are replaced, in one transaction: a failed load leaves the table as
        it was, and other stores' rows and the services searching them are not disturbed.

        Args:
            vectors: ``(N, D)`` float32.
            paths, labels: ``N`` paths and label tuples.
            store_id: name of this store in the table (``store`` column, filter ``store=...``).
            metric: ``"ip"`` or ``"l2"``; must match the table's.
            info: backbone / preprocessing record (``backbone``, ``data_config``, ``normalized``); every store of
                one table must share it.
            m, ef_construction: HNSW graph parameters, used when the table is created (:data:`DEFAULT_M` = 16,
                :data:`DEFAULT_EF_CONSTRUCTION` = 128; a table created by an earlier version keeps its graph).
            build_memory: ``maintenance_work_mem`` for building the HNSW index (e.g. ``"2GB"``: a graph that fits
                builds much faster); ``None``: the server's setting.
            connect_timeout: seconds to wait for the server.

        Raises:
            StoreError: server unreachable; table of another dimension, metric or model; bad rows.
        """
        check_choice(metric, tuple(_OPS), "metric")
        _check_table(table)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise StoreError(f"vectors must be a non-empty 2-D (N, D) array, got shape {x.shape}")
        if not (len(paths) == len(labels) == x.shape[0]):
            raise StoreError(f"{x.shape[0]} vectors but {len(paths)} paths and {len(labels)} label rows")
        if not np.isfinite(x).all():
            raise StoreError("vectors hold NaN or infinite values")
        if not store_id:
            raise ValueError("store_id must be a non-empty string")
        shared = json.loads(json.dumps({k: (info or {}).get(k) for k in SHARED_INFO}))
        dim = int(x.shape[1])
        psycopg, sql, _ = _import()
        conn = _connect(dsn, connect_timeout)
        t = sql.Identifier(table)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"frugalvision:{table}",))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, dim integer NOT NULL, "
                        "metric text NOT NULL, info jsonb NOT NULL)"
                    ).format(sql.Identifier(META_TABLE))
                )
                meta = _read_meta(conn, table)
                found_dim = _column_dim(conn, table)
                if found_dim is not None and found_dim != dim:
                    raise StoreError(
                        f"table {table!r} holds {found_dim}-d vectors but the store has {dim}-d ones; "
                        "use another --table for this model"
                    )
                if meta is None and found_dim is not None:
                    raise StoreError(
                        f"table {table!r} exists but was not made by frugalvision (no row in {META_TABLE}); "
                        "use another --table"
                    )
                if meta is None:
                    op_class = _OPS[metric][1]
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE {} (id bigserial PRIMARY KEY, store text NOT NULL, row integer NOT NULL, "
                            "path text NOT NULL, labels text[] NOT NULL, embedding vector({}) NOT NULL, "
                            "UNIQUE (store, row))"
                        ).format(t, sql.Literal(dim))
                    )
                    conn.execute(
                        sql.SQL("INSERT INTO {} (name, dim, metric, info) VALUES (%s, %s, %s, %s)").format(
                            sql.Identifier(META_TABLE)
                        ),
                        (table, dim, metric, json.dumps(shared)),
                    )
                    meta = {"dim": dim, "metric": metric, "info": shared}
                else:
                    if meta["metric"] != metric:
                        raise StoreError(
                            f"table {table!r} is searched by {meta['metric']} but this store asks for {metric}"
                        )
                    for key in SHARED_INFO:
                        if meta["info"].get(key) != shared.get(key):
                            raise StoreError(
                                f"table {table!r} holds embeddings made with other settings ({key}: "
                                f"{meta['info'].get(key)} vs this store's {shared.get(key)}); use another --table"
                            )
                    op_class = _OPS[meta["metric"]][1]
                conn.execute(sql.SQL("DELETE FROM {} WHERE store = %s").format(t), (store_id,))
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        sql.SQL(
                            "COPY {} (store, row, path, labels, embedding) FROM STDIN WITH (FORMAT BINARY)"
                        ).format(t)
                    ) as copy,
                ):
                    copy.set_types(["text", "int4", "text", "text[]", "vector"])
                    for start in range(0, x.shape[0], _COPY_ROWS):
                        for row in range(start, min(start + _COPY_ROWS, x.shape[0])):
                            copy.write_row(
                                (store_id, row, str(paths[row]), [str(v) for v in labels[row]], x[row])
                            )
                if build_memory is not None:
                    conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (build_memory,))
                conn.execute(
                    sql.SQL(
                        "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})"
                    ).format(
                        sql.Identifier(f"{table}_hnsw"),
                        t,
                        sql.SQL(op_class),
                        sql.Literal(int(m)),
                        sql.Literal(int(ef_construction)),
                    )
                )
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (labels)").format(
                        sql.Identifier(f"{table}_labels"), t
                    )
                )
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (store)").format(
                        sql.Identifier(f"{table}_store"), t
                    )
                )
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"cannot write table {table!r}: {' '.join(str(e).split())}") from e
        except BaseException:
            conn.close()
            raise
        conn.execute(sql.SQL("ANALYZE {}").format(t))
        return cls(conn, table, dim, str(meta["metric"]), dict(meta["info"]))

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def table(self) -> str:
        return self._table

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    @property
    def paths(self) -> None:
        """``None``: the paths stay in the database (each hit carries its own, see :class:`PgSearchResult`)."""
        return None

    @property
    def labels(self) -> None:
        return None

    def __len__(self) -> int:
        _, sql, _ = _import()
        row = self._conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self._table))
        ).fetchone()
        return int(row[0])

    def stores(self) -> dict[str, int]:
        """Rows per store id."""
        _, sql, _ = _import()
        rows = self._conn.execute(
            sql.SQL("SELECT store, count(*) FROM {} GROUP BY store ORDER BY store").format(
                sql.Identifier(self._table)
            )
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def sizes(self) -> dict[str, int]:
        """Bytes on the server: ``total`` (table, its HNSW and other indexes, TOAST), ``table``, ``hnsw``."""
        row = self._conn.execute(
            "SELECT pg_total_relation_size(to_regclass(%s)), pg_relation_size(to_regclass(%s)), "
            "coalesce(pg_relation_size(to_regclass(%s)), 0)",
            (_quoted(self._table), _quoted(self._table), _quoted(f"{self._table}_hnsw")),
        ).fetchone()
        return {"total": int(row[0]), "table": int(row[1]), "hnsw": int(row[2])}

    def __repr__(self) -> str:
        return f"PgVectorIndex(table={self._table!r}, dim={self._dim}, metric={self._metric!r})"

    # -- search -------------------------------------------------------------------------------------------
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        where: Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
        exclude_paths: Sequence[str | None] | None = None,
        ef_search: int | None = None,
    ) -> PgSearchResult:
        """The ``k`` nearest rows of each query that pass ``where``.

        Args:
            vectors: ``(Q, D)`` queries, preprocessed like the indexed vectors.
            k: hits per query (``>= 1``).
            where: metadata filter (:func:`parse_where`): ``{"label": "cat"}``, ``["store=a", "label=dog"]``.
            exclude_paths: ``Q`` paths (or ``None``), each left out of its query's hits (the query itself).
            ef_search: HNSW candidate list size (``hnsw.ef_search``; at least ``k`` and at most 1000, pgvector's
                limit, are used); larger is slower and more exact. ``None``: :attr:`ef_search` of this object,
                else :func:`default_ef_search` of ``k`` (100 for ``k = 10``).

        Returns:
            :class:`PgSearchResult`.
        """
        psycopg, sql, _ = _import()
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise ValueError(
                f"vectors must be (Q, {self._dim}) for table {self._table!r}, got shape {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError("vectors hold NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if exclude_paths is not None and len(exclude_paths) != x.shape[0]:
            raise ValueError(f"exclude_paths has {len(exclude_paths)} entries for {x.shape[0]} queries")
        filters = parse_where(where)
        ef_search = self.ef_search if ef_search is None else ef_search
        _check_ef(ef_search)
        ef = default_ef_search(k) if ef_search is None else min(MAX_EF_SEARCH, max(int(k), int(ef_search)))
        op = sql.SQL(_OPS[self._metric][0])
        conds: list[Any] = []
        params: dict[str, Any] = {"k": int(k)}
        for key, values in filters.items():
            params[key] = values
            column = {"label": "labels && %(label)s::text[]", "store": "store = ANY(%(store)s)"}
            conds.append(sql.SQL(column.get(key, "path = ANY(%(path)s)")))
        conds.append(sql.SQL("(%(self)s::text IS NULL OR path <> %(self)s::text)"))
        query = sql.SQL(
            "SELECT id, path, labels, store, embedding {op} %(q)s AS d FROM {t} WHERE {conds} "
            "ORDER BY embedding {op} %(q)s LIMIT %(k)s"
        ).format(op=op, t=sql.Identifier(self._table), conds=sql.SQL(" AND ").join(conds))
        q_count = x.shape[0]
        worst = -np.inf if self._metric == "ip" else np.inf
        scores = np.full((q_count, k), worst, dtype=np.float32)
        ids = np.full((q_count, k), -1, dtype=np.int64)
        paths: list[list[str | None]] = [[None] * k for _ in range(q_count)]
        labels: list[list[str | None]] = [[None] * k for _ in range(q_count)]
        stores: list[list[str | None]] = [[None] * k for _ in range(q_count)]
        try:
            with self._lock, self._conn.transaction():
                self._conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
                if filters or exclude_paths is not None or k > ef:  # rows the graph's candidates may not fill
                    self._conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
                with self._conn.cursor() as cur:
                    for qi in range(q_count):
                        own = exclude_paths[qi] if exclude_paths is not None else None
                        cur.execute(query, {**params, "q": x[qi], "self": None if own is None else str(own)})
                        for r, (row_id, path, labs, store, d) in enumerate(cur.fetchall()):
                            ids[qi, r], paths[qi][r], stores[qi][r] = int(row_id), str(path), str(store)
                            labels[qi][r] = "|".join(labs)
                            scores[qi, r] = -float(d) if self._metric == "ip" else float(d) ** 2
        except psycopg.Error as e:
            raise StoreError(f"search in table {self._table!r} failed: {' '.join(str(e).split())}") from e
        return PgSearchResult(scores=scores, ids=ids, paths=paths, labels=labels, stores=stores)

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgVectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quoted(name: str) -> str:
    """``name`` as a quoted SQL identifier for ``to_regclass`` (which folds an unquoted name to lower case, while
    the tables are created quoted: ``Photos`` and ``photos`` are two tables). Names are checked by
    :func:`_check_table` (letters, digits, ``_``), so they hold no quote; the index names add a suffix."""
    return f'"{name}"'


def _read_meta(conn: Any, table: str) -> dict[str, Any] | None:
    _, sql, _ = _import()
    exists = conn.execute("SELECT to_regclass(%s)", (META_TABLE,)).fetchone()[0]
    if exists is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT dim, metric, info FROM {} WHERE name = %s").format(sql.Identifier(META_TABLE)),
        (table,),
    ).fetchone()
    if row is None:
        return None
    info = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    return {"dim": int(row[0]), "metric": str(row[1]), "info": info}


def _column_dim(conn: Any, table: str) -> int | None:
    """Dimension of ``table.embedding`` from the catalog (``vector(D)`` keeps D as its type modifier)."""
    exists = conn.execute("SELECT to_regclass(%s)", (_quoted(table),)).fetchone()[0]
    if exists is None:
        return None
    row = conn.execute(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
        (_quoted(table),),
    ).fetchone()
    if row is None:
        raise StoreError(f"table {table!r} has no embedding column; use another --table")
    return int(row[0])
