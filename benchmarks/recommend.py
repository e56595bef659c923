"""Delivering recommendations from a trained model, against implicit on the same data and model size.

Measured on ml-100k (rating >= 4, per-user 60/20/20 split, seed 0), d = 100, 2 threads:

- single-user ``recommend`` latency (each user's own training row filtered), all 943 users one at
  a time, median of 3 passes: CML against implicit ALS with 100 factors;
- batch ``recommend`` for all users in one call, seconds and the peak memory it adds (each measured
  in a fresh child process: the peak RSS, reset just before the call through
  ``/proc/self/clear_refs``, minus the RSS before it);
- fold-in of the 942 users with a training item at once against the frozen items
  (``CML.fold_in_rows``) with the test Recall@50 of the folded-in vectors beside that of the trained
  ones, and the same call on both libraries: ``recommend(users, rows, N=10, recalculate_user=True)``
  (fold in, then the top 10).

Run: ``python -m benchmarks.recommend [--data-dir DIR]``; writes ``results/recommend.{json,md}``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

from .common import RESULTS, default_data_dir, write_json, write_text

FACTORS = 100


def _data(data_dir: str) -> tuple[Any, Any]:
    from metricrec.data.datasets import load_dataset
    from metricrec.data.splits import ratio_split

    split = ratio_split(load_dataset("ml-100k", data_dir), (0.6, 0.2, 0.2), seed=0)
    return split, split.train.matrix.tocsr().astype(np.float32)


def _als(train: Any) -> Any:
    from implicit.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=FACTORS, iterations=15, regularization=0.01, num_threads=2,
                                  random_state=0)
    als.fit(train, show_progress=False)
    return als


def _setup(data_dir: str, model_dir: str) -> dict[str, Any]:
    """Train CML (the tuned ml-100k settings of benchmarks/compare.py) and ALS; save CML for the
    child processes that measure memory."""
    from metricrec import CML

    torch.set_num_threads(2)
    split, train = _data(data_dir)
    cml = CML(factors=FACTORS, margin=1.5, n_negatives=5, batch_size=5000, epochs=100, patience=10,
              show_progress=False, verbose=False, num_threads=2).fit(split.train, split.valid)
    cml.save(model_dir)
    return {"split": split, "train": train, "cml": cml, "als": _als(train)}


def _per_user_ms(fn: Callable[[int], Any], n_users: int) -> float:
    fn(0)
    passes = []
    for _ in range(3):
        t0 = time.perf_counter()
        for u in range(n_users):
            fn(u)
        passes.append((time.perf_counter() - t0) / n_users * 1e3)
    return statistics.median(passes)


def _batch_child(which: str, data_dir: str, model_dir: str, queue: Any) -> None:
    from metricrec.models import load_model

    torch.set_num_threads(2)
    _, train = _data(data_dir)
    model = load_model(model_dir) if which == "cml" else _als(train)
    users = np.arange(train.shape[0])
    model.recommend(users[:10], train[:10], N=10)  # warm
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
    model.recommend(users, train, N=10)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "peak_added_mb": (_rss_kb("VmHWM") - before) / 1024.0})


def _rss_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (kB)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _batch(which: str, data_dir: str, model_dir: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_batch_child, args=(which, data_dir, model_dir, queue))
    proc.start()
    out = queue.get(timeout=900)
    proc.join()
    return out


def _recall50(split, user_vectors, item_vectors) -> float:
    from metricrec.metrics import embedding_scorer, evaluate_part

    scorer = embedding_scorer(torch.as_tensor(user_vectors), torch.as_tensor(item_vectors))
    return evaluate_part(scorer, split, "test", ks=(50,), metrics=("recall",))["recall@50"]


def _fold_in(env: dict[str, Any]) -> dict[str, float]:
    cml, train, split = env["cml"], env["train"], env["split"]
    rows = np.flatnonzero(np.diff(train.indptr) > 0)  # users with a training item (the rest have none to fold)
    cml.fold_in_rows(train[rows[:5]])  # warm the kernel
    t0 = time.perf_counter()
    folded = cml.fold_in_rows(train[rows]).numpy()
    seconds = time.perf_counter() - t0
    users = cml.user_embeddings.copy()
    users[rows] = folded
    trained_r50 = _recall50(split, cml.user_embeddings, cml.item_embeddings)
    folded_r50 = _recall50(split, users, cml.item_embeddings)
    # the same call on both: fold every user with a training item in, then its top 10
    t0 = time.perf_counter()
    cml.recommend(rows, train[rows], N=10, recalculate_user=True)
    cml_call = time.perf_counter() - t0
    als = env["als"]
    t0 = time.perf_counter()
    als.recommend(rows, train[rows], N=10, recalculate_user=True)
    als_seconds = time.perf_counter() - t0
    return {"users": int(rows.size), "seconds": seconds, "trained_recall@50": trained_r50,
            "folded_recall@50": folded_r50, "ratio": folded_r50 / trained_r50,
            "recommend_recalculated_seconds": cml_call, "implicit_als_fold_in_seconds": als_seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir())
    args = p.parse_args(argv)
    model_dir = tempfile.mkdtemp(prefix="metricrec-bench-")
    env = _setup(args.data_dir, model_dir)
    train, n_users = env["train"], env["train"].shape[0]
    rows = [train[u] for u in range(n_users)]
    single = {name: _per_user_ms(lambda u, m=env[name]: m.recommend(u, rows[u], N=10), n_users)
              for name in ("cml", "als")}
    batch = {name: _batch(name, args.data_dir, model_dir) for name in ("cml", "als")}
    fold = _fold_in(env)
    result = {"data": "ml-100k (rating >= 4), 60/20/20 split seed 0", "factors": FACTORS, "threads": 2,
              "single_user_ms": single, "single_ratio": single["cml"] / single["als"],
              "batch_all_users": batch, "fold_in": fold}
    write_json(RESULTS / "recommend.json", result)
    write_text(RESULTS / "recommend.md", _table(result))
    print(_table(result))


def _table(r: dict[str, Any]) -> str:
    s, b, f = r["single_user_ms"], r["batch_all_users"], r["fold_in"]
    return "\n".join([
        "# Recommendations out of a trained model (ml-100k, d = 100, 2 threads)", "",
        "| | metricrec CML | implicit ALS | ratio |", "|---|---|---|---|",
        f"| single-user recommend (ms, median of 3 passes over 943 users) | {s['cml']:.3f} | {s['als']:.3f} | "
        f"{r['single_ratio']:.2f}x |",
        f"| batch recommend, all users (s) | {b['cml']['seconds']:.3f} | {b['als']['seconds']:.3f} | "
        f"{b['cml']['seconds'] / b['als']['seconds']:.2f}x |",
        f"| batch peak memory added (MB) | {b['cml']['peak_added_mb']:.1f} | {b['als']['peak_added_mb']:.1f} | |",
        f"| fold-in of all users (s; ALS: its fold-in and top 10) | {f['seconds']:.3f} ({f['users']} users) | "
        f"{f['implicit_als_fold_in_seconds']:.3f} | {f['seconds'] / f['implicit_als_fold_in_seconds']:.2f}x |",
        f"| `recommend(users, rows, N=10, recalculate_user=True)` (s) | {f['recommend_recalculated_seconds']:.3f} | "
        f"{f['implicit_als_fold_in_seconds']:.3f} | "
        f"{f['recommend_recalculated_seconds'] / f['implicit_als_fold_in_seconds']:.2f}x |", "",
        f"Fold-in quality: test Recall@50 {f['folded_recall@50']:.4f} with folded-in vectors vs "
        f"{f['trained_recall@50']:.4f} with the trained ones (ratio {f['ratio']:.4f}).", "",
    ])


if __name__ == "__main__":
    main()
