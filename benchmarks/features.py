"""CML+F benchmark: item features (transformation regularisation) and cold-start items.

(a) warm: CML vs CML+F on citeulike-a (tags used by >= 5 items) and ml-100k (genres + release
    decade), the docs/protocol.md split (per-user 60/20/20, seed 0), best epoch on valid Recall@50,
    test Recall@50/@100 there;
(b) LightFM-WARP with the same item features (identity + features, rows scaled to sum 1, as
    LightFM's ``Dataset`` builds them) on the same splits, same model selection;
(c) cold start: 20% of the items (seeded) are held out entirely; the rest of the interactions is
    split per user 80/10/10 (train + the last 10% train, valid 10% for early stopping); every
    interaction with a held-out item is a test target. Recall@K is computed over the held-out
    items only (candidates = the held-out items), for users with >= 1 such interaction. Methods:
    CML+F (v_j = f(x_j)), popularity of features, random, LightFM-WARP with features.

    python -m benchmarks.features --data-dir ../shared/data                  # all of it
    python -m benchmarks.features --parts warm --datasets ml-100k
    python -m benchmarks.features --tune --datasets ml-100k                   # small grid on valid
    python -m benchmarks.features --defaults                                  # CML/CML+F at train's defaults

CML, CML+F and LightFM all train through the peer protocol and loop of the other benchmarks
(:class:`benchmarks.cml_peer.CMLPeer`, :func:`benchmarks.runner.run_peer`); warm scores go through
:func:`metricrec.metrics.evaluate_part`.

Writes ``benchmarks/results/features.json`` (every run, every epoch) and ``features.md``; with
``--tune``, ``features_tune.json``/``.md``. Quality numbers are exact for the seed; seconds are
indicative (the machine is shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from metricrec.data.datasets import load_dataset
from metricrec.data.features import describe_features, filter_min_count
from metricrec.data.interactions import Features, Interactions
from metricrec.data.splits import Split, ratio_split
from metricrec.metrics import Scorer, embedding_scorer, evaluate
from metricrec.models.cml.feature_reg import default_feature_weight

from .cml_peer import CMLPeer, CMLScorer
from .common import RESULTS, default_data_dir, write_json, write_text
from .compare import settings_for
from .peers import LightFMPeer, lightfm_item_features
from .runner import EvalFn, protocol_eval, run_peer

DATASETS = ("citeulike-a", "ml-100k")
TAG_MIN_COUNT = 5
# CML+F settings on top of the CML ones, chosen on valid Recall@50: ml-100k from the --tune grid
# (results/features_tune_ml-100k.md), citeulike-a from lambda_f in {0.1, 1, 3, 10} with hidden [256]
# and dropout in {0.1, 0.5} (results/features_tune_citeulike-a.md; the grid is too slow there on the
# shared machine).
FEATURE_SETTINGS: dict[str, dict[str, Any]] = {
    "citeulike-a": {"feature_weight": 1.0, "feature_hidden": [256], "feature_dropout": 0.5},
    "ml-100k": {"feature_weight": 10.0, "feature_hidden": [], "feature_dropout": 0.1},
}
LIGHTFM = {"learning_rate": 0.05, "no_components": 100, "max_sampled": 10}
MAX_EPOCHS = {"citeulike-a": 100, "ml-100k": 150}
PATIENCE = {"citeulike-a": 10, "ml-100k": 10}
#: ``--defaults``: CML and CML+F exactly as ``metricrec train`` runs them (no tuned setting; lambda_f from
#: :func:`metricrec.models.cml.feature_reg.default_feature_weight`), for the configured epochs.
DEFAULTS = {"on": False}
GRID = {"feature_weight": [0.1, 1.0, 10.0], "feature_hidden": [[256], []], "feature_dropout": [0.1]}
COLD_FRACTION = 0.2


# ---------------------------------------------------------------------- data
def load(dataset: str, data_dir: str) -> tuple[Interactions, Features, dict[str, Any]]:
    data = load_dataset(dataset, data_dir, download=False)
    feats = data.item_features
    if dataset == "citeulike-a":
        feats = filter_min_count(feats, TAG_MIN_COUNT)
        desc = {"source": "tags", "min_count": TAG_MIN_COUNT}
    else:
        desc = {"source": "genres", "min_count": 1}
    desc.update(describe_features(feats))
    return data, feats, desc


#: Warm scoring: Recall@50/@100 on valid after each epoch; Recall and NDCG on test at the best one.
def warm_eval(split: Split) -> EvalFn:
    return protocol_eval(split, test_metrics=("recall", "ndcg"))


# ---------------------------------------------------------------------- methods
def _summary(r: dict[str, Any], method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of a :func:`run_peer` result that the features tables and JSON keep."""
    return {"method": method, "params": params, "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"],
            "best_valid": r["best_valid"], "valid": [v["recall@50"] for v in r["valid"]],
            "median_s_per_epoch": r["median_s_per_epoch"], "train_seconds": r["train_seconds_total"],
            "test": r["test"]}


