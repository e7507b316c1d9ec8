"""Writes a FAISS index with the Python FAISS running it (Debian's python3-faiss 1.7.3, or
pip's faiss-cpu in .work/venv): fixtures from other writers than this crate.

usage: write_index.py VECTORS(f32 raw) DIM FACTORY METRIC(l2|ip) OUT [positions | ids=FILE]
Vectors are trained on and added with ids 3*i + 11 (where the type takes ids), with
`positions` as `index.add(x)` numbers them (0, 1, ...), or with the int64 ids in FILE.
"""
import sys

import faiss
import numpy as np

vectors, dim, factory, metric, out = sys.argv[1:6]
x = np.fromfile(vectors, dtype=np.float32).reshape(-1, int(dim))
metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
faiss.omp_set_num_threads(2)
index = faiss.index_factory(int(dim), factory, metric)
index.train(x)
if sys.argv[6:] == ["positions"]:
    index.add(x)
elif sys.argv[6:] and sys.argv[6].startswith("ids="):
    index.add_with_ids(x, np.fromfile(sys.argv[6][4:], dtype=np.int64))
else:
    try:
        index.add_with_ids(x, np.arange(len(x), dtype=np.int64) * 3 + 11)
    except RuntimeError:  # flat and graph indexes number vectors themselves
        index.add(x)
faiss.write_index(index, out)
