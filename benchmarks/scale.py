"""Scaling: CML's cost per training pair from the ML-1M shape to the ML-20M shape, beside LightFM-WARP.

For each shape (the library's synthetic presets ``ml-1m`` and ``ml-20m``, per-user 60/20/20 split,
seed 0) the training matrix is generated once and cached as an ``.npz`` in a temporary folder (deleted
at the end; never committed). Each method then trains in a fresh process on that same file, so its
peak RSS is its own (data loading included, generation excluded):

- metricrec CML through its public API (``CML.fit_partial``, one epoch per call, d = 100, U = 10,
  the default batch rule, the numba kernel), seconds per epoch from ``last_epoch_seconds``, then one
  more epoch with the trainer's phase clock on (shuffle, pairs, sampling, kernel, covariance, optimiser);
- LightFM-WARP through :class:`benchmarks.peers.LightFMPeer` (d = 100, ``max_sampled`` = 10, the same
  thread count), one ``fit_partial`` epoch per call.

With both shapes, the ML-1M workers run again after the ML-20M ones and their epochs are pooled
(the median over both runs), so that background load weighs on both sides of the per-pair ratio.

Then two ``metricrec train`` runs on the ML-1M shape with the same global batch: one process, and
two gloo ranks on 127.0.0.1 under ``torchrun``; their test metrics, epoch times and the bytes each
rank puts into collectives per step.

    python -m benchmarks.scale                           # both shapes, 3 epochs each, 2 threads
    python -m benchmarks.scale --presets ml-1m --epochs 5 --name scale-ml1m

Writes benchmarks/results/<name>.json and <name>.md (default ``scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch

from .common import RESULTS, ROOT, write_results


# ---------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB): ``VmHWM``, the high-water mark of this
    process's own memory. (``ru_maxrss`` is no good here: Linux carries the parent's peak over
    fork and exec, so every worker would report the data generator's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------- data
def prepare(preset: str, cache: Path) -> dict[str, Any]:
    """Generate and split ``preset`` once; save the training matrix to ``cache`` (reused if there)."""
    path, valid_path = cache / f"{preset}-train.npz", cache / f"{preset}-valid.npz"
    if not (path.exists() and valid_path.exists()):
        from metricrec.data.splits import ratio_split
        from metricrec.data.synthetic import generate

        t0 = time.perf_counter()
        split = ratio_split(generate(preset=preset, seed=0, with_item_features=False), seed=0)
        sp.save_npz(path, sp.csr_matrix(split.train.matrix), compressed=False)
        sp.save_npz(valid_path, sp.csr_matrix(split.valid.matrix), compressed=False)
        del split
        print(f"{preset}: generated and split in {time.perf_counter() - t0:.1f} s", flush=True)
    train = sp.load_npz(path)
    return {"preset": preset, "path": str(path), "valid_path": str(valid_path), "train_pairs": int(train.nnz), "n_users": int(train.shape[0]),
            "n_items": int(train.shape[1])}


def _load(path: str) -> sp.csr_matrix:
    return sp.csr_matrix(sp.load_npz(path))


def proposed_batch_size(n_pairs: int, n_users: int, n_items: int) -> int:
    """The batch rule proposed in docs/scaling.md: an eighth of the pairs within [1,000, cap], the cap
    50,000 or five times the number of rows (users + items), whichever is larger -- so that a step
    touches a bounded number of rows per pair (the covariance term and the optimiser cost per
    distinct row). Unchanged up to ~10k rows (ML-1M: 50,000); 826,185 on the ML-20M shape."""
    return int(min(max(1_000, n_pairs // 8), max(50_000, 5 * (n_users + n_items))))


def valid_recall(scorer: Any, args: argparse.Namespace, train: sp.csr_matrix) -> float:
    """Valid Recall@50 over a fixed sample of ``--quality-users`` users (train items excluded)."""
    import numpy as np

    from metricrec.metrics import evaluate

    valid = _load(args.valid)
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    if users.size > args.quality_users:
        users = np.sort(np.random.default_rng(0).choice(users, args.quality_users, replace=False))
    return float(evaluate(scorer, valid, train, ks=(50,), metrics=("recall",), users=users)["recall@50"])


# ---------------------------------------------------------------------- workers (child processes)
def cml_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Epoch times, a phase profile and peak RSS of CML on one training matrix."""
    from metricrec import CML
    from metricrec.models.cml import step_numba, step_torch

    mem = {"imports": peak_rss_mb()}
    train = _load(args.data)
    mem["data loaded"] = peak_rss_mb()
    model = CML(factors=args.factors, n_negatives=args.negatives, batch_size=args.batch_size, epochs=args.epochs,
                patience=0, num_threads=args.threads, kernel=args.kernel, show_progress=False, verbose=False)
    model.fit(train)  # one trainer, no validation: per-epoch training seconds in the history
    seconds = [e.seconds for e in model.history.epochs]
    print("  CML epochs: " + ", ".join(f"{x:.2f} s" for x in seconds), flush=True)
    mem["setup + training"] = peak_rss_mb()
    quality = valid_recall(model.scorer(), args, train) if args.valid else None
    trainer = model._trainer  # the trainer fit keeps: one more epoch with its phase clock on
    cov = {"seconds": 0.0}
    original = step_torch.add_covariance_term

    def timed_cov(*a: Any, **kw: Any) -> float:
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            cov["seconds"] += time.perf_counter() - t0

    step_torch.add_covariance_term = step_numba.add_covariance_term = timed_cov
    trainer.phase_seconds = {}
    record = trainer.run_epoch()
    phases = dict(trainer.phase_seconds)
    phases["kernel"] = phases.pop("step") - cov["seconds"]
    phases["covariance"] = cov["seconds"]
    mem["phase profile"] = peak_rss_mb()
    return {"epoch_seconds": seconds, "profiled_epoch_seconds": record.seconds, "phases_seconds": phases,
            "batch_size": trainer.batch_size, "kernel": trainer.step.backend, "peak_rss_mb": mem,
            "training_peak_rss_mb": mem["setup + training"], "valid_recall@50": quality, "rss_now_mb": rss_mb()}


