"""Default ``metricrec train`` against every tuned peer (issue 10: "defaults that win").

Runs the CLI exactly as a user would -- ``metricrec train --dataset NAME`` with no hyperparameter
flag, one process per run, the protocol's split (per-user 60/20/20, seed 0) -- and reads its
``report.json``: test Recall@50 at the best epoch, training seconds to the best epoch (the
initialisation's seconds included), wall seconds of ``fit`` (initialisation, training, per-epoch
validation) and the share of that wall time spent validating. Beside each run it puts the tuned
peers of ``benchmarks/results/compare-real.json`` and ``compare-ease.json`` (EASE) (:mod:`benchmarks.compare`,
each tuned on valid):
their test Recall@50, training seconds to their best epoch and the wall seconds of their loop
(training plus per-epoch validation).

Also: CML+F at defaults (``--item-features tags`` on citeulike-a) and the ML-1M-shaped synthetic
set (validation share only: it has no peers' table).

    python -m benchmarks.defaults --data-dir ../shared/data
    python -m benchmarks.defaults --runs citeulike-a citeulike-a+tags --wait-load 2.5

Writes ``benchmarks/results/defaults.json`` and ``defaults.md``. The load average is recorded
before every run; ``--wait-load X`` waits (up to ``--wait-max`` seconds) for the 1-minute load to
fall below X first, since seconds on a shared machine say little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .common import RESULTS, ROOT, default_data_dir, meta_page, write_results

#: The development sets: name -> CLI arguments naming the data source and split (nothing else, so the
#: defaults are what runs). Every data set of ../shared/data with its ratings is here; ml-1m's ratings
#: are not on these machines, so its shape is the synthetic set's.
RUNS: dict[str, list[str]] = {
    "ml-100k": ["--dataset", "ml-100k"],
    "ml-100k-all": ["--dataset", "ml-100k", "--min-rating", "1"],  # every rating a positive
    "ml-100k-loo": ["--dataset", "ml-100k", "--split", "leave-k-out"],  # one valid and one test item per user
    "citeulike-a": ["--dataset", "citeulike-a"],
    "citeulike-a+tags": ["--dataset", "citeulike-a", "--item-features", "tags"],
    "steam-200k": ["--dataset", "steam-200k", "--split", "predefined"],  # its authors' split
    "filmtrust": ["--dataset", "filmtrust"],
    "amazon-beauty": ["--dataset", "amazon-beauty"],
    "amazon-toys": ["--dataset", "amazon-toys"],
    "synthetic-ml-1m": ["--synthetic", "ml-1m"],
}
#: Results files whose peers ran at one untuned setting (the synthetic set serves the speed comparison).
UNTUNED_FILES = {"compare-synthetic.json"}
#: The benchmarks.compare results whose tuned runs stand beside the defaults (those that exist are read).
PEERS_FILES = tuple(RESULTS / f"{n}.json" for n in ("compare-real", "compare-ease", "compare-untuned-set",
                                                     "compare-dev", "compare-ease-citeulike", "compare-synthetic"))


def load_average() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def wait_for_load(limit: float | None, wait_max: float) -> float:
    """Wait until the 1-minute load is below ``limit`` (or ``wait_max`` seconds passed); return it."""
    start = time.monotonic()
    while limit is not None and load_average() >= limit and time.monotonic() - start < wait_max:
        time.sleep(15)
    return load_average()


def run_cli(name: str, data_dir: str, threads: int | None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One ``metricrec train`` run in a fresh process -- the defaults, or the defaults with ``extra``
    flags (:mod:`benchmarks.rules`) -- and the facts of its report."""
    with tempfile.TemporaryDirectory(prefix="metricrec-defaults-") as out:
        cmd = [sys.executable, "-m", "metricrec", "train", *RUNS[name], *extra, "--data-dir", data_dir, "--out", out,
               "--no-progress", "--no-download"]
        if threads:
            cmd += ["--threads", str(threads)]
        load = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        process_s = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"run": name, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        report = json.loads((Path(out) / "report.json").read_text())
    return summarise(name, report, load, process_s)


def summarise(name: str, report: dict[str, Any], load: float, process_s: float) -> dict[str, Any]:
    """The numbers the table shows, from a ``report.json``."""
    epochs = report["epochs"]
    eval_s = sum(e.get("eval_seconds", 0.0) for e in epochs)
    init_s = float(report.get("init_seconds") or 0.0)
    wall = float(report["wall_seconds"])
    best = report["best_epoch"]
    return {
        "run": name, "load_before": load, "best_epoch": best, "epochs_run": len(epochs),
        "valid_recall@50": next((e["valid"].get("recall@50") for e in epochs if e["epoch"] == best), None),
        "test": {k: v for k, v in (report.get("test") or {}).items() if k.startswith(("recall", "ndcg"))},
        "init_seconds": init_s, "train_seconds_to_best": init_s + float(report["seconds_to_best"]),
        "train_seconds": init_s + float(report["train_seconds"]), "validation_seconds": eval_s,
        "wall_seconds": wall, "validation_share": eval_s / wall if wall > 0 else None,
        "process_seconds": process_s, "batch_size": report.get("batch_size_used"),
        "n_negatives": report.get("n_negatives_used"), "config": report["config"],
        "features": report.get("features"), "budget": report.get("budget"),
        "best_is_last": best == len(epochs),
        "data_stats": _data_stats(report),
    }


def _data_stats(report: dict[str, Any]) -> dict[str, int] | None:
    """The training part's users, items and pairs (what the rules of :mod:`benchmarks.rules` read)."""
    fp = (report.get("data") or {}).get("train_fingerprint")
    if not fp:
        return None
    return {"n_users": int(fp["n_users"]), "n_items": int(fp["n_items"]), "train_pairs": int(fp["nnz"])}


