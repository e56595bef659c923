"""Side-by-side benchmark: metricrec CML against popularity, LightFM (WARP, BPR), implicit (BPR, ALS), EASE.

Every method trains on the identical split (docs/protocol.md: per-user 60/20/20, seed 0; the
development sets below state their own) through the same peer protocol and loop (:func:`benchmarks.runner.run_peer`): one epoch at a time, valid
Recall@50/@100 after each epoch, the best epoch kept (early stopping), test scored there by
:func:`metricrec.metrics.evaluate_part`. Each (data set, method, setting) runs in its own process so
that peak RSS is its own; every method gets the same thread count. A method that cannot run on a data
set here (EASE where its item-item inverse exceeds its memory budget) is recorded as ``skipped`` with the
reason, in the JSON and in the table.

Development sets, besides the protocol's: "steam-200k" on its authors' predefined split
(:func:`~metricrec.data.datasets.load_dataset_split`, not re-split); "filmtrust", "amazon-beauty" and
"amazon-toys" on the protocol's split; "ml-100k-loo", ml-100k (positives: rating >= 4) with one random
valid and one random test item per user (:func:`~metricrec.data.splits.leave_k_out`, seed 0).

    python -m benchmarks.compare --data-dir ../shared/data             # the full table
    python -m benchmarks.compare --datasets ml-100k --methods cml lightfm-warp
    python -m benchmarks.compare --tune --datasets citeulike-a         # small grids on valid
    python -m benchmarks.compare --merge results/a.json results/b.json --name both   # one file from parts

Writes ``benchmarks/results/<name>.json`` (every run, every epoch) and ``<name>.md`` (the table);
``--name`` defaults to ``compare``. Peers are benchmark-only dependencies; see benchmarks/README.md.
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

import torch

from metricrec.data.datasets import load_dataset, load_dataset_split
from metricrec.data.splits import Split, leave_k_out, ratio_split
from metricrec.data.synthetic import generate

from .common import RESULTS, ROOT, default_data_dir, write_json, write_text
from .peers import make_peer
from .runner import protocol_eval, run_peer

DATASETS = ("ml-100k", "citeulike-a", "synthetic-ml-1m", "ml-100k-all", "steam-200k", "filmtrust", "amazon-beauty",
            "amazon-toys", "ml-100k-loo")
#: Development sets scored on their authors' own split (load_dataset_split), never re-split.
PREDEFINED = ("steam-200k",)
#: Development sets split leave-one-out (one random valid, one random test item per user, seed 0): name -> data.
LEAVE_ONE_OUT = {"ml-100k-loo": "ml-100k"}
#: Data sets whose CML setting was never tuned: a check of the defaults on data they were not chosen on
#: ("ml-100k-all": ml-100k with every rating a positive, 100,000 pairs instead of 55,375).
UNTUNED = {"ml-100k-all": ("ml-100k", 1.0)}
METHODS = ("cml", "popularity", "lightfm-warp", "lightfm-bpr", "implicit-bpr", "implicit-als", "ease")

# Settings used for the table, each chosen on valid Recall@50 from the grids below (the tuning runs
# are recorded in results/tuning.md): every method is tuned a little, fairly, on each real data set.
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
    # ml-100k: best valid R@50 of the grid (results/compare-ease.md); "*": Steck's ML-20M setting, untuned
    "ease": {"ml-100k": {"lam": 500.0}, "*": {"lam": 500.0}},
}

GRIDS: dict[str, dict[str, list[Any]]] = {
    "cml": {"margin": [1.0, 1.25, 1.5, 2.0], "n_negatives": [5, 10, 20], "batch_size": [2000, 5000]},
    "lightfm-warp": {"learning_rate": [0.02, 0.05, 0.1], "item_alpha": [0.0, 1e-6]},
    "lightfm-bpr": {"learning_rate": [0.02, 0.05, 0.1]},
    "implicit-bpr": {"learning_rate": [0.01, 0.05, 0.1], "regularization": [0.01, 0.1]},
    "implicit-als": {"regularization": [0.1, 1.0, 10.0, 30.0], "alpha": [5.0, 20.0, 50.0, 100.0, 200.0, 400.0]},
    # a log grid of lambda (Steck tunes it over decades: 500 on ML-20M, 3000 on Netflix)
    "ease": {"lam": [1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]},
}

# Smaller grids where the full ones cost too much: on the Amazon sets (~20k users x ~12k items) one full-ranking
# valid pass takes ~5 s on one thread (scores and top-K of 2.7e8 pairs) after every epoch of every setting, and
# EASE's 12k x 12k inverse ~50 s per lambda: the full grids (48 settings, up to 200 epochs) would take hours on
# one core. So the factor models get the settings that won on citeulike-a, the other sparse set (tuning.md,
# compare-real.json), and only the axis that mattered most there is searched:
# - lightfm-warp: learning rate 0.05, item_alpha 0 (citeulike-a's best, 0.02, needed 114-162 epochs there;
#   item_alpha 0 or 1e-6 moved valid Recall@50 by under 0.01, either way);
# - lightfm-bpr, implicit-bpr: learning rate 0.1 (regularization 0.01), citeulike-a's best (reached there after
#   130-150 epochs: here the epoch cap may end them first, which the results show as best epoch = cap);
# - implicit-als: regularization 30 (citeulike-a's best; at alpha 100 valid Recall@50 moved by < 0.002 over
#   regularization 0.1..10), the confidence alpha over 50 and 200 (citeulike-a, regularization 10: 0.268 at 5,
#   0.352 at 50, 0.357 at 200);
# - ease: a half-decade log grid of lambda over 1.5 decades around 200 (amazon-beauty valid Recall@50 0.153 at 200
#   in a first check), still tuned on valid.
_AMAZON_GRIDS: dict[str, dict[str, list[Any]]] = {
    "lightfm-warp": {"learning_rate": [0.05], "item_alpha": [0.0]},
    "lightfm-bpr": {"learning_rate": [0.1]},
    "implicit-bpr": {"learning_rate": [0.1], "regularization": [0.01]},
    "implicit-als": {"regularization": [30.0], "alpha": [50.0, 200.0]},
    "ease": {"lam": [20.0, 60.0, 200.0, 600.0]},
}
#: Per-data-set grids replacing :data:`GRIDS` for a method (data sets not named use GRIDS).
DATASET_GRIDS: dict[str, dict[str, dict[str, list[Any]]]] = {"amazon-beauty": _AMAZON_GRIDS,
                                                              "amazon-toys": _AMAZON_GRIDS}

MAX_EPOCHS = {"ml-100k": 200, "citeulike-a": 200, "synthetic-ml-1m": 30, "ml-100k-all": 200, "steam-200k": 200,
              "filmtrust": 200, "ml-100k-loo": 200,
              # the Amazon sets: ~5 s of evaluation per epoch on one thread; a run stays under ~6 minutes
              "amazon-beauty": 60, "amazon-toys": 60}
# Methods that need fewer epochs than the data set's cap: popularity is done after one counting
# pass, EASE after its closed form; ALS converges in a few sweeps.
EPOCH_CAP = {"popularity": 1, "implicit-als": 50, "ease": 1}


def settings_for(method: str, dataset: str) -> dict[str, Any]:
    """The tuned setting of ``method`` on ``dataset`` (``"*"``: any other data set)."""
    table = SETTINGS.get(method, {})
    return dict(table.get(dataset, table.get("*", {})))


# ---------------------------------------------------------------------- worker (one run per process)
def skip_reason(peer: Any, train: Any) -> str | None:
    """Why ``peer`` cannot run on ``train`` here (its ``skip_reason``; None for peers without one)."""
    check = getattr(peer, "skip_reason", None)
    return check(train) if check is not None else None


def load_split(dataset: str, data_dir: str | None) -> Split:
    """The split of ``dataset``: the authors' own (:data:`PREDEFINED`), leave-one-out (:data:`LEAVE_ONE_OUT`),
    else the protocol's (per-user 60/20/20, seed 0) of a real data set or the synthetic ML-1M."""
    if dataset in PREDEFINED:
        return load_dataset_split(dataset, data_dir)
    if dataset in LEAVE_ONE_OUT:
        return leave_k_out(load_dataset(LEAVE_ONE_OUT[dataset], data_dir, download=False), 1, mode="random", seed=0)
    if dataset == "synthetic-ml-1m":
        data = generate(preset="ml-1m", seed=0)
    elif dataset in UNTUNED:
        name, min_rating = UNTUNED[dataset]
        data = load_dataset(name, data_dir, download=False, min_rating=min_rating)
    else:
        data = load_dataset(dataset, data_dir, download=False)
    return ratio_split(data, (0.6, 0.2, 0.2), seed=0)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (data set, method, setting) run: train through the peer protocol, score by the protocol."""
    threads = spec["threads"]
    torch.set_num_threads(threads)
    split = load_split(spec["dataset"], spec.get("data_dir"))
    method, params = spec["method"], spec["params"]
    peer = make_peer(method, params, num_threads=threads)
    reason = skip_reason(peer, split.train.matrix)
    if reason:
        return {"dataset": spec["dataset"], "method": method, "setting": params, "threads": threads, "skipped": reason}
    epochs = min(spec["max_epochs"], EPOCH_CAP.get(method, spec["max_epochs"]))
    out = run_peer(peer, split, max_epochs=epochs, patience=spec["patience"], eval_fn=protocol_eval(split))
    out.update({"dataset": spec["dataset"], "method": method, "setting": params, "threads": threads})
    return out


# ---------------------------------------------------------------------- driver
def launch(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`worker` for ``spec`` in a fresh process (from the repository root)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    cmd = [sys.executable, "-m", "benchmarks.compare", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        return {**spec, "error": err.splitlines()[-1] if err else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grid(method: str, dataset: str, override: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Settings to run: the tuned one with each combination of the grid's axes on top (``override``, else the
    data set's own grid in :data:`DATASET_GRIDS`, else :data:`GRIDS`)."""
    base = settings_for(method, dataset)
    axes = override if override is not None else DATASET_GRIDS.get(dataset, {}).get(method, GRIDS.get(method, {}))
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] or [{}]
    return [{**base, **c} for c in combos]


