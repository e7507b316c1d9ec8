"""Writes a large IVF-Flat index of clustered random vectors (for the mmap memory test).

usage: write_large.py OUT N DIM NLIST
"""
import sys

import faiss
import numpy as np

out, n, d, nlist = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(7)
centers = rng.normal(size=(256, d)).astype(np.float32) * 4
quantizer = faiss.IndexFlatL2(d)
index = faiss.IndexIVFFlat(quantizer, d, nlist)
index.cp.niter = 4
train = centers[rng.integers(0, 256, nlist * 32)] + rng.normal(size=(nlist * 32, d)).astype(np.float32)
index.train(train)
step = 100_000
for start in range(0, n, step):
    m = min(step, n - start)
    x = centers[rng.integers(0, 256, m)] + rng.normal(size=(m, d)).astype(np.float32)
    index.add_with_ids(x, np.arange(start, start + m, dtype=np.int64))
faiss.write_index(index, out)
