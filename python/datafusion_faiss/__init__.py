"""Search FAISS IVF indexes kept next to Parquet tables, from datafusion-python.

``register(ctx)`` adds the extension to a datafusion-python ``SessionContext``: the
distance functions, ``faiss_search``, ``STORED AS FAISS`` and the query planner whose
index scans answer ``ORDER BY vec_distance(...) LIMIT k`` and batch k-NN joins.
``context()`` makes a context with the ``faiss.*`` settings as well. ``open_table``
gives a search API for code that does not write SQL; it runs the same SQL.
"""

from __future__ import annotations

import itertools
from array import array
from typing import Any, Sequence

import datafusion
import pyarrow as pa
from datafusion import SessionConfig, SessionContext

from . import _internal

__all__ = ["build", "context", "register", "register_store", "settings", "open_table", "VectorTable", "Query"]

_host_major = int(datafusion.__version__.split(".")[0])
if _host_major != _internal.DATAFUSION_MAJOR:
    raise ImportError(
        f"datafusion_faiss was built for datafusion {_internal.DATAFUSION_MAJOR}.x, "
        f"but datafusion {datafusion.__version__} is installed; their FFI does not match "
        f"across major versions (pip install 'datafusion=={_internal.DATAFUSION_MAJOR}.*')"
    )


def settings(config: SessionConfig | None = None) -> SessionConfig:
    """``config`` (or a new one) with the ``faiss.*`` settings, so ``SET faiss.nprobe``
    works. datafusion-python takes settings of another library only before the context
    is made."""
    return (config or SessionConfig()).with_extension(_internal.Settings())


class _Extension:
    """The codecs and the query planner, as one bundle for ``with_extensions``: the host
    encodes what its own codecs cannot (vector tables) with ours, and the planner, which
    plans every query itself, hands its plans back through them."""

    def __datafusion_session_components__(self, ctx: SessionContext) -> Any:
        from datafusion.extensions import SessionExtensionComponents

        codecs = _internal.Codecs()
        return SessionExtensionComponents(logical_extension_codecs=(codecs,), physical_extension_codecs=(codecs,))

    def __datafusion_session_planner__(self, ctx: SessionContext, fallback: Any) -> Any:
        return _internal.QueryPlanner()


def register(ctx: SessionContext) -> SessionContext:
    """Registers the extension on ``ctx``'s session and returns the context to use: the
    distance functions, ``faiss_search``, ``STORED AS FAISS``, and the codecs and query
    planner (which replaces one the session had)."""
    ctx = ctx.with_extensions(_Extension())
    for function in _internal.functions():
        ctx.register_udf(datafusion.udf(function))
    ctx.register_udtf(datafusion.udtf(_internal.SearchFunction(), "faiss_search"))
    ctx.register_table_factory("FAISS", _internal.TableFactory())
    return ctx


def register_store(url: str, **options: str) -> None:
    """Serves ``url``'s scheme and bucket with a store made from ``options``
    (``aws_endpoint``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``,
    ``aws_allow_http``, ...) instead of the ``AWS_*`` variables. Every context of the
    process reads that bucket through it."""
    _internal.register_store(url, {k: str(v) for k, v in options.items()})


def build(
    output: str,
    input: str | None = None,
    *,
    query: str | None = None,
    tables: dict[str, str] | None = None,
    key: str = "id",
    positions: bool = False,
    vector: str = "embedding",
    factory: str = "IVF1024,Flat",
    metric: str = "l2",
    train_size: int | None = None,
    seed: int = 1,
    per_file: bool = False,
    update: bool = False,
) -> None:
    """Trains and fills an index of ``input`` (a Parquet file or folder) or of ``query``'s
    rows and writes it to ``output`` (a path or any store's URL), as ``datafusion-faiss
    build`` does with the same options: ``positions`` numbers vectors by row as
    ``index.add`` does, ``per_file`` writes one index per file of a folder, ``update``
    a delta of the files the index does not cover. Progress goes to stderr; the GIL is
    released while FAISS trains and adds, and Ctrl-C stops the build."""
    argv = ["--output", output, "--vector", vector, "--metric", metric, "--seed", str(seed)]
    if input is not None:
        argv += ["--input", input]
    if query is not None:
        argv += ["--query", query]
    for name, url in (tables or {}).items():
        argv += ["--table", f"{name}={url}"]
    argv += ["--positions"] if positions else ["--key", key]
    if not update:
        argv += ["--factory", factory]
        if train_size is not None:
            argv += ["--train-size", str(train_size)]
    if per_file:
        argv.append("--per-file")
    if update:
        argv.append("--update")
    _internal.build(argv)


