"""datafusion_faiss from datafusion-python 55, as a user has it: Parquet written by
pyarrow's defaults, indexes written by pip's faiss-cpu, local and on the project's
SeaweedFS server. Every search is compared with the exact plan (faiss.enabled = false)
at nprobe = nlist, where the index scan must give the same rows."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import datafusion
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datafusion_faiss as dff

DIM, ROWS, NLIST = 16, 3000, 16
ROOT = pathlib.Path(__file__).resolve().parents[2]


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype("float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """One Parquet file (shuffled keys, two languages) and two pip-FAISS indexes of it:
    by key (add_with_ids) and by position (add)."""
    folder = tmp_path_factory.mktemp("docs")
    x = vectors(ROWS, 1)
    ids = np.random.default_rng(2).permutation(ROWS).astype("int64") * 7 + 3
    table = pa.table(
        {
            "id": ids,
            "lang": ["en" if i % 3 else "de" for i in range(ROWS)],
            "title": [f"doc {i}" for i in ids],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
        }
    )
    pq.write_table(table, folder / "docs.parquet")
    keyed = faiss.index_factory(DIM, f"IVF{NLIST},Flat")
    keyed.train(x)
    keyed.add_with_ids(x, ids)
    faiss.write_index(keyed, str(folder / "keyed.faiss"))
    positions = faiss.index_factory(DIM, f"IVF{NLIST},Flat")
    positions.train(x)
    positions.add(x)
    faiss.write_index(positions, str(folder / "positions.faiss"))
    return {"folder": folder, "x": x, "ids": ids, "keyed": keyed}


def create(ctx, name: str, data_url: str, index_url: str, key: str | None = "id") -> None:
    options = f"'index' '{index_url}', 'vector' 'embedding'" + (f", 'key' '{key}'" if key else "")
    ctx.sql(f"CREATE EXTERNAL TABLE {name} STORED AS FAISS LOCATION '{data_url}' OPTIONS ({options})").collect()


def rows(ctx, sql: str) -> list[dict]:
    return ctx.sql(sql).to_arrow_table().to_pylist()


def exact(ctx, sql: str) -> list[dict]:
    ctx.sql("SET faiss.enabled = false").collect()
    try:
        return rows(ctx, sql)
    finally:
        ctx.sql("SET faiss.enabled = true").collect()


def plan(ctx, sql: str) -> str:
    """The plan that ran: EXPLAIN ANALYZE is planned as the query is, where EXPLAIN alone
    takes a path of its own (it shows each optimizer step)."""
    return "\n".join(ctx.sql("EXPLAIN ANALYZE " + sql).to_arrow_table().column("plan").to_pylist())


def literal(q: np.ndarray) -> str:
    return "'[" + ", ".join(repr(float(v)) for v in q) + "]'"


@pytest.fixture()
def ctx(data):
    ctx = dff.context()
    folder = data["folder"]
    create(ctx, "docs", str(folder / "docs.parquet"), str(folder / "keyed.faiss"))
    create(ctx, "docs_positions", str(folder / "docs.parquet"), str(folder / "positions.faiss"), key=None)
    ctx.sql(f"SET faiss.nprobe = {NLIST}").collect()
    return ctx


def test_import_names_the_datafusion_it_was_built_for():
    assert dff._internal.DATAFUSION_MAJOR == 55
    assert dff._internal.FAISS.split()[0].count(".") == 2  # e.g. "1.12.0 (avx2)"


@pytest.mark.parametrize("table", ["docs", "docs_positions"])
def test_sql_top_k_is_an_index_scan_equal_to_the_exact_plan(ctx, table):
    q = vectors(1, 10)[0]
    sql = (
        f"SELECT id, title, vec_distance(embedding, {literal(q)}) AS d FROM {table} "
        f"WHERE lang = 'en' ORDER BY d, id LIMIT 10"
    )
    assert "IvfTopKExec" in plan(ctx, sql)
    got = rows(ctx, sql)
    assert len(got) == 10
    assert got == exact(ctx, sql)


def test_results_equal_faiss_own_search(ctx, data):
    q = vectors(1, 11)
    data["keyed"].nprobe = NLIST
    distances, labels = data["keyed"].search(q, 10)
    got = rows(ctx, f"SELECT id, l2_distance_squared(embedding, {literal(q[0])}) AS d FROM docs ORDER BY d LIMIT 10")
    assert [r["id"] for r in got] == labels[0].tolist()
    assert np.allclose([r["d"] for r in got], distances[0], rtol=1e-5)


def test_settings_are_read_by_the_index_scan(ctx):
    q = vectors(1, 12)[0]
    sql = f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM docs ORDER BY d LIMIT 5"
    ctx.sql("SET faiss.nprobe = 3").collect()
    assert "nprobe=3" in plan(ctx, sql)
    ctx.sql("SET faiss.nprobe = 7").collect()
    assert "nprobe=7" in plan(ctx, sql)


def test_a_bad_setting_fails_where_it_is_set_and_is_not_kept(ctx):
    """As in a Rust session: the SET fails, the context keeps the value it had and its
    next queries run, also on a copy of the session made after (another context's)."""
    q = vectors(1, 13)[0]
    sql = f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM docs ORDER BY d LIMIT 5"
    ctx.sql("SET faiss.nprobe = 7").collect()
    for bad, says in [("faiss.nprobe = 'abc'", "faiss.nprobe"), ("faiss.nprobe = -3", "-3"), ("faiss.nprob = 3", "nprob")]:
        with pytest.raises(Exception, match=says):
            ctx.sql(f"SET {bad}").collect()
        assert "nprobe=7" in plan(ctx, sql)
        assert len(rows(ctx, sql)) == 5
    config = dff.settings(datafusion.SessionConfig().with_information_schema(True))
    other = dff.register(datafusion.SessionContext(config))
    with pytest.raises(Exception, match="faiss.enabled"):
        other.sql("SET faiss.enabled = 'maybe'").collect()
    other.sql("SET faiss.refine_factor = 2").collect()
    assert rows(other, "SHOW faiss.refine_factor") == [{"name": "faiss.refine_factor", "value": "2"}]


def test_a_serialized_plan_decodes_once_in_its_process(ctx):
    """Vector tables cross by handle: `to_bytes(ctx)` then `from_bytes` gives the same
    rows; a second decode of the same bytes is a clear error, not an internal one."""
    from datafusion.plan import LogicalPlan

    q = vectors(1, 14)[0]
    sql = f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM docs ORDER BY d LIMIT 5"
    encoded = ctx.sql(sql).logical_plan().to_bytes(ctx)
    decoded = LogicalPlan.from_bytes(ctx, encoded)
    assert ctx.create_dataframe_from_logical_plan(decoded).to_arrow_table().to_pylist() == rows(ctx, sql)
    with pytest.raises(Exception, match="decodes once, in the process that encoded it") as e:
        LogicalPlan.from_bytes(ctx, encoded)
    assert "bug in DataFusion" not in str(e.value)


def test_a_python_udf_filters_an_index_scan(ctx, data):
    """A function of the host's session (here a Python UDF) in the WHERE of an index
    query: the table is asked about the filter with it encoded, and the scan runs it
    through the host, with the GIL."""
    import pyarrow.compute as pc
    from datafusion import SessionContext, udf

    shout = udf(lambda s: pc.utf8_upper(s), [pa.string()], pa.string(), "stable", name="shout")
    ctx.register_udf(shout)
    q = vectors(1, 16)[0]
    sql = (
        f"SELECT id, shout(title) AS t, vec_distance(embedding, {literal(q)}) AS d FROM docs "
        f"WHERE shout(lang) = 'EN' ORDER BY d, id LIMIT 10"
    )
    scan = next(line for line in plan(ctx, sql).splitlines() if "IvfTopKExec" in line)
    # Once, though the host's plan has it above the scan and in it, decoded twice.
    assert scan.count("shout(") == 1
    got = rows(ctx, sql)
    assert len(got) == 10 and all(r["t"].startswith("DOC ") for r in got)
    assert got == exact(ctx, sql)
    # Lent to a plain context, which plans the scan itself: the filter stays in the host.
    plain = SessionContext()
    table = dff.open_table(str(data["folder"] / "docs.parquet"), str(data["folder"] / "keyed.faiss"),
                           vector="embedding", key="id", ctx=plain)
    plain.register_udf(shout)
    count = f"SELECT count(*) AS n FROM {table.name} WHERE shout(lang) = 'EN'"
    assert plain.sql(count).to_pylist() == [{"n": sum(1 for i in range(ROWS) if i % 3)}]


def test_faiss_search_equals_the_exact_plan(ctx):
    q = vectors(1, 13)[0]
    sql = f"SELECT id, title, _distance FROM faiss_search('docs', {literal(q)}, 10)"
    assert "IvfTopKExec" in plan(ctx, sql)
    assert rows(ctx, sql) == exact(ctx, sql)


def test_batch_join_is_an_index_scan_equal_to_the_exact_plan(ctx):
    queries = vectors(5, 14)
    ctx.register_record_batches(
        "queries",
        [[pa.record_batch([pa.array(range(5)), pa.FixedSizeListArray.from_arrays(pa.array(queries.ravel()), DIM)], names=["qid", "vec"])]],
    )
    sql = (
        "SELECT qid, id, dist FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, "
        "row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r "
        "FROM queries q CROSS JOIN docs d WHERE d.lang = 'en') WHERE r <= 4 ORDER BY qid, r"
    )
    assert "IvfKnnExec" in plan(ctx, sql)
    got = rows(ctx, sql)
    assert len(got) == 20
    assert got == exact(ctx, sql)


def test_search_api_equals_the_sql_exact_plan(ctx, data):
    folder = data["folder"]
    table = dff.open_table(str(folder / "docs.parquet"), str(folder / "keyed.faiss"), vector="embedding", key="id")
    assert table.metric == "l2" and table.dimension == DIM and table.nlist == NLIST
    q = vectors(1, 15)[0]
    search = table.search(q).where("lang = 'en'").select(["id", "title"]).nprobe(NLIST).limit(10)
    assert "IvfTopKExec" in search.explain()
    got = search.to_arrow()
    assert got.column_names == ["id", "title", "_distance"]
    want = exact(
        ctx,
        f"SELECT id, title, vec_distance(embedding, {literal(q)}) AS _distance FROM docs "
        f"WHERE lang = 'en' ORDER BY _distance, id LIMIT 10",
    )
    assert got.to_pylist() == want
    assert search.to_list() == want
    # A Python list is a query too.
    assert table.search(q.tolist()).where("lang = 'en'").select(["id", "title"]).nprobe(NLIST).to_arrow() == got


def test_search_settings_hold_for_that_search_alone(data):
    folder = data["folder"]
    table = dff.open_table(
        str(folder / "docs.parquet"), str(folder / "keyed.faiss"), vector="embedding", key="id", nprobe=5
    )
    q = vectors(1, 19)[0]
    assert "nprobe=9 " in table.search(q).nprobe(9).refine_factor(3).explain()
    assert "nprobe=5 " in table.search(q).explain()
    # The table lent to a datafusion-python context is an index scan there too, with that
    # context's settings.
    sql = f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM {table.name} ORDER BY d LIMIT 3"
    assert "nprobe=16 " in plan(table.ctx, sql)
    table.ctx.sql("SET faiss.nprobe = 7").collect()
    assert "nprobe=7 " in plan(table.ctx, sql)
    assert "nprobe=5 " in table.search(q).explain()


def test_search_api_batch(ctx, data):
    folder = data["folder"]
    table = dff.open_table(str(folder / "docs.parquet"), str(folder / "keyed.faiss"), vector="embedding", key="id")
    queries = vectors(3, 16)
    search = table.search(queries).select(["id"]).nprobe(NLIST).limit(5)
    assert "CROSS JOIN" in search.to_sql()
    assert "IvfKnnExec" in search.explain()
    got = search.to_arrow()
    assert got.column_names == ["query_index", "id", "_distance"]
    assert got.column("query_index").to_pylist() == [0] * 5 + [1] * 5 + [2] * 5
    for i, q in enumerate(queries):
        want = exact(ctx, f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM docs ORDER BY d, id LIMIT 5")
        mine = [r for r in got.to_pylist() if r["query_index"] == i]
        assert [r["id"] for r in mine] == [r["id"] for r in want]
        assert [r["_distance"] for r in mine] == [r["d"] for r in want]
    # Lists of lists are a batch too.
    assert table.search(queries.tolist()).select(["id"]).nprobe(NLIST).limit(5).to_arrow() == got


def test_wrong_dimension_is_a_clear_error(ctx, data):
    short = "'[0.5, 0.25]'"
    with pytest.raises(Exception, match="dimension"):
        rows(ctx, f"SELECT id, vec_distance(embedding, {short}) AS d FROM docs ORDER BY d LIMIT 3")
    folder = data["folder"]
    table = dff.open_table(str(folder / "docs.parquet"), str(folder / "keyed.faiss"), vector="embedding", key="id")
    with pytest.raises(ValueError, match="dimensions"):
        table.search([0.5, 0.25])
    with pytest.raises(ValueError, match="the query has 2 dimensions"):
        table.search(np.zeros((3, 2), dtype="float32"))
    with pytest.raises(ValueError, match="query 1 has 2 dimensions"):
        table.search([[0.5] * DIM, [0.5, 0.25]])
    with pytest.raises(ValueError, match="numbers"):
        table.search(["0.5", "0.25"])


def test_corrupt_and_missing_files_are_clear_errors(data, tmp_path):
    folder = data["folder"]
    raw = (folder / "keyed.faiss").read_bytes()
    (tmp_path / "cut.faiss").write_bytes(raw[: len(raw) // 3])
    ctx = dff.context()
    with pytest.raises(Exception, match="cut.faiss"):
        create(ctx, "cut", str(folder / "docs.parquet"), str(tmp_path / "cut.faiss"))
    with pytest.raises(Exception, match="nothing.faiss"):
        create(ctx, "missing", str(folder / "docs.parquet"), str(tmp_path / "nothing.faiss"))
    (tmp_path / "junk.faiss").write_bytes(b"IwFl" + b"\xff" * 200)
    with pytest.raises(Exception, match="junk.faiss"):
        create(ctx, "junk", str(folder / "docs.parquet"), str(tmp_path / "junk.faiss"))


def test_build_from_python_equals_faiss_and_the_exact_plan(data, tmp_path):
    folder = data["folder"]
    dff.build(str(tmp_path / "built.faiss"), str(folder / "docs.parquet"), key="id", factory=f"IVF{NLIST},Flat")
    assert (tmp_path / "built.faiss.json").exists()  # the manifest of the files it covers
    index = faiss.read_index(str(tmp_path / "built.faiss"))
    assert index.ntotal == ROWS and index.nlist == NLIST
    ctx = dff.context()
    create(ctx, "built", str(folder / "docs.parquet"), str(tmp_path / "built.faiss"))
    ctx.sql(f"SET faiss.nprobe = {NLIST}").collect()
    q = vectors(1, 18)
    index.nprobe = NLIST
    _, labels = index.search(q, 10)
    sql = f"SELECT id, vec_distance(embedding, {literal(q[0])}) AS d FROM built ORDER BY d, id LIMIT 10"
    got = rows(ctx, sql)
    assert [r["id"] for r in got] == labels[0].tolist()
    assert got == exact(ctx, sql)
    with pytest.raises(RuntimeError, match="nope"):
        dff.build(str(tmp_path / "x.faiss"), str(folder / "docs.parquet"), vector="nope")


INTERRUPTED = """
import os, signal, sys, threading
import datafusion_faiss as dff

ctx = dff.context()
endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
# As in a terminal, whatever this test runs under (a background job ignores SIGINT).
signal.signal(signal.SIGINT, signal.default_int_handler)
# Whenever it lands, the interrupt finds the query running: it has no end.
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    ctx.sql(endless).collect()
except KeyboardInterrupt:
    print("interrupted;", ctx.sql("SELECT 41 + 1 AS x").to_pydict()["x"])
"""


def test_ctrl_c_cancels_a_query():
    # In a process of its own: a query Ctrl-C did not cancel would never end.
    try:
        done = subprocess.run([sys.executable, "-c", INTERRUPTED], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("Ctrl-C did not cancel the query")
    assert done.stdout.strip() == "interrupted; [42]", done.stderr


FORKED = """
import os, sys
import numpy as np
import datafusion_faiss as dff

data, index = sys.argv[1:3]
q = np.random.default_rng(5).standard_normal(16).astype("float32")


def child(work):
    pid = os.fork()
    if pid == 0:
        try:
            print("child:", work(), flush=True)
        except Exception as e:
            print("child refused:", " ".join(str(e).split()), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)


def search():
    t = dff.open_table(data, index, vector="embedding", key="id")
    return len(t.search(q).limit(3).to_list())


# Forked before any use: the child starts its own threads.
child(search)
t = dff.open_table(data, index, vector="embedding", key="id")
ctx = t.ctx
print("parent:", len(t.search(q).limit(3).to_list()), flush=True)
# Forked after: the parent's threads are not in the child; each way in is refused.
child(lambda: len(t.search(q).limit(3).to_list()))
child(lambda: ctx.sql(t.search(q).limit(3).to_sql()).to_arrow_table().num_rows)
child(search)
print("parent:", len(t.search(q).limit(3).to_list()), flush=True)
"""


def test_a_process_forked_after_use_is_refused_not_left_hanging(data):
    # In a process of its own, so the suite's threads are not forked: before the refusal,
    # such a child waited forever (or crashed on the locks the parent's threads held).
    folder = data["folder"]
    argv = [sys.executable, "-c", FORKED, str(folder / "docs.parquet"), str(folder / "keyed.faiss")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"a forked child hung: {e.stdout}")
    lines = done.stdout.splitlines()
    assert lines[:2] == ["child: 3", "parent: 3"], done.stdout + done.stderr
    assert lines[-1] == "parent: 3", done.stdout + done.stderr
    refused = lines[2:-1]
    assert len(refused) == 3, done.stdout + done.stderr
    for line in refused:
        assert line.startswith("child refused:") and "forked from process" in line and "'spawn'" in line, line


def s3_settings() -> dict | None:
    env = ROOT / ".work" / "s3" / "env"
    if not env.exists():
        return None
    return dict(line.split("=", 1) for line in env.read_text().split())


def test_s3(data):
    s3 = s3_settings()
    if s3 is None:
        pytest.fail("the S3 test server is not running (scripts/s3.sh start)")
    os.environ.update(
        AWS_ENDPOINT=s3["DFF_S3_ENDPOINT"],
        AWS_ACCESS_KEY_ID=s3["DFF_S3_KEY"],
        AWS_SECRET_ACCESS_KEY=s3["DFF_S3_SECRET"],
        AWS_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
    )
    from pyarrow import fs

    store = fs.S3FileSystem(
        access_key=s3["DFF_S3_KEY"],
        secret_key=s3["DFF_S3_SECRET"],
        endpoint_override=s3["DFF_S3_ENDPOINT"],
        scheme="http",
        region="us-east-1",
    )
    prefix = f"{s3['DFF_S3_BUCKET']}/python-{os.getpid()}"
    for name in ["docs.parquet", "keyed.faiss"]:
        with store.open_output_stream(f"{prefix}/{name}") as out:
            out.write((data["folder"] / name).read_bytes())
    ctx = dff.context()
    create(ctx, "docs", f"s3://{prefix}/docs.parquet", f"s3://{prefix}/keyed.faiss")
    ctx.sql(f"SET faiss.nprobe = {NLIST}").collect()
    q = vectors(1, 17)[0]
    sql = f"SELECT id, vec_distance(embedding, {literal(q)}) AS d FROM docs WHERE lang = 'de' ORDER BY d, id LIMIT 10"
    assert "IvfTopKExec" in plan(ctx, sql)
    assert rows(ctx, sql) == exact(ctx, sql)
    # Explicit options instead of the environment: a store of its own for the bucket.
    for name in ["AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
        del os.environ[name]
    dff.register_store(
        f"s3://{s3['DFF_S3_BUCKET']}",
        aws_endpoint=s3["DFF_S3_ENDPOINT"],
        aws_access_key_id=s3["DFF_S3_KEY"],
        aws_secret_access_key=s3["DFF_S3_SECRET"],
        aws_region="us-east-1",
        aws_allow_http="true",
    )
    table = dff.open_table(f"s3://{prefix}/docs.parquet", f"s3://{prefix}/keyed.faiss", vector="embedding", key="id")
    assert table.search(q).where("lang = 'de'").select(["id"]).nprobe(NLIST).to_arrow().column("id").to_pylist() == [
        r["id"] for r in rows(ctx, sql)
    ]
