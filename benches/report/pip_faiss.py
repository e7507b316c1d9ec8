"""Times pip's faiss-cpu searching an index file in memory, as its users run it: one
thread, one query at a time. Prints one JSON line per nprobe.

usage: pip_faiss.py INDEX QUERIES(f32 raw) DIM K MAX_QUERIES NPROBE...
"""
import json
import sys
import time

import faiss
import numpy as np

index_file, queries_file, dim, k, max_queries = sys.argv[1:6]
nprobes = [int(p) for p in sys.argv[6:]]
k, max_queries = int(k), int(max_queries)
faiss.omp_set_num_threads(1)
index = faiss.read_index(index_file)
q = np.fromfile(queries_file, dtype=np.float32).reshape(-1, int(dim))[:max_queries]
for nprobe in nprobes:
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    index.search(q[:1], k, params=params)
    times = []
    for i in range(len(q)):
        t = time.perf_counter()
        index.search(q[i : i + 1], k, params=params)
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({
        "faiss": faiss.__version__,
        "nprobe": nprobe,
        "queries": len(times),
        "p50_ms": 1000 * times[len(times) // 2],
        "p99_ms": 1000 * times[min(len(times) - 1, len(times) * 99 // 100)],
    }))
