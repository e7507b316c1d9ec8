"""The report's Python rows: what the wheel adds over the Rust CLI for the same query.

usage: overhead.py CLI WHEEL OUT [QUERIES]

For each table (Fashion-MNIST as `datafusion-faiss demo` writes it, and 1M x 128 rows
written by pyarrow's defaults with an IVF1024,Flat index by pip's faiss-cpu), the same
top-10 SQL, made by the search builder's `to_sql()`, runs three ways, warm, one at a time:
the builder's `search(q).limit(10).to_arrow()`, `ctx.sql(sql).to_arrow_table()` through
datafusion-python, and the CLI's `sql -f` (its own timing: planning to the last batch), in
three rounds of the three in turn.
Writes OUT/python.md and OUT/python.json: p50 of each, the difference, whether the three
answers agree, the wheel's size and the import times.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

import datafusion_faiss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARMUP = 5
ROUNDS = 3


def fashion_mnist(cli: str, out: str) -> tuple[str, str]:
    folder = os.path.join(out, "demo")
    table = os.path.join(folder, "fashion-mnist.parquet")
    index = os.path.join(folder, "fashion-mnist-IVF1024-Flat.faiss")
    if not (os.path.exists(table) and os.path.exists(index)):
        subprocess.run([cli, "demo", "--dir", folder], check=True, stdout=subprocess.DEVNULL)
    return table, index


def pyarrow_table(out: str) -> tuple[str, str]:
    """The filtered section's table when the report made it, else the same made here."""
    folder = os.path.join(out, "filtered-1000000-128")
    table, index = os.path.join(folder, "docs.parquet"), os.path.join(folder, "keys.faiss")
    if not os.path.exists(table + ".f32"):
        os.makedirs(folder, exist_ok=True)
        write = os.path.join(ROOT, "tests/python/write_pyarrow.py")
        subprocess.run([sys.executable, write, table, "1000000", "128", "1", "5"], check=True)
    if not os.path.exists(index):
        script = os.path.join(ROOT, "tests/python/write_index.py")
        subprocess.run(
            [sys.executable, script, table + ".f32", "128", "IVF1024,Flat", "l2", index + ".tmp", f"ids={table}.ids"],
            check=True,
        )
        os.replace(index + ".tmp", index)
    return table, index


def vectors(table: str, n: int) -> np.ndarray:
    column = pq.read_table(table, columns=["embedding"]).column("embedding").combine_chunks()
    rows = len(column)
    d = len(column[0])
    flat = column.values.to_numpy().reshape(rows, d)
    return np.stack([flat[(i * 7919 + 13) % rows] for i in range(n)]).astype(np.float32)


def timed(f) -> tuple[float, object]:
    t = time.perf_counter()
    r = f()
    return (time.perf_counter() - t) * 1e3, r


def cli_times(cli: str, create: str, sqls: list[str]) -> list[float]:
    """The CLI's own figure for each statement, in one process (CREATE's dropped)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(create + ";\n" + "".join(s + ";\n" for s in sqls))
    try:
        out = subprocess.run([cli, "sql", "-f", f.name], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    times = [float(m) for m in re.findall(r"^\d+ rows? in ([0-9.]+) ms$", out, re.M)]
    assert len(times) == len(sqls) + 1, f"the CLI printed {len(times)} timings for {len(sqls) + 1} statements"
    return times[1:]


def measure(name: str, cli: str, table: str, index: str, n: int) -> dict:
    """ROUNDS rounds of the three ways, one after the other, so that a slower moment of
    the machine does not fall on one of them only; p50 over all rounds."""
    t = datafusion_faiss.open_table(table, index, vector="embedding", key="id")
    qs = vectors(table, n + WARMUP)
    sqls = [t.search(q).limit(10).to_sql() for q in qs]
    create = (
        f"CREATE EXTERNAL TABLE {t.name} STORED AS FAISS LOCATION '{table}' "
        f"OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')"
    )
    times = {"rust": [], "builder": [], "sql": []}
    ids = {"builder": [], "sql": []}
    for _ in range(ROUNDS):
        for i, q in enumerate(qs):
            ms, r = timed(lambda: t.search(q).limit(10).to_arrow())
            if i >= WARMUP:
                times["builder"].append(ms)
                ids["builder"].append(r.column("id").to_pylist())
        for i, s in enumerate(sqls):
            ms, r = timed(lambda: t.ctx.sql(s).to_arrow_table())
            if i >= WARMUP:
                times["sql"].append(ms)
                ids["sql"].append(r.column("id").to_pylist())
        times["rust"] += cli_times(cli, create, sqls)[WARMUP:]
    p = {k: statistics.median(v) for k, v in times.items()}
    return {
        "table": name,
        "rows": t.ntotal,
        "d": t.dimension,
        "index": t.description,
        "queries": n,
        "rust_p50_ms": p["rust"],
        "builder_p50_ms": p["builder"],
        "sql_p50_ms": p["sql"],
        "builder_over_ms": p["builder"] - p["rust"],
        "sql_over_ms": p["sql"] - p["rust"],
        "same": ids["builder"] == ids["sql"],
    }


def imports(runs: int = 7) -> dict:
    code = (
        "import time; t = time.perf_counter(); import datafusion; a = time.perf_counter(); "
        "import datafusion_faiss; b = time.perf_counter(); print(a - t, b - a)"
    )
    both = [tuple(map(float, subprocess.check_output([sys.executable, "-c", code]).split())) for _ in range(runs)]
    return {
        "import_datafusion_ms": statistics.median(a for a, _ in both) * 1e3,
        "import_datafusion_faiss_ms": statistics.median(b for _, b in both) * 1e3,
    }


def main() -> None:
    cli, wheel, out = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    rows = [
        measure("Fashion-MNIST (demo)", cli, *fashion_mnist(cli, out), n),
        measure("1M x 128, pyarrow defaults", cli, *pyarrow_table(out), n),
    ]
    extra = {"wheel": os.path.basename(wheel), "wheel_mb": os.path.getsize(wheel) / 2**20, **imports()}
    with open(os.path.join(out, "python.json"), "w") as f:
        json.dump({"rows": rows, **extra}, f, indent=1)
    lines = [
        "\n## Python overhead\n",
        f"The release wheel (`{extra['wheel']}`, {extra['wheel_mb']:.0f} MiB) in a venv with datafusion 55.0.0, against "
        "the release CLI (`datafusion-faiss sql -f`, its own per-statement time), on one table each. The same top-10 "
        "SQL (the builder's `to_sql()`, default nprobe and refine factor), warm, one query at a time, "
        f"{n} queries after {WARMUP} untimed, in {ROUNDS} rounds of the three ways in turn. Goal: at most 1 ms above "
        "the CLI's p50.\n",
        "| table | index | Rust CLI p50 | `search().limit(10).to_arrow()` p50 | over Rust | SQL via datafusion-python p50 | over Rust | same answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']}: {r['rows']} x {r['d']} | {r['index']} | {r['rust_p50_ms']:.2f} ms | "
            f"{r['builder_p50_ms']:.2f} ms | {r['builder_over_ms']:+.2f} ms | {r['sql_p50_ms']:.2f} ms | "
            f"{r['sql_over_ms']:+.2f} ms | {'yes' if r['same'] else 'NO'} |"
        )
    lines.append(
        f"\n`import datafusion`: {extra['import_datafusion_ms']:.0f} ms; `import datafusion_faiss` after it: "
        f"{extra['import_datafusion_faiss_ms']:.0f} ms (median of 7 new processes).\n"
    )
    with open(os.path.join(out, "python.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
