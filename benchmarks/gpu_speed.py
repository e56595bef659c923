"""CML's training epoch on a CUDA GPU (torch step) beside the CPU, at the ML-1M and ML-20M shapes.

One short script to run on a machine with a GPU::

    python -m benchmarks.gpu_speed                    # both shapes, 3 GPU epochs, 1 CPU epoch each
    python -m benchmarks.gpu_speed --presets ml-1m --gpu-epochs 5

For each shape (synthetic preset, per-user 60/20/20 split, seed 0; generated once per run) it times
``CML.fit`` epochs (d = 100, U = 10, the default batch rule, no validation) on ``cuda`` with the
torch backend and on the CPU with the default backend (numba when installed) and all the machine's
cores, in the same run, and prints both next to the 2-core CPU figures of the last
``benchmarks.scale`` run (benchmarks/results/scale.json) when there is one. Peak GPU memory is
reported too. Writes benchmarks/results/<name>.json and .md (default ``gpu_speed``). Without a CUDA
device it says so and exits with status 2 (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from metricrec import CML
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

from .common import RESULTS, write_results


def time_epochs(train: Any, device: str, epochs: int, threads: int, kernel: str) -> dict[str, Any]:
    """Seconds of ``epochs`` CML epochs on ``device`` (first epoch included, median reported)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = CML(factors=100, n_negatives=10, epochs=epochs, patience=0, device=device, kernel=kernel,
                num_threads=threads, show_progress=False, verbose=False)
    t0 = time.perf_counter()
    model.fit(train)
    seconds = [e.seconds for e in model.history.epochs]
    out = {"device": device, "kernel": model._trainer.step.backend, "batch_size": model._trainer.batch_size,
           "epoch_seconds": seconds, "median_epoch_seconds": statistics.median(seconds[1:] or seconds),
           "wall_seconds": time.perf_counter() - t0, "threads": threads}
    if device == "cuda":
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def scale_reference() -> dict[str, Any]:
    """The CPU figures of the last ``benchmarks.scale`` run, by preset ({} when absent)."""
    path = RESULTS / "scale.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {p: {"median_epoch_seconds": r["cml"]["median_epoch_seconds"], "threads": doc["settings"]["threads"],
                "when": doc["when"]} for p, r in doc["shapes"].items() if "cml" in r}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# CML on a GPU ({result['when']}, {result['gpu']}, torch {result['torch']})", "",
             "| shape | train pairs | batch | GPU s/epoch | GPU µs/pair | peak GPU MB | CPU s/epoch (this machine, "
             f"{result['cpu_threads']} threads) | CPU s/epoch (scale.json, 2 threads) |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, r in result["shapes"].items():
        g, c, ref = r["gpu"], r.get("cpu"), result["reference"].get(preset, {})
        cpu = "-" if c is None else f"{c['median_epoch_seconds']:.3f}"
        lines.append(f"| {preset} | {r['train_pairs']:,} | {g['batch_size']:,} | {g['median_epoch_seconds']:.3f} | "
                     f"{g['median_epoch_seconds'] / r['train_pairs'] * 1e6:.3f} | {g['peak_gpu_memory_mb']:.0f} | "
                     f"{cpu} | "
                     f"{ref.get('median_epoch_seconds', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="ml-1m,ml-20m")
    p.add_argument("--gpu-epochs", type=int, default=3)
    p.add_argument("--cpu-epochs", type=int, default=1, help="CPU epochs per shape in the same run (0: none)")
    p.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    p.add_argument("--name", default="gpu_speed")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    shapes: dict[str, Any] = {}
    for preset in args.presets.split(","):
        split = ratio_split(generate(preset=preset, seed=0, with_item_features=False), seed=0)
        train = split.train.matrix
        del split
        r: dict[str, Any] = {"train_pairs": int(train.nnz), "shape": list(train.shape)}
        r["gpu"] = time_epochs(train, "cuda", args.gpu_epochs, 1, "torch")
        print(f"{preset}: GPU {r['gpu']['median_epoch_seconds']:.3f} s/epoch", flush=True)
        if args.cpu_epochs:
            r["cpu"] = time_epochs(train, "cpu", args.cpu_epochs, args.cpu_threads, "auto")
            print(f"{preset}: CPU {r['cpu']['median_epoch_seconds']:.3f} s/epoch", flush=True)
        shapes[preset] = r
    result = {"shapes": shapes, "reference": scale_reference(), "gpu": torch.cuda.get_device_name(0),
              "cpu_threads": args.cpu_threads, "torch": torch.__version__, "python": platform.python_version(),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_results(RESULTS / args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
