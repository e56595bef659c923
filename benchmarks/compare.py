"""Side-by-side benchmark: metricrec CML against popularity, LightFM (WARP, BPR), implicit (BPR, ALS).

Every method trains on the identical split (PROTOCOL.md: per-user 60/20/20, seed 0), evaluates valid
Recall@50/@100 after each epoch, keeps the best epoch (early stopping) and is scored on test there.
Each (data set, method, setting) runs in its own process so that peak RSS is its own; every method
gets the same thread count.

    python benchmarks/compare.py --data-dir ../shared/data                 # the full table
    python benchmarks/compare.py --datasets ml-100k --methods cml lightfm-warp
    python benchmarks/compare.py --tune --datasets citeulike-a             # small grids on valid

Writes ``benchmarks/results/compare.json`` (every run, every epoch) and ``compare.md`` (the table).
Peers are benchmark-only dependencies; see benchmarks/README.md for how to install them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATASETS = ("ml-100k", "citeulike-a", "synthetic-ml-1m")
METHODS = ("cml", "popularity", "lightfm-warp", "lightfm-bpr", "implicit-bpr", "implicit-als")

# Settings used for the table, each chosen on valid Recall@50 from the grids below (the tuning runs
# are kept in results/tune-*.json): every method is tuned a little, fairly, on each real data set.
# "*" is used for the synthetic set, which serves the speed comparison.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "cml": {
        "ml-100k": {"margin": 1.5, "batch_size": 5000, "n_negatives": 5},
        "citeulike-a": {"margin": 1.25, "batch_size": 5000, "n_negatives": 20},
        "synthetic-ml-1m": {},  # the library defaults (U = 10, d = 100)
    },
    "popularity": {},
    "lightfm-warp": {
        "ml-100k": {"learning_rate": 0.02, "item_alpha": 1e-6},
        "citeulike-a": {"learning_rate": 0.02, "item_alpha": 1e-6},
        "*": {"learning_rate": 0.05},
    },
    "lightfm-bpr": {"ml-100k": {"learning_rate": 0.02}, "citeulike-a": {"learning_rate": 0.1}, "*": {"learning_rate": 0.05}},
    "implicit-bpr": {
        "ml-100k": {"learning_rate": 0.05, "regularization": 0.01},
        "citeulike-a": {"learning_rate": 0.1, "regularization": 0.01},
        "*": {"learning_rate": 0.05, "regularization": 0.01},
    },
    "implicit-als": {
        "ml-100k": {"regularization": 10.0, "alpha": 5.0},
        "citeulike-a": {"regularization": 30.0, "alpha": 200.0},
        "*": {"regularization": 10.0, "alpha": 5.0},
    },
}

GRIDS: dict[str, dict[str, list[Any]]] = {
    "cml": {"margin": [1.0, 1.25, 1.5, 2.0], "n_negatives": [5, 10, 20], "batch_size": [2000, 5000]},
    "lightfm-warp": {"learning_rate": [0.02, 0.05, 0.1], "item_alpha": [0.0, 1e-6]},
    "lightfm-bpr": {"learning_rate": [0.02, 0.05, 0.1]},
    "implicit-bpr": {"learning_rate": [0.01, 0.05, 0.1], "regularization": [0.01, 0.1]},
    "implicit-als": {"regularization": [0.1, 1.0, 10.0, 30.0], "alpha": [5.0, 20.0, 50.0, 100.0, 200.0, 400.0]},
}

MAX_EPOCHS = {"ml-100k": 200, "citeulike-a": 200, "synthetic-ml-1m": 30}


def settings_for(method: str, dataset: str) -> dict[str, Any]:
    table = SETTINGS.get(method, {})
    return dict(table.get(dataset, table.get("*", {})))


# ---------------------------------------------------------------------- worker (one run per process)
def load_split(dataset: str, data_dir: str | None):
    from metricrec.data.datasets import load_dataset
    from metricrec.data.splits import ratio_split
    from metricrec.data.synthetic import generate

    data = generate(preset="ml-1m", seed=0) if dataset == "synthetic-ml-1m" else load_dataset(dataset, data_dir, download=False)
    return ratio_split(data, (0.6, 0.2, 0.2), seed=0)


def eval_fn_for(split):
    from metricrec.metrics import evaluate

    train, valid, test = split.train.matrix, split.valid.matrix, split.test.matrix
    seen = (train + valid).tocsr()

    def eval_fn(scorer, part: str) -> dict[str, float]:
        if part == "valid":
            return evaluate(scorer, valid, train, ks=(50, 100), metrics=("recall",))
        return evaluate(scorer, test, seen, ks=(10, 20, 50, 100))

    return eval_fn


def run_cml(split, params: dict[str, Any], max_epochs: int, patience: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from metricrec import CML
    from metricrec.metrics import embedding_scorer

    model = CML(epochs=max_epochs, patience=patience, num_threads=threads, show_progress=False, verbose=False, **params)
    model.fit(split.train, split.valid)
    torch.set_num_threads(threads)
    hist = model.history
    scorer = embedding_scorer(torch.from_numpy(model.user_embeddings), torch.from_numpy(model.item_embeddings))
    t = time.perf_counter()
    test = eval_fn_for(split)(scorer, "test")
    seconds = [e.seconds for e in hist.epochs]
    return {
        "peer": "cml", "params": model.config.to_dict(), "epochs_run": len(seconds), "epoch_seconds": seconds,
        "valid": [e.valid for e in hist.epochs], "best_epoch": hist.best_epoch,
        "best_valid": hist.epochs[hist.best_epoch - 1].valid, "test": test,
        "median_s_per_epoch": float(np.median(seconds)), "train_seconds_to_best": hist.seconds_to_best,
        "train_seconds_total": hist.train_seconds,
        "eval_seconds_total": sum(e.eval_seconds for e in hist.epochs) + time.perf_counter() - t,
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import torch

    threads = spec["threads"]
    torch.set_num_threads(threads)
    split = load_split(spec["dataset"], spec.get("data_dir"))
    method, params = spec["method"], spec["params"]
    if method == "cml":
        out = run_cml(split, params, spec["max_epochs"], spec["patience"], threads)
    else:
        sys.path.insert(0, str(HERE))
        from peers import ImplicitALSPeer, ImplicitBPRPeer, LightFMPeer, PopularityPeer, run_peer

        if method == "popularity":
            peer, epochs = PopularityPeer(), 1
        elif method.startswith("lightfm"):
            peer, epochs = LightFMPeer(loss=method.split("-")[1], num_threads=threads, **params), spec["max_epochs"]
        elif method == "implicit-bpr":
            peer, epochs = ImplicitBPRPeer(num_threads=threads, **params), spec["max_epochs"]
        else:
            peer, epochs = ImplicitALSPeer(num_threads=threads, **params), min(spec["max_epochs"], 50)
        out = run_peer(peer, split, max_epochs=epochs, patience=spec["patience"], eval_fn=eval_fn_for(split))
    out.update({"dataset": spec["dataset"], "method": method, "setting": params, "threads": threads,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})
    return out


# ---------------------------------------------------------------------- driver
def launch(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grid(method: str, dataset: str, override: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    base = settings_for(method, dataset)
    axes = override if override is not None else GRIDS.get(method, {})
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] or [{}]
    return [{**base, **c} for c in combos]


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['dataset']} | {r['method']} | error: {r['error']} | | | | | | |"
    t = r["test"]
    return (f"| {r['dataset']} | {r['method']} | {r['best_epoch']} | {t['recall@50']:.4f} | {t['recall@100']:.4f} | "
            f"{t['ndcg@50']:.4f} | {r['median_s_per_epoch']:.3f} | {r['train_seconds_to_best']:.1f} | {r['peak_rss_mb']:.0f} |")


HEADER = ("| data | method | best epoch | test R@50 | test R@100 | test NDCG@50 | median s/epoch | train s to best | peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|---|")


def atomic_write(path: Path, text: str) -> None:
    from metricrec.serialization import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--data-dir", default=os.environ.get("METRICREC_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-epochs", type=int, help="override the per-data-set epoch cap")
    p.add_argument("--tune", action="store_true", help="run each method's grid and report the best setting on valid")
    p.add_argument("--grid", help='with --tune: a JSON grid replacing the built-in one, e.g. \'{"margin": [1.0, 2.0]}\'')
    p.add_argument("--name", default="compare", help="results file stem (default compare)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    runs: list[dict[str, Any]] = []
    lines = [HEADER]
    for dataset in args.datasets:
        for method in args.methods:
            override = json.loads(args.grid) if args.grid else None
            settings = grid(method, dataset, override) if args.tune else [settings_for(method, dataset)]
            results = []
            for params in settings:
                spec = {"dataset": dataset, "method": method, "params": params, "threads": args.threads,
                        "patience": args.patience, "max_epochs": args.max_epochs or MAX_EPOCHS[dataset],
                        "data_dir": args.data_dir}
                r = launch(spec)
                results.append(r)
                runs.append(r)
                valid = r.get("best_valid", {}).get("recall@50")
                print(f"{dataset:<16} {method:<13} {json.dumps(params):<80} "
                      + (f"valid R@50 {valid:.4f} test R@50 {r['test']['recall@50']:.4f} "
                         f"{r['median_s_per_epoch']:.3f} s/epoch best {r['best_epoch']}" if valid is not None else r.get("error", "?")),
                      flush=True)
            ok = [r for r in results if "error" not in r]
            best = max(ok, key=lambda r: r["best_valid"]["recall@50"]) if ok else results[0]
            lines.append(row(best))
    table = "\n".join(lines)
    print("\n" + table)
    meta = {"threads": args.threads, "patience": args.patience, "tune": args.tune, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu_count": os.cpu_count(), "median_note": "seconds per epoch = training only, evaluation excluded"}
    atomic_write(RESULTS / f"{args.name}.json", json.dumps({"meta": meta, "runs": runs}, indent=1))
    atomic_write(RESULTS / f"{args.name}.md", f"# {args.name}\n\n{json.dumps(meta)}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
