"""The report's Python rows: what the wheel adds over the Rust CLI for the same query.

usage: overhead.py CLI WHEEL OUT [QUERIES]

For each table (Fashion-MNIST as `datafusion-faiss demo` writes it, and 1M x 128 rows
written by pyarrow's defaults with an IVF1024,Flat index by pip's faiss-cpu), the same
top-10 SQL, made by the search builder's `to_sql()`, runs three ways, warm, one at a time:
the builder's `search(q).limit(10).to_arrow()`, `ctx.sql(sql).to_arrow_table()` through
datafusion-python, and the CLI's prompt, fed on a pipe (its own timing: planning to the
last batch). Each query runs the three ways back to back, in an order that turns with the
query, so a slow moment of the machine falls on all three: what Python adds is the median
of each query's difference, which this 2-core machine's swings (several ms between runs)
hardly move, where a difference of medians taken apart would carry them.
Writes OUT/python.md and OUT/python.json: p50 of each, the paired differences, whether
the three answers agree, the wheel's size and the import times.
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


class Prompt:
    """The CLI's prompt on a pipe: one statement in, its rows' ids and its own time out."""

    def __init__(self, cli: str, home: str) -> None:
        # HOME: the prompt's history file is kept away from the user's.
        self.proc = subprocess.Popen(
            [cli, "sql"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HOME": home},
        )

    def run(self, sql: str) -> tuple[float, list[int]]:
        self.proc.stdin.write(sql + ";\n")
        self.proc.stdin.flush()
        ids = []
        for line in self.proc.stdout:
            if line.startswith("error:"):
                raise RuntimeError(f"the CLI: {line.strip()}")
            cells = line.split("|")
            # A table's row: "| 42 | ... |"; the id is its first cell.
            if len(cells) > 2 and cells[1].strip().lstrip("-").isdigit():
                ids.append(int(cells[1]))
            done = re.match(r"^\d+ rows? in ([0-9.]+) ms$", line)
            if done:
                return float(done.group(1)), ids
        raise RuntimeError(f"the CLI ended (exit {self.proc.wait()})")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure(name: str, cli: str, table: str, index: str, n: int) -> dict:
    t = datafusion_faiss.open_table(table, index, vector="embedding", key="id")
    qs = vectors(table, n + WARMUP)
    sqls = [t.search(q).limit(10).to_sql() for q in qs]
    with tempfile.TemporaryDirectory() as home:
        cli_prompt = Prompt(cli, home)
        cli_prompt.run(
            f"CREATE EXTERNAL TABLE {t.name} STORED AS FAISS LOCATION '{table}' "
            f"OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')"
        )

        def builder(i: int) -> tuple[float, list[int]]:
            ms, r = timed(lambda: t.search(qs[i]).limit(10).to_arrow())
            return ms, r.column("id").to_pylist()

        def sql(i: int) -> tuple[float, list[int]]:
            ms, r = timed(lambda: t.ctx.sql(sqls[i]).to_arrow_table())
            return ms, r.column("id").to_pylist()

        ways = {"builder": builder, "sql": sql, "rust": lambda i: cli_prompt.run(sqls[i])}
        times = {k: [] for k in ways}
        ids = {k: [] for k in ways}
        names = list(ways)
        for i in range(len(qs)):
            turn = i % len(names)
            for way in names[turn:] + names[:turn]:
                ms, got = ways[way](i)
                if i >= WARMUP:
                    times[way].append(ms)
                    ids[way].append(got)
        cli_prompt.close()
    p = {k: statistics.median(v) for k, v in times.items()}
    over = {k: statistics.median(a - b for a, b in zip(times[k], times["rust"])) for k in ("builder", "sql")}
    return {
        "table": name,
        "rows": t.ntotal,
        "d": t.dimension,
        "index": t.description,
        "queries": n,
        "rust_p50_ms": p["rust"],
        "builder_p50_ms": p["builder"],
        "sql_p50_ms": p["sql"],
        "builder_over_ms": over["builder"],
        "builder_p50_over_ms": p["builder"] - p["rust"],
        "sql_over_ms": over["sql"],
        "sql_p50_over_ms": p["sql"] - p["rust"],
        "same": ids["builder"] == ids["sql"] == ids["rust"],
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
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
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
        "the release CLI (its prompt on a pipe, its own per-statement time), on one table each. The same top-10 SQL "
        "(the builder's `to_sql()`, default nprobe and refine factor), warm, one query at a time, "
        f"{n} queries after {WARMUP} untimed; each query runs the three ways back to back, in an order turning with "
        "the query. \"Over Rust\" is the median of the per-query differences. Goal: at most 1 ms above the CLI.\n",
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
