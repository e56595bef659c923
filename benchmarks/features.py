"""CML+F benchmark: item features (transformation regularisation) and cold-start items.

(a) warm: CML vs CML+F on citeulike-a (tags used by >= 5 items) and ml-100k (genres + release
    decade), the PROTOCOL.md split (per-user 60/20/20, seed 0), best epoch on valid Recall@50,
    test Recall@50/@100 there;
(b) LightFM-WARP with the same item features (identity + features, rows scaled to sum 1, as
    LightFM's ``Dataset`` builds them) on the same splits, same model selection;
(c) cold start: 20% of the items (seeded) are held out entirely; the rest of the interactions is
    split per user 80/10/10 (train + the last 10% train, valid 10% for early stopping); every
    interaction with a held-out item is a test target. Recall@K is computed over the held-out
    items only (candidates = the held-out items), for users with >= 1 such interaction. Methods:
    CML+F (v_j = f(x_j)), popularity of features, random, LightFM-WARP with features.

    python benchmarks/features.py --data-dir ../shared/data                  # all of it
    python benchmarks/features.py --parts warm --datasets ml-100k
    python benchmarks/features.py --tune --datasets ml-100k                   # small grid on valid

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
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from compare import settings_for  # noqa: E402
from peers import LightFMPeer, lightfm_item_features, run_peer  # noqa: E402

from metricrec import CML  # noqa: E402
from metricrec.data.datasets import load_dataset  # noqa: E402
from metricrec.data.features import describe_features, filter_min_count  # noqa: E402
from metricrec.data.interactions import Features, Interactions  # noqa: E402
from metricrec.metrics import embedding_scorer, evaluate  # noqa: E402
from metricrec.data.splits import ratio_split  # noqa: E402

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


def test_eval(split) -> Any:
    train, valid, test = split.train.matrix, split.valid.matrix, split.test.matrix
    seen = (train + valid).tocsr()

    def eval_fn(scorer, part: str) -> dict[str, float]:
        if part == "valid":
            return evaluate(scorer, valid, train, ks=(50, 100), metrics=("recall",))
        return evaluate(scorer, test, seen, ks=(10, 20, 50, 100), metrics=("recall", "ndcg"))

    return eval_fn


# ---------------------------------------------------------------------- methods
def run_cml(split, params: dict[str, Any], feats: Features | None, dataset: str, threads: int,
            cold_eval=None) -> dict[str, Any]:
    model = CML(epochs=MAX_EPOCHS[dataset], patience=PATIENCE[dataset], num_threads=threads, show_progress=False,
                verbose=False, **params)
    t0 = time.perf_counter()
    model.fit(split.train, split.valid, item_features=feats)
    wall = time.perf_counter() - t0
    hist = model.history
    u, v = torch.from_numpy(model.user_embeddings), torch.from_numpy(model.item_embeddings)
    out = {
        "method": "cml+f" if feats is not None else "cml", "params": {k: model.config.to_dict()[k] for k in params},
        "epochs_run": len(hist.epochs), "best_epoch": hist.best_epoch,
        "best_valid": hist.epochs[hist.best_epoch - 1].valid,
        "valid": [e.valid["recall@50"] for e in hist.epochs],
        "median_s_per_epoch": float(np.median([e.seconds for e in hist.epochs])),
        "train_seconds": hist.train_seconds, "wall_seconds": wall, "feature_info": model.feature_info,
    }
    out["test"] = cold_eval(model) if cold_eval else test_eval(split)(embedding_scorer(u, v), "test")
    return out


def run_lightfm(split, feats: Features, dataset: str, threads: int, cold_eval=None) -> dict[str, Any]:
    params = {**LIGHTFM, **settings_for("lightfm-warp", dataset)}  # compare.py's tuned setting
    peer = LightFMPeer(loss="warp", num_threads=threads, item_features=lightfm_item_features(feats.matrix), **params)
    base = test_eval(split)

    def eval_fn(scorer, part):
        return cold_eval(scorer) if (part == "test" and cold_eval) else base(scorer, part)

    r = run_peer(peer, split, max_epochs=MAX_EPOCHS[dataset], patience=PATIENCE[dataset], eval_fn=eval_fn)
    return {"method": "lightfm-warp+features", "params": {**params, "item_features": "identity + features, row sum 1"},
            "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"], "best_valid": r["best_valid"],
            "valid": [v["recall@50"] for v in r["valid"]], "median_s_per_epoch": r["median_s_per_epoch"],
            "train_seconds": r["train_seconds_total"], "test": r["test"]}


# ---------------------------------------------------------------------- cold start
class _Split:
    def __init__(self, train, valid, test):
        self.train, self.valid, self.test = train, valid, test


def cold_setup(data: Interactions, seed: int = 0):
    """(split of the warm interactions, held-out item indices, test target over those items)."""
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
    target = sp.csr_matrix(data.matrix[:, cold])
    target.data[:] = 1.0
    return _Split(train, s.valid, s.valid), cold, target


def cold_metrics(scores_fn, target: sp.csr_matrix) -> dict[str, float]:
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


def cold_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
    split, cold, target = cold_setup(data)
    n_cold = len(cold)
    info = {"n_cold_items": n_cold, "n_cold_with_features": int((np.diff(feats.matrix[cold].indptr) > 0).sum()),
            "n_test_users": int((np.diff(target.indptr) > 0).sum()), "n_test_pairs": int(target.nnz)}
    runs = []

    raw: dict[str, Any] = {}

    def cml_cold(model):
        u = torch.from_numpy(model.user_embeddings)
        placed = model.item_embeddings[cold]  # what fit gave them: c + s (f(x) - c), or random if featureless
        f_raw = model.item_vectors_from_features(feats.take(cold), calibrated=False)
        has = np.diff(feats.matrix[cold].indptr) > 0
        placed_raw = np.where(has[:, None], f_raw, placed)
        raw["test"] = cold_metrics(embedding_scorer(u, torch.from_numpy(placed_raw)), target)
        return cold_metrics(embedding_scorer(u, torch.from_numpy(placed)), target)

    params = {**settings_for("cml", dataset), **FEATURE_SETTINGS[dataset]}
    runs.append(run_cml(split, params, feats, dataset, threads, cold_eval=cml_cold))
    runs.append({**{k: v for k, v in runs[-1].items() if k != "test"}, "method": "cml+f (raw f(x), uncalibrated)",
                 "test": raw["test"]})

    pop = torch.from_numpy(feature_popularity_scores(split.train.matrix, feats, cold).astype(np.float32))
    runs.append({"method": "feature-popularity",
                 "test": cold_metrics(lambda users: pop[None, :].expand(len(users), -1), target)})
    gen = torch.Generator().manual_seed(0)
    rand = torch.rand(data.n_users, n_cold, generator=gen)
    r = cold_metrics(lambda users: rand[torch.from_numpy(np.asarray(users))], target)
    r["expected_recall@50"] = min(1.0, 50 / n_cold)
    runs.append({"method": "random", "test": r})

    cold_t = torch.from_numpy(cold)
    runs.append(run_lightfm(split, feats, dataset, threads,
                            cold_eval=lambda scorer: cold_metrics(lambda users: scorer(users)[:, cold_t], target)))
    for r in runs:
        r.update(dataset=dataset, part="cold", cold=info)
    return runs


# ---------------------------------------------------------------------- driver
def warm_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
    split = ratio_split(data, (0.6, 0.2, 0.2), seed=0)
    base = settings_for("cml", dataset)
    runs = [run_cml(split, base, None, dataset, threads),
            run_cml(split, {**base, **FEATURE_SETTINGS[dataset]}, feats, dataset, threads),
            run_lightfm(split, feats, dataset, threads)]
    n_no_train = int((np.diff(split.train.matrix.tocsc().indptr) == 0).sum())
    for r in runs:
        r.update(dataset=dataset, part="warm", items_without_train=n_no_train)
    return runs


def tune_runs(dataset: str, data: Interactions, feats: Features, threads: int) -> list[dict[str, Any]]:
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


def atomic_write(path: Path, text: str) -> None:
    from metricrec.serialization import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--parts", nargs="+", default=["warm", "cold"], choices=("warm", "cold"))
    p.add_argument("--data-dir", default=os.environ.get("METRICREC_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tune", action="store_true", help="grid over lambda_f / hidden / dropout on valid")
    p.add_argument("--name", help="results file stem (default features, or features_tune)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.name or ("features_tune" if args.tune else "features")
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
    meta = {"threads": args.threads, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_count": os.cpu_count(),
            "wall_seconds": time.perf_counter() - t0, "features": feature_desc, "max_epochs": MAX_EPOCHS,
            "patience": PATIENCE, "split": "per-user 60/20/20 seed 0 (warm); cold: 20% of items held out, seed 0",
            "note": "seconds per epoch = training only; the machine was shared with other runs (indicative)"}
    atomic_write(RESULTS / f"{name}.json", json.dumps({"meta": meta, "runs": runs}, indent=1))
    atomic_write(RESULTS / f"{name}.md", f"# {name}\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
