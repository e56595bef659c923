"""Time full-ranking evaluation (all metrics, K in {10, 20, 50, 100}) on an ML-1M-sized problem.

6,040 users x 3,706 items from ``metricrec.data.synthetic.generate(preset="ml-1m", seed=0)`` split by the
protocol's ``ratio_split`` (seed 0), random d=100 embeddings scored by negative squared distance,
test part ranked with train + valid excluded. torch threads = 2; median of 5 runs after a warm-up.
Writes ``benchmarks/results/eval_speed.json`` (atomically) and prints a markdown table.

    python benchmarks/eval_speed.py [--runs 5] [--threads 2] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metricrec.metrics import embedding_scorer, evaluate_split
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

KS = (10, 20, 50, 100)
METRICS = ("recall", "precision", "ndcg", "hitrate", "map", "mrr", "auc")


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = generate(preset="ml-1m", seed=0)
    split = ratio_split(data, seed=0)
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(data.n_users, args.dim, generator=g) / args.dim**0.5
    item_emb = torch.randn(data.n_items, args.dim, generator=g) / args.dim**0.5
    scorer = embedding_scorer(user_emb, item_emb)

    def once() -> tuple[float, float, dict]:
        t0, c0 = time.perf_counter(), time.process_time()
        res = evaluate_split(scorer, split, "test", ks=KS, metrics=METRICS, batch_size=args.batch_size)
        return time.perf_counter() - t0, time.process_time() - c0, res

    once()  # warm-up
    load = os.getloadavg()[0]
    times, cpu, res = [], [], {}
    for _ in range(args.runs):
        t, c, res = once()
        times.append(t)
        cpu.append(c)
    med = statistics.median(times)
    result = {
        "benchmark": "evaluate (full ranking, all metrics, K=10/20/50/100, test part)",
        "data": "metricrec.data.synthetic.generate(preset='ml-1m', seed=0) + ratio_split(seed=0)",
        "n_users": int(res["n_users"]),
        "n_items": int(data.n_items),
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
    _write_json_atomic(args.out, result)
    print(f"| users | items | seconds (median of {args.runs}) | users/s | CPU seconds | threads |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['n_users']:,} | {result['n_items']:,} | {med:.3f} | {result['users_per_second']:,.0f} "
        f"| {result['cpu_seconds_median']:.3f} | {args.threads} |"
    )
    return result


if __name__ == "__main__":
    main()
