"""`metricrec train` and `metricrec evaluate` at work: load the data, train, score and save.

Imported by :mod:`.train_cmd` only when a command runs (after the run's folder records its
arguments), since it pulls in torch and the models."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._file_kind import not_a_folder
from ..errors import ConfigError
from ..models.bpr.model import BPR
from ..models.cml.model import CML
from ..models.dpcml.model import DPCML
from ..models.lrml.model import LRML
from ..models.sfcml.model import SFCML
from ..models.sml.model import SML
from ..models.transcf.model import TransCF
from ..fingerprint import check_fingerprint, fingerprint
from ..metrics import evaluate_part
from ..models.base import EmbeddingRecommender, load_model
from ..models.schema import read_run_doc
from ..serialization import atomic_write_json, jsonable
from ..training import distributed
from ..data.splits import Split
from ..models.cml.feature_reg import default_feature_weight
from .run_folder import start_run
from .train_cmd import config_from_args
from .train_run import (check_before_training, check_resumed_data, discard_early_record, finish_checkpoint,
                        fit_resumable, saved_args)
from .sources import (describe_args, fallback_out, load_data, load_item_features, make_split, model_data_warning, note,
                      rebuild, source_summary)

# ---------------------------------------------------------------------- train
TEST_KS = (10, 20, 50, 100)
#: The model class of each ``metricrec train --model`` (their configs: :data:`metricrec.cli.train_cmd.MODEL_CONFIGS`).
MODEL_CLASSES: dict[str, type[EmbeddingRecommender]] = {"cml": CML, "sml": SML, "dpcml": DPCML, "sfcml": SFCML,
                                                         "transcf": TransCF, "lrml": LRML, "bpr": BPR}


def run_train(args: argparse.Namespace) -> int:
    """One process, or under torchrun (RANK/WORLD_SIZE set) one rank of data-parallel training:
    rank 0 validates, prints and writes; the other ranks train silently."""
    if not distributed.launched():
        return _train(args)
    rank, world, local = distributed.env_rank()
    if args.device in ("cuda", "auto") and torch.cuda.is_available():
        args.device = f"cuda:{local}"
    parallel = distributed.init_from_env(args.device, timeout_s=args.dist_timeout)
    try:
        with contextlib.ExitStack() as quiet:
            if rank != 0:
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            return _train(args, parallel)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, parallel: distributed.DataParallel | None = None) -> int:
    config = config_from_args(args)  # validate flags before loading anything
    model_class = model_class_for(args)
    data, desc = load_data(args, fallback_synthetic=bool(args.dataset) and not args.no_fallback)
    split = make_split(args, data)
    name = desc.get("fallback_for") or desc.get("name") or desc.get("preset") or \
        Path(desc.get("path", desc.get("train", "run"))).stem
    out = Path(args.out or Path("runs") / str(name))
    if desc.get("fallback_for"):  # the folder's name must not claim the real data set
        out = fallback_out(out)
        note(f"DATA: FALLBACK run: writing to {out}")
    discard_early_record(args, out)
    sizes = split.sizes()
    note(f"DATA: {_source_line(desc)} | {split.train.n_users:,} users x {split.train.n_items:,} items | "
         f"train {sizes['train']:,} / valid {sizes['valid']:,} / test {sizes['test']:,} pairs")
    train_fp = fingerprint(split.train.matrix, split.train.user_ids, split.train.item_ids)
    check_resumed_data(args, out, train_fp, _source_line(desc))  # --resume: the data the run started on
    check_before_training(args, split, out)  # empty or leaking parts, the device, --out: before any training
    features, feature_doc = load_item_features(args, split.train)
    if features is not None and config.feature_weight == 0:
        config = config.replace(feature_weight=default_feature_weight(features))
    if features is None and getattr(config, "feature_weight", 0.0) > 0:
        raise ValueError("--feature-weight needs item features: add --item-features tags|genres|FILE")
    if features is not None:
        note(f"FEATURES: {feature_doc['source']} | {feature_doc['n_features']:,} features on "
             f"{feature_doc['n_rows_with_features']:,} of {feature_doc['n_rows']:,} items | "
             f"lambda_f {config.feature_weight:g}, hidden {list(config.feature_hidden)}, dropout {config.feature_dropout:g}")
    if parallel is None or parallel.rank == 0:  # from here on the folder can be resumed or restarted
        start_run(out, saved_args(args), _absolute_paths(desc), train_fp,
                  previous=getattr(args, "run_record", None), checkpointed=bool(args.resume))
    model = model_class(config, device=args.device, num_threads=args.threads, kernel=args.kernel,
                        show_progress=not args.no_progress and sys.stderr.isatty())
    model.data_source = source_summary(desc)  # saved in the model's config.json: later commands show a fallback
    save = functools.partial(_save_run, model, args, desc, split, out, feature_doc, parallel, time.perf_counter())
    ckpt = fit_resumable(model, split, features, args, out, parallel, lambda why: save(interrupted=why))
    if parallel is not None and parallel.rank != 0:
        return 0
    save(resumed_from=None if ckpt is None else ckpt.resumed_from)
    finish_checkpoint(out)  # model and report saved: nothing left to resume
    if args.final:
        _train_final(model, split, features, args, out, parallel)
    return 0


def model_class_for(args: argparse.Namespace) -> type[EmbeddingRecommender]:
    """The class ``--model`` names (CML for a run recorded before the flag existed), refused with a
    :class:`ConfigError` before any data is read when ``--kernel`` names a backend it has no step for."""
    name = getattr(args, "model", None) or "cml"
    cls = MODEL_CLASSES[name]
    if cls.backends is not None and args.kernel not in ("auto", *cls.backends):
        raise ConfigError(f"--kernel {args.kernel}: --model {name} has a {'/'.join(cls.backends)} training step only; "
                          f"use --kernel auto or {cls.backends[0]}")
    return cls


def _save_run(model: EmbeddingRecommender, args: argparse.Namespace, desc: dict[str, Any], split: Split, out: Path,
              feature_doc: dict[str, Any], parallel: distributed.DataParallel | None, t0: float, *,
              interrupted: str | None = None, resumed_from: dict[str, Any] | None = None) -> str:
    """Save the model, ``data.json`` and ``report.json`` of a run; print the summary. An interrupted run
    (``interrupted``: why) saves its best-so-far weights without test metrics and returns what it saved."""
    if interrupted is not None:
        trainer = model._trainer
        if trainer is None or not trainer.history.epochs:
            return "no epoch had finished, so no model was saved"
        if trainer.best.state is not None:  # the checkpoint holds the current state; the model gets the best
            trainer.step.restore(trainer.best.state)
        model.history = trainer.history
        model._finish(trainer, split.train)
    config, sizes = model.config, split.sizes()
    if getattr(model, "feature_info", None) is not None:  # CML+F
        feature_doc.update(weight=config.feature_weight, hidden=list(config.feature_hidden),
                           dropout=config.feature_dropout, n_cold_items=model.feature_info["n_cold"])
    wall = time.perf_counter() - t0
    test, eval_s = (None, 0.0) if interrupted else _score(model, split, "test")
    model.save(out / "model", weights_format=args.weights_format)
    data_doc = _data_doc(args, desc, split, out)
    atomic_write_json(out / "data.json", data_doc)
    hist = model.history
    report = {
        "metricrec_version": __version__,
        "model": model.model_name,
        "config": config.to_dict(),
        "batch_size_used": config.resolved_batch_size(sizes["train"], sum(split.train.shape)),
        "n_negatives_used": config.resolved_n_negatives(*split.train.shape, sizes["train"]),
        "data": data_doc,
        "epochs": [e.to_dict() for e in hist.epochs],
        "best_epoch": hist.best_epoch,
        "stopped_early": hist.stopped_early,
        "budget": hist.budget,
        "init_seconds": model.init_seconds,
        "train_seconds": hist.train_seconds,
        "seconds_to_best": hist.seconds_to_best,
        "median_epoch_seconds": float(np.median([e.seconds for e in hist.epochs])),
        "wall_seconds": wall,
        "test": test,
        "test_eval_seconds": eval_s,
        "features": _absolute_paths(feature_doc) or None,
        "parallel": None if parallel is None else {"world_size": parallel.world, "backend": parallel.backend,
                                                   "per_step": parallel.stats.per_step(), "by_op": parallel.stats.by_op},
        "environment": {"device": str(model.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "peak_rss_mb": _peak_rss_mb()},
        "interrupted": interrupted, "resumed_from": resumed_from,
    }
    atomic_write_json(out / "report.json", report)
    if interrupted is not None:
        return (f"best-so-far model (epoch {hist.best_epoch}) saved to {out / 'model'}; "
                f"continue with: metricrec train --resume {out}")
    print(f"best epoch {hist.best_epoch} of {len(hist.epochs)}; training {hist.train_seconds:.2f} s "
          f"(median {report['median_epoch_seconds']:.3f} s/epoch)")
    if hist.budget is not None:
        print(budget_line(hist.budget, hist.best_epoch, len(hist.epochs), hist.seconds_to_best + (model.init_seconds or 0.0)))
    _print_metrics(test, "test")
    print(f"saved model -> {out / 'model'}; report -> {out / 'report.json'}")
    return "saved"


def final_schedule(config: Any, history: Any) -> tuple[int, tuple[tuple[float, float], ...]]:
    """(epochs, decay_knots) that replay a validated run's schedule up to its best epoch: the adaptive
    budget's decay as it was (extended or shortened), a linear decay as its straight line; a constant
    rate is a flat line. (A cosine is replayed as the linear decay of the same length.)"""
    epochs = int(history.best_epoch or len(history.epochs))
    if history.budget is not None:
        knots = tuple((float(e), float(m)) for e, m in history.budget["epoch_knots"])
    elif config.lr_schedule == "constant":
        knots = ((0.0, 1.0), (float(config.epochs), 1.0))
    else:
        knots = ((0.0, 1.0), (float(config.epochs), 0.0))
    return epochs, knots


def _train_final(model: EmbeddingRecommender, split: Split, features: Any, args: argparse.Namespace, out: Path,
                 parallel: distributed.DataParallel | None) -> None:
    """``--final``: a production model on every interaction, trained as the validated run was, up to its best
    epoch; saved to ``OUT/final`` and described in ``report.json``'s ``final`` section."""
    epochs, knots = final_schedule(model.config, model.history)
    config = model.config.replace(epochs=epochs, lr_schedule="adaptive", decay_knots=knots,
                                  lr_floor=knots[-1][1])
    every = (split.train.matrix + split.valid.matrix + split.test.matrix).tocsr()
    every.data[:] = 1.0
    data = split.train.with_matrix(every, None, split_part="all")
    note(f"FINAL: training on every interaction ({every.nnz:,} pairs, {data.n_users:,} users) for {epochs} epochs, "
         f"the validated run's best, with its learning-rate schedule")
    final = type(model)(config, device=args.device, num_threads=args.threads, kernel=args.kernel,
                        show_progress=not args.no_progress and sys.stderr.isatty())
    final.data_source = {**(model.data_source or {}), "final": True}
    t0 = time.perf_counter()
    final.fit(data, **({} if features is None else {"item_features": features}))
    seconds = time.perf_counter() - t0
    if parallel is not None and parallel.rank != 0:
        return
    final.save(out / "final", weights_format=args.weights_format)
    report = json.loads((out / "report.json").read_text())
    report["final"] = {"folder": os.path.abspath(out / "final"), "epochs": epochs, "pairs": int(every.nnz),
                       "decay_knots": [list(k) for k in knots], "seconds": seconds,
                       "note": "trained on train + valid + test: its quality is the validated run's test figure"}
    atomic_write_json(out / "report.json", report)
    print(f"final model ({every.nnz:,} pairs, {epochs} epochs, {seconds:.2f} s) -> {out / 'final'}; "
          f"recommend/serve --model {out / 'final'}")


