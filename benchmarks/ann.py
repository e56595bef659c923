"""Approximate retrieval (faiss HNSW and IVF-Flat) against metricrec's exact retrieval, on item
tables of 100,000 and 1,000,000 items (d=100).

The tables are a trained table extended by sampling its distribution: CML (d=100) is trained on
the synthetic ML-1M preset (6,040 users x 3,706 items, ``generate(preset="ml-1m", seed=0)``);
k-means (32 cells) splits its item vectors, each cell becomes a Gaussian (its mean and its
covariance, shrunk 10% towards the diagonal), and n items are drawn from that mixture (cell
weights as in the trained table), then clipped to the unit ball as CML's items are. Queries are
1,000 of the trained model's own user vectors.

Exact retrieval is :func:`metricrec.models.retrieval.top_n` (what ``model.recommend`` runs on the
CPU: one BLAS product and a partial sort), one query per call, as a service calls it; the
indexes are searched one query per call too. Reported per index: recall@10 against the exact
top-10, queries per second and the speed-up over exact, build seconds, and the index's size (its
serialised form: the vectors plus the graph links or inverted lists, about its size in memory).
A small sweep of ``ef_search`` / ``nprobe`` shows the recall-speed trade-off; the first setting
reaching recall 0.95 is the headline.

    python -m benchmarks.ann [--sizes 100000 1000000] [--threads 2] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from metricrec.data.synthetic import generate
from metricrec.models import CML
from metricrec.models.retrieval import top_n
from metricrec.serving.ann import AnnIndex
from metricrec.serving.ann_eval import exact_search, recall_at_k

from .common import RESULTS, write_results

K = 10
EF_SWEEP = (16, 32, 64, 128, 256)
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)


def trained_tables(epochs: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(item table, user table, facts) of CML trained on the synthetic ML-1M preset."""
    data = generate(preset="ml-1m", seed=seed)
    t0 = time.perf_counter()
    model = CML(factors=dim, epochs=epochs, seed=seed, show_progress=False, verbose=False).fit(data)
    facts = {"data": "synthetic ml-1m preset (seed 0)", "n_users": data.n_users, "n_items": data.n_items,
             "epochs": epochs, "factors": dim, "train_seconds": round(time.perf_counter() - t0, 1)}
    return model.item_embeddings, model.user_embeddings, facts


def mixture_sample(table: np.ndarray, n: int, cells: int = 32, shrink: float = 0.1, seed: int = 0) -> np.ndarray:
    """``n`` rows drawn from a Gaussian mixture fitted to ``table`` (k-means cells, one Gaussian
    each with its mean and shrunk covariance), clipped to the unit ball."""
    import faiss

    km = faiss.Kmeans(table.shape[1], cells, niter=25, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(table, dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(table, dtype=np.float32), 1)
    assign = assign.ravel()
    rng = np.random.default_rng(seed)
    weights = np.bincount(assign, minlength=cells) / len(assign)
    counts = rng.multinomial(n, weights)
    out = np.empty((n, table.shape[1]), dtype=np.float32)
    at = 0
    for c in range(cells):
        rows = table[assign == c].astype(np.float64)
        if counts[c] == 0 or len(rows) < 2:
            continue
        cov = np.cov(rows, rowvar=False)
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-8 * np.eye(cov.shape[0])
        out[at:at + counts[c]] = rng.multivariate_normal(rows.mean(0), cov, size=counts[c], method="cholesky")
        at += counts[c]
    out = out[:at]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1.0)
    return out[rng.permutation(at)]


def time_exact(table: np.ndarray, queries: np.ndarray, n_timed: int) -> dict[str, float]:
    """metricrec's exact top-10, one query per call, over the first ``n_timed`` queries."""
    cand_sq = np.einsum("ij,ij->i", table, table)
    top_n(queries[:1], table, K, cand_sq=cand_sq)  # warm
    t0 = time.perf_counter()
    for i in range(n_timed):
        top_n(queries[i:i + 1], table, K, cand_sq=cand_sq)
    qps = n_timed / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    top_n(queries[:n_timed], table, K, cand_sq=cand_sq)
    return {"qps_one_per_call": qps, "qps_batched": n_timed / (time.perf_counter() - t0)}


def time_index(index: AnnIndex, queries: np.ndarray, truth: np.ndarray, **kw: Any) -> dict[str, float]:
    """Recall@10 and queries per second of ``index`` (one query per call; and all in one call)."""
    index.search(queries[:1], K, **kw)
    t0 = time.perf_counter()
    ids = np.concatenate([index.search(queries[i:i + 1], K, **kw)[1] for i in range(len(queries))])
    qps = len(queries) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    index.search(queries, K, **kw)
    return {"recall@10": round(recall_at_k(ids, truth), 4), "qps_one_per_call": qps,
            "qps_batched": len(queries) / (time.perf_counter() - t0)}


def build(table: np.ndarray, kind: str, params: dict[str, Any]) -> tuple[AnnIndex, dict[str, Any]]:
    index = AnnIndex.build(table, kind, **params)
    facts = {"kind": kind, "params": index.params, "build_seconds": round(index.build_seconds, 2),
             "build_rss_delta_mib": round(index.build_memory_bytes / 2**20, 1),
             "index_mib": round(index.to_bytes().size / 2**20, 1)}
    return index, facts