def lightfm_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Epoch times and peak RSS of LightFM-WARP on one training matrix."""
    from .peers import LightFMPeer

    mem = {"imports": peak_rss_mb()}
    train = _load(args.data)
    mem["data loaded"] = peak_rss_mb()
    peer = LightFMPeer(loss="warp", no_components=args.factors, max_sampled=args.negatives,
                       num_threads=args.threads)
    seconds = []
    for epoch in range(args.epochs):
        seconds.append(peer.partial_fit_epoch(train))
        print(f"  LightFM-WARP epoch {epoch + 1}: {seconds[-1]:.2f} s", flush=True)
    mem["setup + training"] = peak_rss_mb()
    quality = valid_recall(peer.scorer(), args, train) if args.valid else None
    return {"epoch_seconds": seconds, "peak_rss_mb": mem, "training_peak_rss_mb": mem["setup + training"],
            "valid_recall@50": quality, "rss_now_mb": rss_mb()}


def run_worker(kind: str, data: dict[str, Any], args: argparse.Namespace, batch_size: int | None = None) -> dict[str, Any]:
    """Run a worker in a fresh process (its own peak RSS); returns its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, "-m", "benchmarks.scale", "--worker", kind, "--data", data["path"], "--out", out,
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--factors", str(args.factors),
           "--negatives", str(args.negatives), "--kernel", args.kernel, "--quality-users", str(args.quality_users)]
    if args.quality_users:
        cmd += ["--valid", data["valid_path"]]
    if batch_size or args.batch_size:
        cmd += ["--batch-size", str(batch_size or args.batch_size)]
    load = os.getloadavg()[0]
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    result.update(load_before=load, load_after=os.getloadavg()[0])
    return result


def warm_up() -> None:
    """Compile the numba kernels (or load numba's cache) once, so no worker's epoch pays for it."""
    from metricrec import CML
    from metricrec.data.synthetic import generate

    CML(factors=8, epochs=1, show_progress=False, verbose=False).fit(generate(preset="small", seed=0))


