"""HNSW build time over a large catalogue at the index's build parameters (issue 17: "built in minutes").

The table is :mod:`benchmarks.ann`'s: a CML item table (d = 100, synthetic ML-1M preset, 2 epochs)
extended to ``--size`` items by sampling its mixture; queries are 300 of the model's user vectors and
the truth is their exact top-10 (:func:`metricrec.serving.ann_eval.exact_search`). For each
``m, ef_construction`` pair the graph is built with faiss on ``--threads`` threads and searched at
three ``ef_search`` values: build seconds, recall@10 and ms per query.

    python -m benchmarks.hnsw_build --size 1000000 --threads 2

Writes ``benchmarks/results/hnsw-build.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from .ann import mixture_sample, trained_tables
from .common import RESULTS, meta_page, write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hnsw_build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", default="32:40", help="m:ef_construction pairs, comma-separated (default 32:40)")
    args = p.parse_args(argv)
    import faiss

    from metricrec.serving.ann_eval import exact_search

    faiss.omp_set_num_threads(args.threads)
    items, users, _ = trained_tables(2, 100)
    table = mixture_sample(items, args.size).astype(np.float32)
    queries = users[:300].astype(np.float32)
    truth = exact_search(table, queries, 10)[1]
    rows = []
    for pair in args.settings.split(","):
        m, efc = (int(x) for x in pair.split(":"))
        index = faiss.IndexHNSWFlat(table.shape[1], m)
        index.hnsw.efConstruction = efc
        t0 = time.perf_counter()
        index.add(table)
        row = {"m": m, "ef_construction": efc, "build_seconds": time.perf_counter() - t0, "search": []}
        for ef in (64, 128, 256):
            index.hnsw.efSearch = ef
            t0 = time.perf_counter()
            _, found = index.search(queries, 10)
            ms = (time.perf_counter() - t0) / len(queries) * 1e3
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
            row["search"].append({"ef_search": ef, "recall@10": recall, "ms_per_query": ms})
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| m | ef_construction | build s | recall@10 at ef_search 64 / 128 / 256 | ms per query |", "|---|---|---|---|---|"]
    for r in rows:
        rec = " / ".join(f"{s['recall@10']:.4f}" for s in r["search"])
        ms = " / ".join(f"{s['ms_per_query']:.3f}" for s in r["search"])
        lines.append(f"| {r['m']} | {r['ef_construction']} | {r['build_seconds']:.1f} | {rec} | {ms} |")
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "size": args.size, "d": int(table.shape[1]),
            "threads": args.threads, "cpu_count": os.cpu_count(), "load": os.getloadavg()[0],
            "note": "the earlier 1M build at m=32, ef_construction=100 took 1,508.5 s (ann.md)"}
    write_results(RESULTS / "hnsw-build", {"meta": meta, "rows": rows}, meta_page("hnsw-build", meta, "\n".join(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
