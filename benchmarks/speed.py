"""Training speed: seconds per epoch of CML vs LightFM-WARP on the ML-1M-shaped synthetic set.

Same data (synthetic preset "ml-1m", per-user 60/20/20 split, seed 0: ~598k training pairs), same
thread count, same process start-up, measured in one run. One epoch = sampling + forward + backward
+ update over every training pair (evaluation excluded). Epochs of the two methods are interleaved
(CML, LightFM, CML, ...) so that background load hits both alike; the median is reported.

    python benchmarks/speed.py                      # d=100, U=10, 2 threads, 7 epochs each
    python benchmarks/speed.py --negatives 20 --epochs 5

Writes benchmarks/results/speed.json and speed.md. Also reports the time split of one CML epoch
(sampling / kernel / optimiser) to show what bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from metricrec.models.cml.config import CMLConfig  # noqa: E402
from metricrec import kernel_numba  # noqa: E402
from metricrec.training.optim import GradBuffer
from metricrec.models.cml.step_torch import cml_step  # noqa: E402
from metricrec.training.optim import make_optimizer  # noqa: E402
from metricrec.training.sampling import make_sampler  # noqa: E402
from metricrec.data.splits import ratio_split  # noqa: E402
from metricrec.data.synthetic import generate  # noqa: E402
from metricrec.training.trainer import Trainer  # noqa: E402


def cml_epoch_breakdown(cfg: CMLConfig, train, user: torch.Tensor, item: torch.Tensor, kernel: str) -> dict[str, float]:
    """One epoch with the trainer's exact steps and thread arrangement, timing each phase."""
    threads = torch.get_num_threads()
    step = cml_step
    if kernel == "numba":
        kernel_numba.set_threads(threads)
        torch.set_num_threads(1)
        step = kernel_numba.cml_step_numba
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    users_all, items_all = torch.from_numpy(rows), torch.from_numpy(train.indices.astype(np.int64))
    sampler = make_sampler(cfg.sampler, train, seed=cfg.seed)
    opt_u, opt_i = make_optimizer(cfg.optimizer, user, cfg.learning_rate), make_optimizer(cfg.optimizer, item, cfg.learning_rate)
    gu, gi = GradBuffer(*user.shape), GradBuffer(*item.shape)
    t = {"shuffle": 0.0, "sampling": 0.0, "kernel": 0.0, "optimiser": 0.0}
    a = time.perf_counter()
    order = torch.randperm(len(rows))
    t["shuffle"] = time.perf_counter() - a
    batch_size = cfg.resolved_batch_size(len(rows))
    for lo in range(0, len(rows), batch_size):
        idx = order[lo:lo + batch_size]
        u, i = users_all[idx], items_all[idx]
        a = time.perf_counter()
        draw = sampler.sample(u, cfg.n_negatives, cfg.negative_group)
        b = time.perf_counter()
        step(user, item, u, i, draw, gu, gi, margin=cfg.margin, cov_weight=cfg.cov_weight, cov_formula=cfg.cov_formula)
        c = time.perf_counter()
        opt_u.step_buffer(gu, cfg.max_norm)
        opt_i.step_buffer(gi, cfg.max_norm)
        d = time.perf_counter()
        t["sampling"] += b - a
        t["kernel"] += c - b
        t["optimiser"] += d - c
    t["total"] = sum(t.values())
    torch.set_num_threads(threads)
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--factors", type=int, default=100)
    p.add_argument("--negatives", type=int, default=10)
    p.add_argument("--no-lightfm", action="store_true")
    p.add_argument("--kernel", choices=("auto", "torch", "numba"), default="auto")
    p.add_argument("--batch-size", type=int, help="CML batch size (default: the library default rule)")
    p.add_argument("--name", default="speed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = generate(preset="ml-1m", seed=0)
    split = ratio_split(data, seed=0)
    train = split.train.matrix
    cfg = CMLConfig(factors=args.factors, n_negatives=args.negatives, epochs=1, patience=0, batch_size=args.batch_size)
    gen = torch.Generator().manual_seed(0)
    user = torch.randn(train.shape[0], args.factors, generator=gen) / args.factors**0.5
    item = torch.randn(train.shape[1], args.factors, generator=gen) / args.factors**0.5

    lightfm = None
    if not args.no_lightfm:
        try:
            from peers import LightFMPeer

            lightfm = LightFMPeer(loss="warp", no_components=args.factors, max_sampled=args.negatives, num_threads=args.threads)
        except ImportError as exc:
            print(f"LightFM unavailable ({exc}); timing CML only", file=sys.stderr)

    cml_s, lfm_s = [], []
    for epoch in range(args.epochs):
        trainer = Trainer(cfg.replace(seed=epoch), train, progress=False, verbose=False, kernel=args.kernel)
        hist = trainer.fit(user, item)
        cml_s.append(hist.epochs[0].seconds)
        if lightfm is not None:
            lfm_s.append(lightfm.partial_fit_epoch(train))
        print(f"epoch {epoch + 1}: CML {cml_s[-1]:.3f} s" + (f"  LightFM-WARP {lfm_s[-1]:.3f} s" if lfm_s else ""), flush=True)
    breakdown = cml_epoch_breakdown(cfg, train, user, item, trainer.kernel)

    result = {
        "data": "synthetic ml-1m preset, ratio_split seed 0",
        "train_pairs": int(train.nnz), "n_users": int(train.shape[0]), "n_items": int(train.shape[1]),
        "threads": args.threads, "factors": args.factors, "n_negatives": args.negatives,
        "cml_config": cfg.to_dict(), "cml_kernel": trainer.kernel, "cml_batch_size": trainer.batch_size,
        "cml_epoch_seconds": cml_s, "cml_median": statistics.median(cml_s),
        "lightfm_warp_epoch_seconds": lfm_s, "lightfm_warp_median": statistics.median(lfm_s) if lfm_s else None,
        "ratio_lightfm_over_cml": (statistics.median(lfm_s) / statistics.median(cml_s)) if lfm_s else None,
        "seed_reference_seconds_per_epoch": 120.0,
        "speedup_vs_seed": 120.0 / statistics.median(cml_s),
        "cml_breakdown_one_epoch": breakdown,
        "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    tmp = out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / f"{args.name}.json")
    md = [
        f"# Training speed ({result['when']}, {args.threads} threads, d={args.factors}, U={args.negatives}, CML kernel {trainer.kernel}, batch {trainer.batch_size})",
        "",
        "| method | median s/epoch | epochs (s) |",
        "|---|---|---|",
        f"| metricrec CML | {result['cml_median']:.3f} | {', '.join(f'{s:.3f}' for s in cml_s)} |",
    ]
    if lfm_s:
        md.append(f"| LightFM-WARP | {result['lightfm_warp_median']:.3f} | {', '.join(f'{s:.3f}' for s in lfm_s)} |")
    md += ["", f"CML speed-up over the seed's 120 s/epoch: {result['speedup_vs_seed']:.0f}x",
           "", "One CML epoch by phase (s): " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items())]
    tmp = out / f"{args.name}.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out / f"{args.name}.md")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