def sweep(index: AnnIndex, queries: np.ndarray, truth: np.ndarray, exact_qps: float) -> list[dict[str, Any]]:
    name, values = ("ef_search", EF_SWEEP) if index.kind == "hnsw" else ("nprobe", NPROBE_SWEEP)
    rows = []
    for v in values:
        if name == "nprobe" and v > index.params["nlist"]:
            break
        r = time_index(index, queries, truth, **{name: v})
        rows.append({name: v, **r, "speedup": r["qps_one_per_call"] / exact_qps})
        if r["recall@10"] >= 0.99:
            break
    return rows


def one_size(items: np.ndarray, users: np.ndarray, n: int, n_queries: int, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    table = mixture_sample(items, n, seed=1)
    sample_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    queries = np.ascontiguousarray(users[rng.choice(len(users), n_queries, replace=False)])
    truth = exact_search(table, queries, K)[1]
    exact = time_exact(table, queries, min(n_queries, args.exact_queries))
    out: dict[str, Any] = {"n_items": n, "d": table.shape[1], "sample_seconds": round(sample_seconds, 1),
                           "table_mib": round(table.nbytes / 2**20, 1), "exact": exact, "indexes": []}
    nlist = args.nlist or int(round(np.sqrt(n)))
    for kind, params in (("hnsw", {"m": args.m, "ef_construction": args.ef_construction}),
                         ("ivf", {"nlist": nlist})):
        index, facts = build(table, kind, params)
        facts["sweep"] = sweep(index, queries, truth, exact["qps_one_per_call"])
        ok = [r for r in facts["sweep"] if r["recall@10"] >= 0.95]
        facts["headline"] = ok[0] if ok else facts["sweep"][-1]
        out["indexes"].append(facts)
        print(f"  {n:>9,} {kind}: build {facts['build_seconds']} s, headline {facts['headline']}", flush=True)
        del index
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Approximate retrieval (faiss {env['faiss']}, {env['threads']} threads, d={result['d']}, "
             f"load {env['load_before']} -> {env['load_after']})", "",
             f"Tables: {result['tables']}", f"Queries: {result['queries']}", f"Exact: {result['exact']}", "",
             "| items | index | params | recall@10 | q/s (1 per call) | x exact | q/s (batched) | build s | "
             "index MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        e = size["exact"]
        lines.append(f"| {size['n_items']:,} | exact | - | 1.0000 | {e['qps_one_per_call']:,.0f} | 1.0 | "
                     f"{e['qps_batched']:,.0f} | - | {size['table_mib']} (table) |")
        for ix in size["indexes"]:
            h = ix["headline"]
            params = ", ".join(f"{k}={v}" for k, v in ix["params"].items() if k in ("m", "ef_construction", "nlist"))
            knob = f"ef_search={h['ef_search']}" if "ef_search" in h else f"nprobe={h['nprobe']}"
            lines.append(f"| {size['n_items']:,} | {ix['kind']} | {params}, {knob} | {h['recall@10']:.4f} | "
                         f"{h['qps_one_per_call']:,.0f} | {h['speedup']:.1f} | {h['qps_batched']:,.0f} | "
                         f"{ix['build_seconds']} | {ix['index_mib']} |")
    lines += ["", "index MiB: the serialised index (vectors plus graph links or inverted lists), about its size "
              "in memory. x exact: one-query-per-call speed over exact's.", "",
              "Sweeps (recall@10, q/s one per call, speed-up over exact):", ""]
    for size in result["sizes"]:
        for ix in size["indexes"]:
            cells = "; ".join(f"{r.get('ef_search', r.get('nprobe'))}: {r['recall@10']:.3f}, "
                              f"{r['qps_one_per_call']:,.0f}, {r['speedup']:.0f}x" for r in ix["sweep"])
            knob = "ef_search" if ix["kind"] == "hnsw" else "nprobe"
            lines.append(f"- {size['n_items']:,} {ix['kind']} ({knob}): {cells}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and index speed")
    ap.add_argument("--exact-queries", type=int, default=200, help="queries timed for exact speed")
    ap.add_argument("--epochs", type=int, default=10, help="CML epochs on the synthetic ML-1M preset")
    ap.add_argument("--threads", type=int, default=2, help="faiss / BLAS / torch threads")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--nlist", type=int, help="IVF cells (default sqrt(n))")
    ap.add_argument("--out", type=Path, default=RESULTS / "ann")
    args = ap.parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    items, users, facts = trained_tables(args.epochs, 100)
    print(f"trained: {facts}", flush=True)
    sizes = [one_size(items, users, n, args.queries, args) for n in args.sizes]
    result = {
        "d": 100, "tables": f"CML trained {facts['epochs']} epochs on {facts['data']} ({facts['n_items']:,} items), "
                           "its item vectors extended by sampling a 32-cell Gaussian mixture fitted to them, "
                           "clipped to the unit ball",
        "queries": f"{args.queries} of the trained model's user vectors; recall@10 against exact top-10",
        "exact": f"metricrec.models.retrieval.top_n (numpy BLAS), {args.exact_queries} queries one per call; "
                 "indexes searched one query per call as well",
        "trained": facts, "sizes": sizes,
        "environment": {"faiss": faiss.__version__, "threads": args.threads, "cpus": os.cpu_count(),
                        "machine": platform.processor() or platform.machine(),
                        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    write_results(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
