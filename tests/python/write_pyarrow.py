"""Writes a table as users' pipelines do: pyarrow's `write_table` with its default
settings (one row group per 1Mi rows, 1 MiB pages, no page index), keys in random order.

usage: write_pyarrow.py OUT ROWS DIM FILES SEED [FROM]
OUT is a file when FILES is 1, else a folder of FILES files (part-00.parquet, ...).
Columns: id (int64, a shuffled permutation of 0..ROWS times 7), label (int64, id % 10),
title (string), embedding (fixed_size_list<float32>[DIM], clustered).
Also writes OUT.f32 (the vectors) and OUT.ids (the ids), both in table order.
With FROM (a Parquet file), OUT is FROM's rows in random order, written with the defaults.
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out, rows, dim, files, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(seed)
if len(sys.argv) > 6:
    source = pq.read_table(sys.argv[6])
    pq.write_table(source.take(rng.permutation(source.num_rows)), out)
    sys.exit(0)
centres = rng.normal(size=(64, dim)).astype(np.float32)
x = (centres[rng.integers(0, 64, rows)] + rng.normal(scale=0.6, size=(rows, dim))).astype(np.float32)
ids = rng.permutation(rows).astype(np.int64) * 7


def table(lo, hi):
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].reshape(-1)), dim)
    return pa.table({
        "id": ids[lo:hi],
        "label": ids[lo:hi] % 10,
        "title": [f"doc {i}" for i in ids[lo:hi]],
        "embedding": embedding,
    })


if files == 1:
    pq.write_table(table(0, rows), out)
else:
    os.makedirs(out, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for f in range(files):
        pq.write_table(table(bounds[f], bounds[f + 1]), os.path.join(out, f"part-{f:02d}.parquet"))
x.tofile(out.rstrip("/") + ".f32")
ids.tofile(out.rstrip("/") + ".ids")