def context(config: SessionConfig | None = None, runtime: Any = None) -> SessionContext:
    """A new ``SessionContext`` with the ``faiss.*`` settings and the extension. Without
    ``config``, information_schema is on, as in datafusion-python's own default, so
    ``SHOW faiss.nprobe`` works."""
    return register(SessionContext(settings(config or SessionConfig().with_information_schema(True)), runtime))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_names = itertools.count()


class VectorTable:
    """A Parquet table and its FAISS index, searched by ``search``.

    Searches plan and run in a session of this library, not through datafusion-python
    (whose FFI costs milliseconds a query); their ``where`` may use DataFusion's functions
    and this library's, not UDFs registered on a context. ``ctx`` (a datafusion-python
    context, made on first use when not given) has the same table under ``name`` for SQL,
    reading the same open index. ``nprobe`` and ``refine_factor`` are the table's defaults
    for its searches; a context's ``SET faiss.*`` is that context's."""

    def __init__(
        self,
        data: str,
        index: str,
        *,
        vector: str,
        key: str | None = None,
        normalized: bool = False,
        ctx: SessionContext | None = None,
        name: str | None = None,
        nprobe: int | None = None,
        refine_factor: int | None = None,
    ) -> None:
        self.name = name or f"faiss_table_{next(_names)}"
        self.vector = vector
        self.key = key
        self.settings = {k: str(int(v)) for k, v in (("nprobe", nprobe), ("refine_factor", refine_factor)) if v is not None}
        self._engine = _internal.Engine()
        options = {"index": index, "vector": vector, "normalized": str(normalized).lower()}
        if key:
            options["key"] = key
        listed = ", ".join(f"{_literal(k)} {_literal(v)}" for k, v in options.items())
        self._engine.sql(
            f"CREATE EXTERNAL TABLE {_quote(self.name)} STORED AS FAISS "
            f"LOCATION {_literal(data)} OPTIONS ({listed})"
        )
        self.schema: pa.Schema = self._sql(f"SELECT * FROM {_quote(self.name)} LIMIT 0").schema
        # After CREATE, which opened the index: its header is not read again.
        self.metric, self.dimension, self.nlist, self.ntotal, self.description = _internal.index_info(index)
        self._ctx = None
        if ctx is not None:
            self._lend(ctx)

    def _sql(self, sql: str, settings: dict[str, str] | None = None, tables: dict[str, Any] | None = None) -> pa.Table:
        return pa.table(self._engine.sql(sql, settings, tables))

    def _lend(self, ctx: SessionContext) -> None:
        ctx.register_table(self.name, self._engine.table(self.name))
        self._ctx = ctx

    @property
    def ctx(self) -> SessionContext:
        """The datafusion-python context holding this table under ``name``."""
        if self._ctx is None:
            self._lend(context())
        return self._ctx

    def search(self, query: Any) -> "Query":
        """The nearest rows to ``query``: one vector (a NumPy array or a list) or a 2-D
        array of them, searched as one batch."""
        return Query(self, query)

    def __repr__(self) -> str:
        return f"VectorTable({self.name}: {self.description}, {self.ntotal} vectors, {self.metric})"


def open_table(data: str, index: str, **options: Any) -> VectorTable:
    """``VectorTable(data, index, vector=..., key=..., normalized=..., ctx=...)``."""
    return VectorTable(data, index, **options)


def _vectors(query: Any, dimension: int, name: str) -> tuple[Any, int, bool]:
    """The query's values, all its vectors one after another, as a buffer of float64 (one
    vector: its literal is written from them) or of float32 (a batch: the column of the
    queries' table, so a C-ordered float32 array is used as it is); how many vectors; and
    whether it was a batch (2-D)."""
    if hasattr(query, "ndim") and hasattr(query, "astype"):
        if query.ndim not in (1, 2):
            raise ValueError(f"a query is one vector or a 2-D array of them, got {query.ndim} dimensions")
        if query.shape[-1] != dimension:
            raise ValueError(f"the query has {query.shape[-1]} dimensions, the index of {name} has {dimension}")
        batch = query.ndim == 2
        values = query.astype("f4" if batch else "f8", order="C", copy=False)
        return values, (len(query) if batch else 1), batch
    query = list(query)
    batch = bool(query) and (isinstance(query[0], (list, tuple)) or getattr(query[0], "ndim", 0) == 1)
    rows = query if batch else [query]
    values = array("f" if batch else "d")
    for i, row in enumerate(rows):
        try:
            row = array(values.typecode, row)
        except TypeError as e:
            raise ValueError(f"a query's values must be numbers: {e}") from None
        if len(row) != dimension:
            raise ValueError(f"query {i} has {len(row)} dimensions, the index of {name} has {dimension}")
        values.extend(row)
    return values, len(rows), batch


