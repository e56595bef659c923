"""The CML family side by side (issue 16): every model of ``metricrec train --model`` on the development sets.

Each run is ``metricrec train --model NAME --dataset ...`` in a fresh process, exactly as a user
would type it: the protocol's split (per-user 60/20/20, seed 0; the sets' own splits where
:data:`benchmarks.defaults.RUNS` says so), the model's defaults, the best epoch on valid. From its
``report.json``: test Recall@50 and NDCG@10 at the best epoch, mean seconds per epoch (training only),
seconds to the best epoch (initialisation included), and the peak memory of the process (its
``ru_maxrss``, read with ``os.wait4``).

``--tune`` adds, per model and set, the small grid of :data:`GRIDS` (each point a run of its own),
chosen on valid Recall@50 only; the test numbers of the chosen point are then reported beside the
defaults. The tuned peers of :mod:`benchmarks.compare` (``benchmarks/results/compare-*.json``) stand
under each set.

    python -m benchmarks.family --data-dir ../shared/data --sets ml-100k citeulike-a --threads 1
    python -m benchmarks.family --models cml dpcml --sets ml-100k --tune

Writes ``benchmarks/results/family.json`` and ``family.md`` (``--name`` changes the stem). A run
that fails is a row with its error, never a missing row.
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
from .defaults import PEERS_FILES, RUNS, load_average, tuned_peers, wait_for_load

#: The models, in the order of the table (``metricrec train --model`` values).
MODELS = ("cml", "sml", "dpcml", "sfcml", "transcf", "lrml", "bpr")
#: The development sets a family run takes by default (every set of :data:`benchmarks.defaults.RUNS`
#: but the feature and synthetic variants, which are CML's own comparisons).
SETS = tuple(name for name in RUNS if "+" not in name and not name.startswith("synthetic"))
#: The tuning grid of each model: lists of extra flags, each a run. Small on purpose (a few points around
#: the defaults: the learning rate, and the model's own main setting), chosen on valid only.
GRIDS: dict[str, list[list[str]]] = {
    "cml": [["--learning-rate", lr] for lr in ("0.1", "1.0")],
    "sml": [["--learning-rate", lr] for lr in ("0.1", "0.5")] + [["--margin-reg", g] for g in ("0.01", "0.2")],
    "dpcml": [["--learning-rate", lr] for lr in ("0.1", "1.0")] + [["--n-vectors", c] for c in ("2", "8")],
    "sfcml": [["--learning-rate", lr] for lr in ("0.1", "1.0")],
    "transcf": [["--learning-rate", lr] for lr in ("0.1", "1.0")],
    "lrml": [["--learning-rate", lr] for lr in ("0.1", "1.0")],
    "bpr": [["--learning-rate", lr] for lr in ("0.01", "0.1")],
}


def run_model(model: str, data: str, data_dir: str, threads: int | None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One ``metricrec train --model MODEL`` run on the set ``data`` in a fresh process; its numbers."""
    with tempfile.TemporaryDirectory(prefix="metricrec-family-") as out:
        cmd = [sys.executable, "-m", "metricrec", "train", "--model", model, *RUNS[data], *extra,
               "--data-dir", data_dir, "--out", out, "--no-progress", "--no-download"]
        if threads:
            cmd += ["--threads", str(threads)]
        load = load_average()
        base = {"model": model, "data": data, "flags": list(extra), "load_before": load}
        t0 = time.perf_counter()
        returncode, stderr, peak_mb = _run_measured(cmd)
        process_s = time.perf_counter() - t0
        if returncode != 0:
            return {**base, "error": (stderr.strip().splitlines() or [f"exit {returncode}"])[-1]}
        report = json.loads((Path(out) / "report.json").read_text())
    return {**base, **summarise(report), "process_seconds": process_s, "peak_rss_mb": peak_mb}


#: Runs its arguments as a command and writes the command's own peak RSS (KiB) to the file named first.
#: A child's ``ru_maxrss`` starts at the resident size of the process that spawned it (Linux carries
#: the spawner's high-water mark through ``exec``), so the command is spawned from this small
#: interpreter, not from the benchmark (or a test runner) holding a gigabyte.
_PEAK_WRAPPER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _run_measured(cmd: list[str]) -> tuple[int, str, float]:
    """Run ``cmd`` to its end; (exit code, stderr, peak resident MiB of that process alone).

    The peak is the command's own ``ru_maxrss`` (Linux: KiB), read by :data:`_PEAK_WRAPPER`, not the
    maximum over every child this process had (``RUSAGE_CHILDREN``) nor a figure that starts at this
    process's own size."""
    with tempfile.TemporaryFile("w+") as err, tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, peak.name, *cmd], stdout=subprocess.DEVNULL,
                              stderr=err, cwd=ROOT)
        err.seek(0)
        text = peak.read().strip()
        return proc.returncode, err.read(), (int(text) / 1024.0 if text else float("nan"))


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers from a ``report.json``."""
    epochs = report["epochs"]
    seconds = [float(e["seconds"]) for e in epochs]
    best = int(report["best_epoch"])
    test = report.get("test") or {}
    return {
        "best_epoch": best, "epochs_run": len(epochs),
        "valid_recall@50": next((e["valid"].get("recall@50") for e in epochs if e["epoch"] == best), None),
        "test_recall@50": test.get("recall@50"), "test_ndcg@10": test.get("ndcg@10"),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "seconds_to_best": float(report.get("init_seconds") or 0.0) + float(report["seconds_to_best"]),
        "wall_seconds": float(report["wall_seconds"]), "config": report.get("config"),
    }


def choose(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the best valid Recall@50 (ties: the earlier, i.e. the defaults first)."""
    ok = [r for r in runs if "error" not in r and r.get("valid_recall@50") is not None]
    return max(ok, key=lambda r: r["valid_recall@50"]) if ok else None