def tuned_peers(paths: Path | Sequence[Path] = PEERS_FILES) -> dict[str, list[dict[str, Any]]]:
    """Per data set, the tuned peers' runs of :mod:`benchmarks.compare` results files (CML's own tuned
    run as ``cml (hand-tuned)``): test Recall@50, training seconds to best, wall seconds of the loop.
    Files that do not exist are passed over; failed and skipped runs are left out."""
    files = [paths] if isinstance(paths, Path) else list(paths)
    runs = [{**r, "tuned": path.name not in UNTUNED_FILES}
            for path in files if path.exists() for r in json.loads(path.read_text())["runs"]]
    best: dict[tuple[str, str], dict[str, Any]] = {}  # a --tune file holds every grid run: keep the best on valid
    for r in runs:
        if "error" in r or "skipped" in r or r["method"] == "popularity":
            continue
        key = (r["dataset"], r["method"])
        if key not in best or r["best_valid"]["recall@50"] > best[key]["best_valid"]["recall@50"]:
            best[key] = r
    peers: dict[str, list[dict[str, Any]]] = {}
    for r in best.values():
        peers.setdefault(r["dataset"], []).append({
            "method": "cml (hand-tuned)" if r["method"] == "cml" else r["method"], "test_recall@50": r["test"]["recall@50"],
            "test_ndcg@10": r["test"].get("ndcg@10"), "tuned": r.get("tuned", True),
            "best_epoch": r["best_epoch"], "train_seconds_to_best": r["train_seconds_to_best"],
            "wall_seconds": r["train_seconds_total"] + r["eval_seconds_total"], "setting": r.get("setting")})
    return peers


def table(runs: list[dict[str, Any]], peers: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown table: each default run, then the tuned peers of its data set."""
    lines = ["| data | method | test R@50 | test NDCG@10 | best epoch / run | train s to best | wall s | "
             "validation share | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['run']} | metricrec train (defaults) | error: {r['error']} | | | | | | |")
            continue
        data = r["run"].split("+")[0]
        method = "metricrec train --item-features tags" if r["run"].endswith("+tags") else "metricrec train (defaults)"
        ndcg = r["test"].get("ndcg@10")
        lines.append(f"| {data} | **{method}** | **{r['test'].get('recall@50', float('nan')):.4f}** | "
                     f"{'' if ndcg is None else f'{ndcg:.4f}'} | "
                     f"{r['best_epoch']} / {r['epochs_run']} | {r['train_seconds_to_best']:.2f} | {r['wall_seconds']:.2f} | "
                     f"{100 * r['validation_share']:.0f}% | {r['load_before']:.1f} |")
        if r["run"].endswith("+tags"):
            continue
        for p in sorted(peers.get(data, []), key=lambda p: -p["test_recall@50"]):
            if p["method"].startswith("cml"):
                continue  # the hand-tuned CML of earlier rounds: not a peer
            label = f"{p['method']} (tuned)" if p.get("tuned", True) else f"{p['method']} (untuned)"
            nd = p.get("test_ndcg@10")
            lines.append(f"| {data} | {label} | {p['test_recall@50']:.4f} | {'' if nd is None else f'{nd:.4f}'} | "
                         f"{p['best_epoch']} | {p['train_seconds_to_best']:.2f} | {p['wall_seconds']:.2f} | | |")
    return "\n".join(lines)


def gaps(runs: list[dict[str, Any]], peers: dict[str, list[dict[str, Any]]]) -> str:
    """Per data set: the defaults' test Recall@50 against the best tuned peer's, as a ratio (never hidden)."""
    lines = ["| data | defaults R@50 | best tuned peer | its R@50 | defaults / peer | best epoch = last? |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r or r["run"].endswith("+tags"):
            continue
        rivals = [p for p in peers.get(r["run"], []) if not p["method"].startswith("cml") and p.get("tuned", True)]
        ours = r["test"].get("recall@50", float("nan"))
        if not rivals:
            lines.append(f"| {r['run']} | {ours:.4f} | (no tuned peer) | | | {'yes' if r['best_is_last'] else 'no'} |")
            continue
        top = max(rivals, key=lambda p: p["test_recall@50"])
        lines.append(f"| {r['run']} | {ours:.4f} | {top['method']} | {top['test_recall@50']:.4f} | "
                     f"{ours / top['test_recall@50']:.3f} | {'yes' if r['best_is_last'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.defaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--all", action="store_true", help="every development set (the default when --runs is not given)")
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--threads", type=int, help="--threads for metricrec train (default: its own default)")
    p.add_argument("--wait-load", type=float, help="wait for the 1-minute load average to fall below this first")
    p.add_argument("--wait-max", type=float, default=1800.0, help="give up waiting after this many seconds")
    p.add_argument("--name", default="defaults", help="results file stem (default defaults)")
    p.add_argument("--peers", type=Path, nargs="+", default=list(PEERS_FILES),
                   help="benchmarks.compare results of the tuned peers (default results/compare-real.json and "
                        "compare-ease.json)")
    args = p.parse_args(argv)
    peers = tuned_peers(args.peers)
    runs = []
    for name in args.runs:
        wait_for_load(args.wait_load, args.wait_max)
        runs.append(run_cli(name, args.data_dir, args.threads))
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("config", "features")}), flush=True)
    text = table(runs, peers) + "\n\n" + gaps(runs, peers)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(), "peers_files": [p.name for p in args.peers],
            "note": "train s to best = initialisation + epochs up to the best; wall = fit (initialisation, training, "
                    "validation), test scoring excluded; peers: training to best and training + validation of "
                    "benchmarks.compare's loop"}
    write_results(RESULTS / args.name, {"meta": meta, "runs": runs, "peers": peers}, meta_page(args.name, meta, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