def _merge(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Pool two runs of one method on one shape: epochs together, the larger peak RSS."""
    first["epoch_seconds"] = first["epoch_seconds"] + second["epoch_seconds"]
    first["training_peak_rss_mb"] = max(first["training_peak_rss_mb"], second["training_peak_rss_mb"])
    first["load_after"] = second["load_after"]
    first["runs"] = 2


# ---------------------------------------------------------------------- 2 gloo ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``metricrec train`` on the ML-1M shape: one process vs two gloo ranks (same global batch)."""
    common = ["-m", "metricrec", "train", "--synthetic", "ml-1m", "--epochs", str(args.gloo_epochs),
              "--patience", "0", "--no-progress", "--factors", str(args.factors)]
    runs = {
        "one process (2 threads)": [sys.executable, *common, "--threads", str(args.threads), "--out",
                                    str(work / "single")],
        "2 gloo ranks (1 thread each)": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                         f"--master_port={_free_port()}", *common, "--threads", "1", "--out",
                                         str(work / "ddp")],
    }
    out: dict[str, Any] = {}
    for name, cmd in runs.items():
        print(f"gloo benchmark: {name}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        report = json.loads((Path(cmd[-1]) / "report.json").read_text())
        out[name] = {"wall_seconds": time.perf_counter() - t0, "median_epoch_seconds": report["median_epoch_seconds"],
                     "batch_size": report["batch_size_used"], "best_epoch": report["best_epoch"],
                     "test": {k: report["test"][k] for k in ("recall@10", "recall@50", "ndcg@10", "map@10")},
                     "parallel": report.get("parallel"),
                     "peak_rss_mb_rank0": report["environment"].get("peak_rss_mb")}
    return out


# ---------------------------------------------------------------------- report
def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


METHODS = (("cml", "metricrec CML"), ("cml_proposed_rule", "metricrec CML, proposed batch rule"),
           ("lightfm_warp", "LightFM-WARP"))


def summarise(shapes: dict[str, Any]) -> dict[str, Any]:
    """Per-pair costs, ratios and targets from the per-shape results."""
    for r in shapes.values():
        n = r["data"]["train_pairs"]
        for method, _ in METHODS:
            if method in r:
                m = r[method]
                m["median_epoch_seconds"] = _median(m["epoch_seconds"])
                m["us_per_pair"] = m["median_epoch_seconds"] / n * 1e6
                if "phases_seconds" in m:
                    m["phases_us_per_pair"] = {k: v / n * 1e6 for k, v in m["phases_seconds"].items()}
    s: dict[str, Any] = {}
    if {"ml-1m", "ml-20m"} <= set(shapes):
        small, big = shapes["ml-1m"], shapes["ml-20m"]
        for method in ("cml", "cml_proposed_rule"):
            if method in big:
                s[f"{method}: µs/pair ml-20m / ml-1m (target <= 1.5)"] = big[method]["us_per_pair"] / small["cml"]["us_per_pair"]
    big = shapes.get("ml-20m", {})
    if "lightfm_warp" in big:
        lfm = big["lightfm_warp"]
        for method in ("cml", "cml_proposed_rule"):
            if method in big:
                s[f"{method}: s/epoch ml-20m / LightFM-WARP's (target <= 1)"] = (
                    big[method]["median_epoch_seconds"] / lfm["median_epoch_seconds"])
                s[f"{method}: peak RSS ml-20m / LightFM-WARP's (target <= 2)"] = (
                    big[method]["training_peak_rss_mb"] / lfm["training_peak_rss_mb"])
    return s


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown tables."""
    a = result["settings"]
    lines = [f"# Scaling to the ML-20M shape ({result['when']}, {a['threads']} threads, d={a['factors']}, "
             f"U={a['negatives']}, {a['epochs']} epochs each, {result['cpus']} CPUs)", "",
             "| shape | train pairs | users x items | method | batch | median s/epoch | µs/pair | peak RSS MB "
             f"| valid R@50 ({a['quality_users']} users) | epochs (s) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, r in result["shapes"].items():
        d = r["data"]
        for method, label in METHODS:
            if method not in r:
                continue
            m = r[method]
            q = m.get("valid_recall@50")
            lines.append(f"| {preset} | {d['train_pairs']:,} | {d['n_users']:,} x {d['n_items']:,} | {label} | "
                         f"{m.get('batch_size', '-')} | {m['median_epoch_seconds']:.2f} | {m['us_per_pair']:.3f} | "
                         f"{m['training_peak_rss_mb']:.0f} | {'-' if q is None else f'{q:.4f}'} | "
                         f"{', '.join(f'{x:.2f}' for x in m['epoch_seconds'])} | "
                         f"{m['load_before']:.1f} -> {m['load_after']:.1f} |")
    lines += ["", *[f"- {k}: {v:.3f}" for k, v in result["summary"].items()], ""]
    lines += _phase_table(result["shapes"])
    if result.get("gloo"):
        lines += ["", "## One process vs 2 gloo ranks (ML-1M shape, `metricrec train`, same global batch)", "",
                  "| run | median s/epoch | batch | R@10 | R@50 | NDCG@10 | bytes/step/rank | collectives/step |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, g in result["gloo"].items():
            per = (g["parallel"] or {}).get("per_step", {})
            lines.append(f"| {name} | {g['median_epoch_seconds']:.3f} | {g['batch_size']:,} | {g['test']['recall@10']:.4f} "
                         f"| {g['test']['recall@50']:.4f} | {g['test']['ndcg@10']:.4f} | "
                         f"{per.get('bytes', 0) / 1e6:.2f} MB | {per.get('calls', 0):.1f} |")
    return "\n".join(lines) + "\n"


def _phase_table(shapes: dict[str, Any]) -> list[str]:
    names = ["shuffle", "pairs", "sampling", "kernel", "covariance", "optimiser"]
    lines = ["CML, one more epoch by phase (µs per training pair) and peak RSS by phase (MB):", "",
             "| shape | batch | " + " | ".join(names) + " | total | RSS: imports | RSS: data | RSS: setup + training |",
             "|---|---|" + "---|" * (len(names) + 4)]
    for preset, r in shapes.items():
        for method in ("cml", "cml_proposed_rule"):
            if method not in r:
                continue
            ph, mem = r[method]["phases_us_per_pair"], r[method]["peak_rss_mb"]
            lines.append(f"| {preset} | {r[method]['batch_size']:,} | " + " | ".join(f"{ph.get(k, 0.0):.3f}" for k in names)
                         + f" | {sum(ph.values()):.3f} | {mem['imports']:.0f} | {mem['data loaded']:.0f} | "
                         f"{mem['setup + training']:.0f} |")
    return lines


# ---------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="ml-1m,ml-20m")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per method and shape")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--factors", type=int, default=100)
    p.add_argument("--negatives", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="CML batch size (default: the library's rule)")
    p.add_argument("--kernel", default="auto")
    p.add_argument("--no-lightfm", action="store_true")
    p.add_argument("--gloo-epochs", type=int, default=10, help="epochs of the 2-rank run (0: skip it)")
    p.add_argument("--cache", help="folder for the generated training matrices (default: a temporary one)")
    p.add_argument("--name", default="scale")
    p.add_argument("--proposed-rule", action="store_true",
                   help="also run CML with the batch rule proposed in docs/scaling.md where it differs")
    p.add_argument("--quality-users", type=int, default=3000,
                   help="valid Recall@50 after training on this many sampled users (0: skip)")
    p.add_argument("--worker", choices=("cml", "lightfm"), help=argparse.SUPPRESS)
    p.add_argument("--valid", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        torch.set_num_threads(args.threads)
        result = (cml_worker if args.worker == "cml" else lightfm_worker)(args)
        Path(args.out).write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="metricrec-scale-") as tmp:
        cache = Path(args.cache or tmp)
        cache.mkdir(parents=True, exist_ok=True)
        warm_up()
        shapes: dict[str, Any] = {}
        for preset in args.presets.split(","):
            data = prepare(preset, cache)
            print(f"{preset}: {data['train_pairs']:,} training pairs, {data['n_users']:,} x {data['n_items']:,}", flush=True)
            shapes[preset] = {"data": {k: v for k, v in data.items() if k != "path"}}
            shapes[preset]["cml"] = run_worker("cml", data, args)
            proposed = proposed_batch_size(data["train_pairs"], data["n_users"], data["n_items"])
            if args.proposed_rule and proposed != shapes[preset]["cml"]["batch_size"]:
                shapes[preset]["cml_proposed_rule"] = run_worker("cml", data, args, batch_size=proposed)
            if not args.no_lightfm:
                shapes[preset]["lightfm_warp"] = run_worker("lightfm", data, args)
        if "ml-1m" in shapes and len(shapes) > 1:  # the small shape again, after the big one: the same
            again = prepare("ml-1m", cache)        # load on the machine for both sides of the ratio
            for method, kind in (("cml", "cml"), ("lightfm_warp", "lightfm")):
                if method in shapes["ml-1m"]:
                    _merge(shapes["ml-1m"][method], run_worker(kind, again, args))
        gloo = gloo_run(args, Path(tmp)) if args.gloo_epochs else None
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "data", "out")},
              "shapes": shapes, "summary": summarise(shapes), "gloo": gloo, "torch": torch.__version__,
              "python": platform.python_version(), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_results(RESULTS / args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