def budget_line(budget: dict[str, Any], best: int | None, run: int, to_best: float) -> str:
    """One line on what the adaptive budget did (:mod:`metricrec.training.budget`)."""
    moved = [f"extended at epoch {e}" for e in budget.get("extensions", [])] + \
        [f"brought forward at epoch {e}" for e in budget.get("shortenings", [])]
    if run >= budget["max_epochs"]:
        why = f"stopped at the cap of {budget['max_epochs']} epochs"
    elif run > budget["end_epoch"]:
        why = f"stopped at epoch {run}, the first after the decay not to improve"
    else:
        why = f"stopped at epoch {run}"
    return (f"budget: decay to epoch {budget['end_epoch']}{' (' + ', '.join(moved) + ')' if moved else ''}; {why}; "
            f"{to_best:.2f} s to the best epoch {best}")


def _data_doc(args: argparse.Namespace, desc: dict[str, Any], split: Split, out: Path) -> dict[str, Any]:
    """What ``data.json`` records: the data source and flags (absolute paths), the split, the run folder
    and the fingerprint of the training part (checked by ``metricrec evaluate``)."""
    return {"source": _absolute_paths(desc), "args": _absolute_paths(describe_args(args)),
            "split": jsonable(split.meta), "sizes": split.sizes(), "out": os.path.abspath(out),
            "train_fingerprint": fingerprint(split.train.matrix, split.train.user_ids, split.train.item_ids)}