class Query:
    """A search, built as in LanceDB: ``where``, ``select``, ``nprobe``,
    ``refine_factor``, ``limit``, then ``to_arrow`` or ``to_pandas``."""

    def __init__(self, table: VectorTable, query: Any) -> None:
        self._table = table
        self._values, self._count, self._batch = _vectors(query, table.dimension, table.name)
        self._where: list[str] = []
        self._select: list[str] | None = None
        self._limit = 10
        self._settings: dict[str, int] = {}
        self._distance = table.metric
        # A batch's queries are a table of the context while the search runs.
        self._queries = f"{table.name}_queries_{next(_names)}"

    def where(self, predicate: str) -> "Query":
        self._where.append(predicate)
        return self

    def select(self, columns: Sequence[str]) -> "Query":
        self._select = list(columns)
        return self

    def limit(self, k: int) -> "Query":
        if int(k) < 1:
            raise ValueError(f"limit must be at least 1, got {k}")
        self._limit = int(k)
        return self

    def nprobe(self, n: int) -> "Query":
        self._settings["nprobe"] = int(n)
        return self

    def refine_factor(self, n: int) -> "Query":
        self._settings["refine_factor"] = int(n)
        return self

    def distance_type(self, kind: str) -> "Query":
        """``l2`` (Euclidean, ``vec_distance``), ``dot`` (``inner_product``, largest
        first) or ``cosine`` (``cosine_distance``, for a ``normalized`` table)."""
        kinds = {"l2": "l2", "dot": "inner_product", "inner_product": "inner_product", "cosine": "cosine"}
        if kind not in kinds:
            raise ValueError(f"distance_type must be one of {sorted(kinds)}, got {kind!r}")
        self._distance = kinds[kind]
        return self

    def _order(self, column: str, query: str) -> tuple[str, str]:
        function, direction = {
            "l2": ("vec_distance", "ASC"),
            "inner_product": ("inner_product", "DESC NULLS LAST"),
            "cosine": ("cosine_distance", "ASC"),
        }[self._distance]
        return f"{function}({column}, {query})", direction

    def to_sql(self) -> str:
        """The SQL this search runs."""
        t = self._table
        columns = self._select if self._select is not None else [f.name for f in t.schema]
        where = " AND ".join(f"({w})" for w in self._where)
        tie = f", d.{_quote(t.key)}" if t.key else ""
        if not self._batch:
            query = _internal.vector_literal(self._values.tobytes())
            distance, direction = self._order(f"d.{_quote(t.vector)}", query)
            listed = "".join(f"d.{_quote(c)}, " for c in columns)
            return (
                f"SELECT {listed}{distance} AS _distance FROM {_quote(t.name)} d"
                + (f" WHERE {where}" if where else "")
                + f" ORDER BY _distance {direction}{tie} LIMIT {self._limit}"
            )
        distance, direction = self._order(f"d.{_quote(t.vector)}", "q._query_vector")
        listed = "".join(f"d.{_quote(c)} AS {_quote(c)}, " for c in columns)
        inner = (
            f"SELECT q.query_index, {listed}{distance} AS _distance, row_number() OVER "
            f"(PARTITION BY q.query_index ORDER BY {distance} {direction}{tie}) AS _rank "
            f"FROM {_quote(self._queries)} q CROSS JOIN {_quote(t.name)} d"
            + (f" WHERE {where}" if where else "")
        )
        outer = ", ".join(["query_index"] + [_quote(c) for c in columns] + ["_distance"])
        return f"SELECT {outer} FROM ({inner}) WHERE _rank <= {self._limit} ORDER BY query_index, _rank"

    def _run(self, sql: str) -> pa.Table:
        t = self._table
        settings = {**t.settings, **{k: str(v) for k, v in self._settings.items()}}
        if not self._batch:
            return t._sql(sql, settings)
        n = self._count
        values = pa.Array.from_buffers(pa.float32(), n * t.dimension, [None, pa.py_buffer(self._values)])
        vectors = pa.FixedSizeListArray.from_arrays(values, t.dimension)
        queries = pa.table([pa.array(range(n), type=pa.int64()), vectors], names=["query_index", "_query_vector"])
        return t._sql(sql, settings, {self._queries: queries})

    def to_arrow(self) -> pa.Table:
        """The table's selected columns and ``_distance`` (and ``query_index`` first for a
        batch), nearest first."""
        return self._run(self.to_sql())

    def to_pandas(self) -> Any:
        return self.to_arrow().to_pandas()

    def to_list(self) -> list[dict[str, Any]]:
        """The rows as dicts, as ``to_arrow().to_pylist()``."""
        return self.to_arrow().to_pylist()

    def explain(self) -> str:
        """EXPLAIN of the search: names the index scan when it is one."""
        table = self._run("EXPLAIN " + self.to_sql())
        return "\n".join(table.column("plan").to_pylist())
