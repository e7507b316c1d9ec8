"""Changes a Parquet file as lake pipelines do, rewriting it with pyarrow's defaults.

usage: change_table.py OP FILE SEED [SOURCE [ROWS]]
  append   FILE SEED SOURCE [ROWS]: writes FILE, ROWS (default: half SOURCE's) new rows
           near SOURCE's (each vector moved by a little noise), with new ids (10**9 + i)
  delete   FILE SEED: keeps a random half of FILE's rows
  reorder  FILE SEED: FILE's rows in random order
  revector FILE SEED: FILE's vectors replaced by others near other rows, ids kept
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

op, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(seed)


def with_vectors(table, x):
    dim = table.schema.field("embedding").type.list_size
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
    return table.set_column(table.schema.get_field_index("embedding"), "embedding", embedding)


def vectors(table):
    dim = table.schema.field("embedding").type.list_size
    return table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)


if op == "append":
    source = pq.read_table(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else source.num_rows // 2
    picked = source.take(rng.choice(source.num_rows, n, replace=n > source.num_rows))
    x = vectors(picked) + rng.normal(scale=0.01, size=(n, vectors(picked).shape[1])).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) + 10**9
    table = pa.table({
        "id": ids,
        "label": ids % 10,
        "title": [f"new {i}" for i in ids],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), x.shape[1]),
    })
    pq.write_table(table, path)
    sys.exit(0)
table = pq.read_table(path)
if op == "delete":
    table = table.take(np.sort(rng.choice(table.num_rows, table.num_rows // 2, replace=False)))
elif op == "reorder":
    table = table.take(rng.permutation(table.num_rows))
elif op == "revector":
    x = vectors(table)
    moved = x[rng.permutation(len(x))] + rng.normal(scale=0.3, size=x.shape)
    table = with_vectors(table, moved.astype(np.float32))
else:
    sys.exit(f"unknown op {op}")
pq.write_table(table, path)
