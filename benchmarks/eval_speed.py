"""Time full-ranking evaluation (all metrics, K in {10, 20, 50, 100}) on an ML-1M-sized problem.

6,040 users x 3,706 items from ``metricrec.data.synthetic.generate(preset="ml-1m", seed=0)`` split by the
protocol's ``ratio_split`` (seed 0), random d=100 embeddings scored by negative squared distance,
test part ranked with train + valid excluded. torch threads = 2; median of 5 runs after a warm-up.
The test part is scored through :func:`metricrec.metrics.evaluate_part`, the protocol entry every
caller uses (docs/protocol.md). Writes ``benchmarks/results/eval_speed.json`` (atomically) and prints
a markdown table.

    python -m benchmarks.eval_speed [--runs 5] [--threads 2] [--batch-size N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from metricrec.data.splits import Split, ratio_split
from metricrec.data.synthetic import generate
from metricrec.metrics import Scorer, embedding_scorer, evaluate_part

from .common import RESULTS, write_json

KS = (10, 20, 50, 100)
METRICS = ("recall", "precision", "ndcg", "hitrate", "map", "mrr", "auc")


def problem(dim: int) -> tuple[Split, Scorer, int]:
    """The protocol's split of the synthetic ML-1M set and a scorer over random d=``dim`` vectors."""
    data = generate(preset="ml-1m", seed=0)
    split = ratio_split(data, seed=0)
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(data.n_users, dim, generator=g) / dim**0.5
    item_emb = torch.randn(data.n_items, dim, generator=g) / dim**0.5
    return split, embedding_scorer(user_emb, item_emb), data.n_items


def time_runs(scorer: Scorer, split: Split, runs: int, batch_size: int | None) -> tuple[list[float], list[float], dict]:
    """Wall and CPU seconds of ``runs`` test evaluations after a warm-up, and the last metrics."""
    def once() -> tuple[float, float, dict]:
        t0, c0 = time.perf_counter(), time.process_time()
        res = evaluate_part(scorer, split, "test", ks=KS, metrics=METRICS, batch_size=batch_size)
        return time.perf_counter() - t0, time.process_time() - c0, res

    once()  # warm-up
    times, cpu, res = [], [], {}
    for _ in range(runs):
        t, c, res = once()
        times.append(t)
        cpu.append(c)
    return times, cpu, res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    split, scorer, n_items = problem(args.dim)
    load = os.getloadavg()[0]
    times, cpu, res = time_runs(scorer, split, args.runs, args.batch_size)
    med = statistics.median(times)
    result = {
        "benchmark": "evaluate (full ranking, all metrics, K=10/20/50/100, test part)",
        "data": "metricrec.data.synthetic.generate(preset='ml-1m', seed=0) + ratio_split(seed=0)",
        "n_users": int(res["n_users"]),
        "n_items": int(n_items),
        "train_pairs": split.train.nnz,
        "valid_pairs": split.valid.nnz,
        "test_pairs": split.test.nnz,
        "dim": args.dim,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "seconds_median": med,
        "seconds_min": min(times),
        "seconds_all": times,
        # CPU seconds of this process (all threads): less sensitive to other jobs on the machine
        "cpu_seconds_median": statistics.median(cpu),
        "load_average_1min_at_start": load,
        "users_per_second": res["n_users"] / med,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "sanity": {k: res[k] for k in ("recall@50", "ndcg@10", "mrr", "auc")},
    }
    write_json(args.out, result, indent=2)
    print(f"| users | items | seconds (median of {args.runs}) | users/s | CPU seconds | threads |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['n_users']:,} | {result['n_items']:,} | {med:.3f} | {result['users_per_second']:,.0f} "
        f"| {result['cpu_seconds_median']:.3f} | {args.threads} |"
    )
    return result


if __name__ == "__main__":
    main()
