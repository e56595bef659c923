"""Training speed: seconds per epoch of CML vs LightFM-WARP on the ML-1M-shaped synthetic set.

Same data (synthetic preset "ml-1m", per-user 60/20/20 split, seed 0: ~598k training pairs), same
thread count, same process, measured in one run. Both go through the benchmark peer protocol
(:mod:`benchmarks.peers`): one epoch = ``partial_fit_epoch`` = sampling + forward + backward + update
over every training pair, evaluation excluded (docs/protocol.md). Epochs of the two methods are
interleaved (CML, LightFM, CML, ...) so that background load hits both alike; the median is reported.

    python -m benchmarks.speed                      # d=100, U=10, 2 threads, 7 epochs each
    python -m benchmarks.speed --negatives 20 --epochs 5

Writes benchmarks/results/<name>.json and <name>.md (``--name`` defaults to ``speed``). Also reports
where one more CML epoch's time goes (shuffle / sampling / kernel step / optimiser), from the
library trainer's phase clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

import scipy.sparse as sp
import torch

from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

from .cml_peer import CMLPeer
from .common import RESULTS, write_json, write_text

SEED_REFERENCE_SECONDS = 120.0  # the reference TensorFlow CML's seconds per epoch on this data

def cml_epoch_breakdown(peer: CMLPeer, train: sp.csr_matrix) -> dict[str, float]:
    """Train one more epoch with the trainer's phase clock on and split its seconds by phase.

    Returns
    -------
    dict
        Wall seconds per phase of the library's trainer (``shuffle``, ``pairs``, ``sampling``,
        ``step`` = the fused kernel, ``optimiser``), ``other`` (what the clock does not cover, e.g.
        the model's end-of-epoch work) and ``total`` (the epoch's ``last_epoch_seconds``).
    """
    total, phases = peer.profiled_epoch(train)
    return {**phases, "other": max(0.0, total - sum(phases.values())), "total": total}


def interleaved_epochs(cml: CMLPeer, lightfm: Any, train: sp.csr_matrix, epochs: int) -> tuple[list[float], list[float]]:
    """``epochs`` epochs of each method, alternating; returns their seconds per epoch."""
    cml_s: list[float] = []
    lfm_s: list[float] = []
    for epoch in range(epochs):
        cml_s.append(cml.partial_fit_epoch(train))
        if lightfm is not None:
            lfm_s.append(lightfm.partial_fit_epoch(train))
        print(f"epoch {epoch + 1}: CML {cml_s[-1]:.3f} s" + (f"  LightFM-WARP {lfm_s[-1]:.3f} s" if lfm_s else ""),
              flush=True)
    return cml_s, lfm_s


def make_lightfm(args: argparse.Namespace) -> Any:
    """LightFM-WARP with the same d, negatives (max_sampled) and threads, or None."""
    if args.no_lightfm:
        return None
    try:
        from .peers import LightFMPeer

        return LightFMPeer(loss="warp", no_components=args.factors, max_sampled=args.negatives, num_threads=args.threads)
    except ImportError as exc:
        print(f"LightFM unavailable ({exc}); timing CML only", file=sys.stderr)
        return None


def markdown(result: dict[str, Any]) -> str:
    """The results table."""
    r = result
    md = [
        f"# Training speed ({r['when']}, {r['threads']} threads, d={r['factors']}, U={r['n_negatives']}, "
        f"CML kernel {r['cml_kernel']}, batch {r['cml_batch_size']})",
        "",
        "| method | median s/epoch | epochs (s) |",
        "|---|---|---|",
        f"| metricrec CML | {r['cml_median']:.3f} | {', '.join(f'{s:.3f}' for s in r['cml_epoch_seconds'])} |",
    ]
    if r["lightfm_warp_epoch_seconds"]:
        md.append(f"| LightFM-WARP | {r['lightfm_warp_median']:.3f} | "
                  f"{', '.join(f'{s:.3f}' for s in r['lightfm_warp_epoch_seconds'])} |")
    md += ["", f"CML speed-up over the seed's {SEED_REFERENCE_SECONDS:.0f} s/epoch: {r['speedup_vs_seed']:.0f}x",
           "", "One CML epoch by phase (s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["cml_breakdown_one_epoch"].items()),
           "", f"Load average (1 min) at the start: {r['load_average_1min_at_start']:.2f}"]
    return "\n".join(md) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--factors", type=int, default=100)
    p.add_argument("--negatives", type=int, default=10)
    p.add_argument("--no-lightfm", action="store_true")
    p.add_argument("--kernel", choices=("auto", "torch", "numba"), default="auto")
    p.add_argument("--batch-size", type=int, help="CML batch size (default: the library default rule)")
    p.add_argument("--name", default="speed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    train = ratio_split(generate(preset="ml-1m", seed=0), seed=0).train.matrix
    cml = CMLPeer(num_threads=args.threads, kernel=args.kernel, factors=args.factors, n_negatives=args.negatives,
                  batch_size=args.batch_size)
    lightfm = make_lightfm(args)
    cml_s, lfm_s = interleaved_epochs(cml, lightfm, train, args.epochs)
    breakdown = cml_epoch_breakdown(cml, train)
    lfm_median = statistics.median(lfm_s) if lfm_s else None
    result = {
        "data": "synthetic ml-1m preset, ratio_split seed 0",
        "train_pairs": int(train.nnz), "n_users": int(train.shape[0]), "n_items": int(train.shape[1]),
        "threads": args.threads, "factors": args.factors, "n_negatives": args.negatives,
        "cml_config": cml.params(), "cml_kernel": cml.backend(),
        "cml_batch_size": cml.model.config.resolved_batch_size(train.nnz),
        "cml_epoch_seconds": cml_s, "cml_median": statistics.median(cml_s),
        "lightfm_warp_epoch_seconds": lfm_s, "lightfm_warp_median": lfm_median,
        "ratio_lightfm_over_cml": (lfm_median / statistics.median(cml_s)) if lfm_s else None,
        "seed_reference_seconds_per_epoch": SEED_REFERENCE_SECONDS,
        "speedup_vs_seed": SEED_REFERENCE_SECONDS / statistics.median(cml_s),
        "cml_breakdown_one_epoch": breakdown, "load_average_1min_at_start": load,
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(RESULTS / f"{args.name}.json", result)
    text = markdown(result)
    write_text(RESULTS / f"{args.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