HEADER = ("| data | method | best epoch | test R@50 | test R@100 | test NDCG@50 | median s/epoch | train s to best | peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(r: dict[str, Any]) -> str:
    """One line of the markdown table."""
    for kind in ("error", "skipped"):
        if kind in r:
            return f"| {r['dataset']} | {r['method']} | {kind}: {r[kind]} | | | | | | |"
    t = r["test"]
    return (f"| {r['dataset']} | {r['method']} | {r['best_epoch']} | {t['recall@50']:.4f} | {t['recall@100']:.4f} | "
            f"{t['ndcg@50']:.4f} | {r['median_s_per_epoch']:.3f} | {r['train_seconds_to_best']:.1f} | {r['peak_rss_mb']:.0f} |")


def progress_line(r: dict[str, Any]) -> str:
    """One console line per run."""
    head = f"{r['dataset']:<16} {r['method']:<13} {json.dumps(r.get('setting', r.get('params'))):<80} "
    if "error" in r or "skipped" in r:
        return head + r.get("error", f"skipped: {r.get('skipped')}")
    return (head + f"valid R@50 {r['best_valid']['recall@50']:.4f} test R@50 {r['test']['recall@50']:.4f} "
            f"{r['median_s_per_epoch']:.3f} s/epoch best {r['best_epoch']}")


def run_method(dataset: str, method: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of one method on one data set (one setting, or the grid with ``--tune``)."""
    override = json.loads(args.grid) if args.grid else None
    settings = grid(method, dataset, override) if args.tune else [settings_for(method, dataset)]
    results = []
    for params in settings:
        spec = {"dataset": dataset, "method": method, "params": params, "threads": args.threads,
                "patience": args.patience, "max_epochs": args.max_epochs or MAX_EPOCHS[dataset],
                "data_dir": args.data_dir}
        results.append(launch(spec))
        print(progress_line(results[-1]), flush=True)
        if "skipped" in results[-1]:  # the catalogue decides, not the setting: the rest of the grid would be too
            break
    return results


def best_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the best valid Recall@50 (the first run when all failed or were skipped)."""
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    return max(ok, key=lambda r: r["best_valid"]["recall@50"]) if ok else results[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-epochs", type=int, help="override the per-data-set epoch cap")
    p.add_argument("--tune", action="store_true", help="run each method's grid and report the best setting on valid")
    p.add_argument("--grid", help='with --tune: a JSON grid replacing the built-in one, e.g. \'{"margin": [1.0, 2.0]}\'')
    p.add_argument("--name", default="compare", help="results file stem (default compare)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="write --name from results files of earlier runs (e.g. one per data set) instead of running")
    return p.parse_args(argv)


def merge(paths: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One results file from several: every run, in order, and each part's meta under ``parts``.

    A (data set, method) pair found in two parts is an error naming both files: which of them the table
    should show is not for a merge to guess.
    """
    runs: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], Path] = {}
    parts = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
            part_runs, part_meta = doc["runs"], doc["meta"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"benchmarks.compare: error: {path}: not a results file of this benchmark ({exc})")
        for key in {(r["dataset"], r["method"]) for r in part_runs}:
            if key in seen:
                raise SystemExit(f"benchmarks.compare: error: {key[0]} / {key[1]} is in both {seen[key]} and {path}")
            seen[key] = path
        runs += part_runs
        parts.append({"file": Path(path).name, **part_meta})
    return {"merged": parts, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, runs


def table_of(runs: list[dict[str, Any]]) -> str:
    """The markdown table: the best run on valid of each (data set, method), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    return "\n".join([HEADER, *(row(best_run(g)) for g in groups.values())])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.merge:
        meta, runs = merge(args.merge)
        table = table_of(runs)
        print(table)
        write_json(RESULTS / f"{args.name}.json", {"meta": meta, "runs": runs})
        write_text(RESULTS / f"{args.name}.md", f"# {args.name}\n\n{json.dumps(meta)}\n\n{table}\n")
        return 0
    runs: list[dict[str, Any]] = []
    lines = [HEADER]
    for dataset in args.datasets:
        for method in args.methods:
            results = run_method(dataset, method, args)
            runs += results
            lines.append(row(best_run(results)))
    table = "\n".join(lines)
    print("\n" + table)
    meta = {"threads": args.threads, "patience": args.patience, "tune": args.tune, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu_count": os.cpu_count(), "median_note": "seconds per epoch = training only, evaluation excluded"}
    write_json(RESULTS / f"{args.name}.json", {"meta": meta, "runs": runs})
    write_text(RESULTS / f"{args.name}.md", f"# {args.name}\n\n{json.dumps(meta)}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