def _score(model: EmbeddingRecommender, split: Split, part: str) -> tuple[dict[str, float], float]:
    t0 = time.perf_counter()
    metrics = evaluate_part(model.scorer(), split, part, ks=TEST_KS)
    return metrics, time.perf_counter() - t0


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    names = ["recall", "precision", "ndcg", "hitrate", "map"]
    print(f"{title} ({int(metrics.get('n_users', 0)):,} users)  " + "  ".join(f"@{k:<6}" for k in TEST_KS))
    for n in names:
        if f"{n}@{TEST_KS[0]}" in metrics:
            print(f"  {n:<10}" + "".join(f"  {metrics[f'{n}@{k}']:.4f}" for k in TEST_KS))
    extra = [f"{k} {metrics[k]:.4f}" for k in ("mrr", "auc") if k in metrics]
    if extra:
        print("  " + "   ".join(extra))


def _source_line(desc: dict[str, Any]) -> str:
    kind = desc["kind"]
    if kind == "dataset":
        rating = f", rating >= {desc['min_rating']:g}" if desc.get("min_rating") is not None else ""
        unverified = ", files NOT verified (--no-verify)" if desc.get("verified") is False else ""
        return f"{desc['name']} from {desc['data_dir']}{rating}{unverified}"
    if kind == "synthetic":
        extra = f" -- FALLBACK: {desc['fallback_for']} was not available" if "fallback_for" in desc else ""
        return f"built-in synthetic data (preset {desc['preset']}){extra}"
    if kind == "file":
        return f"file {desc['path']}"
    return f"predefined split {desc['train']} | {desc['valid']} | {desc['test']}"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_run(model_dir: str) -> tuple[EmbeddingRecommender, dict[str, Any]]:
    """The model of a run folder (or a model folder / file itself) and the run's ``data.json`` ({} if none)."""
    run = Path(model_dir)
    if run.suffix != ".npz" and (what := not_a_folder(run)):  # before: "Not a directory: P"
        raise ConfigError(f"--model {run}: {what}, not a run or model folder")
    is_model = (run / "config.json").is_file() or run.suffix == ".npz"
    model = load_model(run if is_model else run / "model", index=False)  # a half-swapped model folder is recovered; no ANN index
    data_json = (run.parent if is_model else run) / "data.json"
    if not data_json.is_file():
        return model, {}
    return model, read_run_doc(data_json)  # checked as a schema: one error naming the file and key