def run_cml(split: Split, params: dict[str, Any], feats: Features | None, dataset: str, threads: int,
            cold_eval: Callable[[CMLScorer], dict[str, float]] | None = None,
            snapshot: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """CML (CML+F with ``feats``) through the peer loop; test by ``cold_eval`` when given.

    ``snapshot(model)`` is kept on each epoch's scorer (:class:`CMLScorer.extra`), so that
    ``cold_eval`` sees the best epoch's state beyond the tables.
    """
    peer = CMLPeer(num_threads=threads, item_features=feats, snapshot=snapshot, **params)
    base = warm_eval(split)

    def eval_fn(scorer: Scorer, part: str) -> dict[str, float]:
        return cold_eval(scorer) if (part == "test" and cold_eval) else base(scorer, part)

    t0 = time.perf_counter()
    epochs = peer.model.config.epochs if DEFAULTS["on"] else MAX_EPOCHS[dataset]
    r = run_peer(peer, split, max_epochs=epochs, patience=PATIENCE[dataset], eval_fn=eval_fn)
    out = _summary(r, peer.name, {k: r["params"][k] for k in params})
    out.update(wall_seconds=time.perf_counter() - t0, feature_info=peer.model.feature_info)
    return out


def run_lightfm(split: Split, feats: Features, dataset: str, threads: int,
                cold_eval: Callable[[Scorer], dict[str, float]] | None = None) -> dict[str, Any]:
    """LightFM-WARP with identity + feature columns, compare.py's tuned setting."""
    params = {**LIGHTFM, **settings_for("lightfm-warp", dataset)}
    peer = LightFMPeer(loss="warp", num_threads=threads, item_features=lightfm_item_features(feats.matrix), **params)
    base = warm_eval(split)

    def eval_fn(scorer: Scorer, part: str) -> dict[str, float]:
        return cold_eval(scorer) if (part == "test" and cold_eval) else base(scorer, part)

    r = run_peer(peer, split, max_epochs=MAX_EPOCHS[dataset], patience=PATIENCE[dataset], eval_fn=eval_fn)
    return _summary(r, "lightfm-warp+features", {**params, "item_features": "identity + features, row sum 1"})


def cml_params(dataset: str, feats: Features | None = None) -> dict[str, Any]:
    """CML's settings (CML+F's with ``feats``): the tuned ones, or with ``--defaults`` none but the
    default lambda_f."""
    if DEFAULTS["on"]:
        return {} if feats is None else {"feature_weight": default_feature_weight(feats)}
    base = settings_for("cml", dataset)
    return base if feats is None else {**base, **FEATURE_SETTINGS[dataset]}


# ---------------------------------------------------------------------- cold start
def cold_setup(data: Interactions, seed: int = 0) -> tuple[Split, np.ndarray, sp.csr_matrix]:
    """(split of the warm interactions, held-out item indices, test target over those items).

    The split's test part is empty: the target is scored apart, over the held-out items only.
    """
    rng = np.random.default_rng(seed)
    n_items = data.n_items
    cold = np.sort(rng.permutation(n_items)[: int(round(COLD_FRACTION * n_items))])
    is_cold = np.zeros(n_items, bool)
    is_cold[cold] = True
    m = data.matrix.tocoo()
    keep = ~is_cold[m.col]
    warm_m = sp.csr_matrix((m.data[keep], (m.row[keep], m.col[keep])), shape=m.shape, dtype=np.float32)
    warm = data.with_matrix(warm_m, None)
    s = ratio_split(warm, (0.8, 0.1, 0.1), seed=seed)
    train = s.train.with_matrix((s.train.matrix + s.test.matrix).tocsr(), None)
    empty = s.test.with_matrix(sp.csr_matrix(s.test.shape, dtype=np.float32), None)
    target = sp.csr_matrix(data.matrix[:, cold])
    target.data[:] = 1.0
    return Split(train, s.valid, empty, {"method": "cold", "seed": seed}), cold, target


def cold_metrics(scores_fn: Scorer, target: sp.csr_matrix) -> dict[str, float]:
    """Recall and NDCG over the held-out items only (candidates = those items, nothing excluded):
    not the protocol's valid/test ranking, so :func:`~metricrec.metrics.evaluate` directly."""
    return evaluate(scores_fn, target, None, ks=(10, 20, 50, 100), metrics=("recall", "ndcg"))


def feature_popularity_scores(train: sp.csr_matrix, feats: Features, cold: np.ndarray) -> np.ndarray:
    """score_j = mean over j's features f of pop(f); pop(f) = mean train count of the items with f."""
    x = feats.matrix.copy()
    x.data[:] = 1.0
    counts = np.asarray(train.sum(0)).ravel()
    warm = np.ones(x.shape[0], bool)
    warm[cold] = False
    xw = sp.diags(warm.astype(np.float32)) @ x
    n_with = np.asarray(xw.sum(0)).ravel()
    pop_f = np.divide(xw.T @ counts, n_with, out=np.zeros(x.shape[1]), where=n_with > 0)
    xc = x[cold]
    n_f = np.asarray(xc.sum(1)).ravel()
    return np.divide(xc @ pop_f, n_f, out=np.zeros(len(cold)), where=n_f > 0)


def cml_cold_runs(dataset: str, split: Split, feats: Features, cold: np.ndarray, target: sp.csr_matrix,
                  threads: int) -> list[dict[str, Any]]:
    """CML+F on the cold protocol: the held-out items as ``fit`` places them (``c + s (f(x) - c)``,
    random if featureless) and, from the same best epoch, at the raw ``f(x)``."""
    cold_feats = feats.take(cold)
    has = np.diff(feats.matrix[cold].indptr) > 0
    raw: dict[str, Any] = {}

    def cml_cold(scorer: CMLScorer) -> dict[str, float]:
        u = scorer.user_embeddings
        placed = scorer.item_embeddings[torch.from_numpy(cold)]
        placed_raw = torch.where(torch.from_numpy(has)[:, None], torch.from_numpy(scorer.extra), placed)
        raw["test"] = cold_metrics(embedding_scorer(u, placed_raw), target)
        return cold_metrics(embedding_scorer(u, placed), target)

    params = cml_params(dataset, feats)
    placed = run_cml(split, params, feats, dataset, threads, cold_eval=cml_cold,
                     snapshot=lambda model: model.item_vectors_from_features(cold_feats, calibrated=False))
    return [placed, {**{k: v for k, v in placed.items() if k != "test"},
                     "method": "cml+f (raw f(x), uncalibrated)", "test": raw["test"]}]


def baseline_cold_runs(split: Split, feats: Features, cold: np.ndarray, target: sp.csr_matrix) -> list[dict[str, Any]]:
    """Popularity of the items' features, and random scores."""
    pop = torch.from_numpy(feature_popularity_scores(split.train.matrix, feats, cold).astype(np.float32))
    runs = [{"method": "feature-popularity",
             "test": cold_metrics(lambda users: pop[None, :].expand(len(users), -1), target)}]
    gen = torch.Generator().manual_seed(0)
    rand = torch.rand(split.train.shape[0], len(cold), generator=gen)
    r = cold_metrics(lambda users: rand[torch.from_numpy(np.asarray(users))], target)
    r["expected_recall@50"] = min(1.0, 50 / len(cold))
    return runs + [{"method": "random", "test": r}]


def cold_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
    """Every method on the cold-start protocol of ``dataset``."""
    split, cold, target = cold_setup(data)
    info = {"n_cold_items": len(cold), "n_cold_with_features": int((np.diff(feats.matrix[cold].indptr) > 0).sum()),
            "n_test_users": int((np.diff(target.indptr) > 0).sum()), "n_test_pairs": int(target.nnz)}
    runs = cml_cold_runs(dataset, split, feats, cold, target, threads)
    runs += baseline_cold_runs(split, feats, cold, target)
    cold_t = torch.from_numpy(cold)
    runs.append(run_lightfm(split, feats, dataset, threads,
                            cold_eval=lambda scorer: cold_metrics(lambda users: scorer(users)[:, cold_t], target)))
    for r in runs:
        r.update(dataset=dataset, part="cold", cold=info)
    return runs


# ---------------------------------------------------------------------- driver
def warm_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
    """CML, CML+F and LightFM-WARP with features on the protocol's split."""
    split = ratio_split(data, (0.6, 0.2, 0.2), seed=0)
    runs = [run_cml(split, cml_params(dataset), None, dataset, threads),
            run_cml(split, cml_params(dataset, feats), feats, dataset, threads),
            run_lightfm(split, feats, dataset, threads)]
    n_no_train = int((np.diff(split.train.matrix.tocsc().indptr) == 0).sum())
    for r in runs:
        r.update(dataset=dataset, part="warm", items_without_train=n_no_train)
    return runs


def tune_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
    """CML+F over :data:`GRID` on top of the CML setting; valid Recall@50 picks."""
    split = ratio_split(data, (0.6, 0.2, 0.2), seed=0)
    base = settings_for("cml", dataset)
    runs = []
    for values in itertools.product(*GRID.values()):
        params = {**base, **dict(zip(GRID, values))}
        r = run_cml(split, params, feats, dataset, threads)
        r.update(dataset=dataset, part="tune")
        print(f"{dataset:<12} {json.dumps(dict(zip(GRID, values))):<75} valid R@50 {r['best_valid']['recall@50']:.4f} "
              f"test R@50 {r['test']['recall@50']:.4f} best {r['best_epoch']}/{r['epochs_run']} "
              f"{r['median_s_per_epoch']:.2f} s/epoch", flush=True)
        runs.append(r)
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown tables of the warm (or tuning) runs and of the cold-start runs."""
    lines = []
    warm = [r for r in runs if r["part"] in ("warm", "tune")]
    if warm:
        lines += ["| data | method | setting | best epoch / run | valid R@50 | test R@50 | test R@100 | test NDCG@50 | median s/epoch |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in warm:
            t = r["test"]
            setting = {k: v for k, v in r["params"].items() if k.startswith("feature")} if r["method"] == "cml+f" else ""
            lines.append(f"| {r['dataset']} | {r['method']} | {json.dumps(setting) if setting else ''} | "
                         f"{r['best_epoch']} / {r['epochs_run']} | {r['best_valid']['recall@50']:.4f} | "
                         f"{t['recall@50']:.4f} | {t['recall@100']:.4f} | {t['ndcg@50']:.4f} | {r['median_s_per_epoch']:.3f} |")
    cold = [r for r in runs if r["part"] == "cold"]
    if cold:
        lines += ["", "Cold start (held-out items only; candidates = the held-out items)", "",
                  "| data | method | cold items | test users | R@10 | R@20 | R@50 | R@100 | NDCG@50 | best epoch |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in cold:
            t, c = r["test"], r["cold"]
            lines.append(f"| {r['dataset']} | {r['method']} | {c['n_cold_items']} | {c['n_test_users']} | "
                         f"{t['recall@10']:.4f} | {t['recall@20']:.4f} | {t['recall@50']:.4f} | {t['recall@100']:.4f} | "
                         f"{t['ndcg@50']:.4f} | {r.get('best_epoch', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--parts", nargs="+", default=["warm", "cold"], choices=("warm", "cold"))
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tune", action="store_true", help="grid over lambda_f / hidden / dropout on valid")
    p.add_argument("--defaults", action="store_true",
                   help="CML and CML+F at metricrec train's defaults (no tuned setting) for their configured epochs")
    p.add_argument("--name", help="results file stem (default features, or features_tune)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    DEFAULTS["on"] = args.defaults
    name = args.name or ("features_tune" if args.tune else "features-defaults" if args.defaults else "features")
    runs: list[dict[str, Any]] = []
    feature_desc = {}
    t0 = time.perf_counter()
    for dataset in args.datasets:
        data, feats, desc = load(dataset, args.data_dir)
        feature_desc[dataset] = desc
        print(f"{dataset}: {data}, features {desc}", flush=True)
        if args.tune:
            runs += tune_runs(dataset, data, feats, args.threads)
            continue
        if "warm" in args.parts:
            runs += warm_runs(dataset, data, feats, args.threads)
        if "cold" in args.parts:
            runs += cold_runs(dataset, data, feats, args.threads)
        print(table([r for r in runs if r["dataset"] == dataset]), flush=True)
    text = table(runs)
    print("\n" + text)
    meta = {"threads": args.threads, "defaults": args.defaults, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
            "wall_seconds": time.perf_counter() - t0, "features": feature_desc, "max_epochs": MAX_EPOCHS,
            "patience": PATIENCE, "split": "per-user 60/20/20 seed 0 (warm); cold: 20% of items held out, seed 0",
            "note": "seconds per epoch = training only; the machine was shared with other runs (indicative)"}
    write_json(RESULTS / f"{name}.json", {"meta": meta, "runs": runs})
    write_text(RESULTS / f"{name}.md", f"# {name}\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