def table(rows: list[dict[str, Any]], peers: dict[str, list[dict[str, Any]]]) -> str:
    """Per set: each model at its defaults (and tuned, when run), then the set's tuned peers."""
    lines = ["| data | model | setting | test R@50 | test NDCG@10 | s / epoch | s to best | best epoch / run | "
             "peak MiB | vs CML defaults |", "|---|---|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in rows):
        here = [r for r in rows if r["data"] == data]
        cml = next((r for r in here if r["model"] == "cml" and r["role"] == "defaults" and "error" not in r), None)
        for r in here:
            setting = "defaults" if r["role"] == "defaults" else "tuned: " + (" ".join(r["flags"]) or "defaults")
            if "error" in r:
                lines.append(f"| {data} | {r['model']} | {setting} | error: {r['error']} | | | | | | |")
                continue
            rel = "" if cml is None else f"{r['test_recall@50'] / cml['test_recall@50'] - 1:+.1%}"
            nd, peak = r.get("test_ndcg@10"), r.get("peak_rss_mb")
            lines.append(f"| {data} | {r['model']} | {setting} | {r['test_recall@50']:.4f} | "
                         f"{'' if nd is None else f'{nd:.4f}'} | {r['seconds_per_epoch']:.3f} | "
                         f"{r['seconds_to_best']:.2f} | {r['best_epoch']} / {r['epochs_run']} | "
                         f"{'' if peak is None else f'{peak:.0f}'} | {rel} |")
        for p in sorted(peers.get(data, []), key=lambda p: -p["test_recall@50"]):
            if p["method"].startswith("cml") or not p.get("tuned", True):
                continue
            nd = p.get("test_ndcg@10")
            lines.append(f"| {data} | {p['method']} (peer) | tuned | {p['test_recall@50']:.4f} | "
                         f"{'' if nd is None else f'{nd:.4f}'} | | {p['train_seconds_to_best']:.2f} | "
                         f"{p['best_epoch']} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.family", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(RUNS))
    p.add_argument("--tune", action="store_true", help="also run each model's grid (GRIDS), chosen on valid")
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--threads", type=int, help="--threads for metricrec train")
    p.add_argument("--wait-load", type=float, help="wait for the 1-minute load average to fall below this first")
    p.add_argument("--wait-max", type=float, default=600.0)
    p.add_argument("--name", default="family", help="results file stem (default family)")
    p.add_argument("--reuse", type=Path, help="a family.json whose rows are kept except those of the (model, set) "
                                              "pairs run now (rerun a few models or sets, keep the rest)")
    args = p.parse_args(argv)
    fresh = {(m, d) for m in args.models for d in args.sets}
    kept = json.loads(args.reuse.read_text()) if args.reuse and args.reuse.exists() else {"rows": []}
    kept_rows = kept["rows"]
    # the grids of every tuned row kept, and of the models tuned now
    grids = {**(kept.get("meta", {}).get("grids") or {}), **({m: GRIDS[m] for m in args.models} if args.tune else {})}
    rows: list[dict[str, Any]] = [r for r in kept_rows if (r.get("model"), r.get("data")) not in fresh]
    order = {name: i for i, name in enumerate(RUNS)}
    rank = {name: i for i, name in enumerate(MODELS)}
    peers = tuned_peers(PEERS_FILES)

    def write() -> None:  # after every set: a long run interrupted keeps what it measured
        meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(), "threads": args.threads,
                "sets_done": sorted({r["data"] for r in rows}), "rerun_now": sorted(map(list, fresh)) if kept_rows else None,
                "grids": grids or None,
                "note": "s / epoch: mean training seconds of an epoch (validation excluded); s to best: "
                        "initialisation + epochs up to the best; peak MiB: the training process's ru_maxrss; tuned: "
                        "the grid point with the best valid Recall@50 (the defaults are a point of it)"}
        rows.sort(key=lambda r: (order.get(r.get("data"), len(order)), rank.get(r.get("model"), len(rank))))
        text = table(rows, peers)
        write_results(RESULTS / args.name, {"meta": meta, "rows": rows}, meta_page(args.name, meta, text))

    for data in args.sets:
        for model in args.models:
            wait_for_load(args.wait_load, args.wait_max)
            default = {**run_model(model, data, args.data_dir, args.threads), "role": "defaults"}
            rows.append(default)
            print(json.dumps({k: v for k, v in default.items() if k != "config"}), flush=True)
            if args.tune:
                grid = [default] + [{**run_model(model, data, args.data_dir, args.threads, flags), "role": "grid"}
                                    for flags in GRIDS[model]]
                best = choose(grid)
                if best is not None:
                    rows.append({**best, "role": "tuned", "grid": [{"flags": g["flags"],
                                 "valid_recall@50": g.get("valid_recall@50"), "error": g.get("error")} for g in grid]})
        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