def _data_for_run(args: argparse.Namespace, doc: dict[str, Any], model: EmbeddingRecommender) -> Split:
    """The split to score: from the data flags given, else rebuilt from ``data.json``; refused unless its
    training part is the model's training data (fingerprints; only the shape for older runs)."""
    has_flags = any(getattr(args, k, None) for k in ("dataset", "interactions", "synthetic", "train"))
    if has_flags:
        data_args = args
    elif doc.get("args"):
        data_args = rebuild(doc["args"])
        if doc.get("source", {}).get("kind") == "synthetic":  # a fallback run: rebuild what it really used
            data_args.dataset, data_args.synthetic = None, doc["source"]["preset"]
    else:
        raise ValueError(f"{args.model}: no data.json next to the model; give the data flags (e.g. --dataset)")
    data, desc = load_data(data_args)
    split = make_split(data_args, data)
    expected = getattr(model, "data_fingerprint", None) or doc.get("train_fingerprint")
    if expected:
        actual = fingerprint(split.train.matrix, split.train.user_ids, split.train.item_ids)
        check_fingerprint(expected, actual, f"the data ({_source_line(desc)}, training part)")
    elif split.train.shape != (model.user_embeddings.shape[0], model.item_embeddings.shape[0]):
        raise ValueError(f"the data has shape {split.train.shape} but the model was trained on "
                         f"{model.user_embeddings.shape[0]} users x {model.item_embeddings.shape[0]} items")
    return split


def _absolute_paths(desc: dict[str, Any]) -> dict[str, Any]:
    """``desc`` with the file and folder paths it records made absolute (run metadata outlives the cwd)."""
    keys = ("path", "data_dir", "interactions", "train", "valid", "test")
    return {k: os.path.abspath(os.path.expanduser(v)) if k in keys and isinstance(v, str) and v and v != "None" else v
            for k, v in desc.items()}


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, doc = _load_run(args.model)
    if warning := model_data_warning(model, doc):
        note(warning)
    if (getattr(model, "data_source", None) or {}).get("final"):
        raise ValueError(f"{args.model} is a final model (train --final): it was trained on every interaction, "
                         "test included, so no split can score it; its quality is the validated run's test figure "
                         "(report.json, or evaluate the run's own model/)")
    split = _data_for_run(args, doc, model)
    metrics, seconds = _score(model, split, args.part)
    _print_metrics(metrics, args.part)
    print(f"evaluated in {seconds:.3f} s")
    if args.json:
        atomic_write_json(args.json, metrics)
    return 0
