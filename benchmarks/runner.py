"""The one training-and-scoring loop of the benchmarks (docs/protocol.md).

:func:`run_peer` trains any peer of :mod:`benchmarks.peers` (metricrec's CML included) one epoch at a
time, scores valid after each epoch, stops early on valid Recall@50 and scores test with the best
epoch's scorer. Every score goes through :func:`metricrec.metrics.evaluate_part`, which applies the
protocol's exclusions (train for valid; train and valid for test): :func:`protocol_eval` is the
default and the only place the benchmarks choose cut-offs and metrics.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import scipy.sparse as sp

from metricrec.data.splits import Split
from metricrec.metrics import GLOBAL_METRICS, TOPK_METRICS, Scorer, evaluate_part

__all__ = ["Peer", "EvalFn", "protocol_eval", "run_peer", "peak_rss_mb", "VALID_METRIC", "TEST_KS"]

#: The model-selection metric (docs/protocol.md).
VALID_METRIC = "recall@50"
#: Cut-offs of the test metrics.
TEST_KS = (10, 20, 50, 100)

#: ``eval_fn(scorer, part) -> metrics`` with ``part`` in {"valid", "test"}.
EvalFn = Callable[[Scorer, str], Mapping[str, float]]


class Peer(Protocol):
    """What :func:`run_peer` drives (see :mod:`benchmarks.peers`)."""

    name: str

    def partial_fit_epoch(self, train: sp.csr_matrix) -> float:
        """One more epoch on ``train`` (n_users x n_items, binary); returns its training seconds."""

    def scorer(self) -> Scorer:
        """Scores over a copy of the current parameters: ``scorer(users) -> (len(users), n_items)``."""

    def params(self) -> dict[str, Any]:
        """The settings, for the results file."""


def protocol_eval(
    split: Split,
    *,
    valid_ks: Sequence[int] = (50, 100),
    valid_metrics: Sequence[str] = ("recall",),
    test_ks: Sequence[int] = TEST_KS,
    test_metrics: Sequence[str] = TOPK_METRICS + GLOBAL_METRICS,
) -> EvalFn:
    """The protocol's scoring of ``split``: :func:`~metricrec.metrics.evaluate_part` on valid (after
    each epoch: Recall@50/@100 by default) and on test (at the best epoch: every metric by default).

    Returns
    -------
    callable
        ``eval_fn(scorer, part)`` with ``part`` in {"valid", "test"}, returning a metrics dict.
    """
    def eval_fn(scorer: Scorer, part: str) -> dict[str, float]:
        if part == "valid":
            return evaluate_part(scorer, split, "valid", ks=valid_ks, metrics=valid_metrics)
        return evaluate_part(scorer, split, part, ks=test_ks, metrics=test_metrics)

    return eval_fn


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Selection:
    """Early stopping and model selection on the valid metric: the first epoch with the highest
    value wins; stop after ``patience`` epochs without a better one."""

    def __init__(self, metric: str, patience: int) -> None:
        self.metric, self.patience = metric, patience
        self.epoch, self.value, self.scorer = 0, -np.inf, None

    def offer(self, epoch: int, metrics: Mapping[str, float], scorer: Scorer) -> bool:
        """Record one epoch's valid metrics; True when training should stop."""
        if self.metric not in metrics:
            raise KeyError(f"eval_fn returned no {self.metric!r}; keys: {sorted(metrics)}")
        if metrics[self.metric] > self.value:
            self.epoch, self.value, self.scorer = epoch, metrics[self.metric], scorer
            return False
        return epoch - self.epoch >= self.patience


def run_peer(
    peer: Peer,
    split: Split,
    max_epochs: int = 100,
    patience: int = 10,
    eval_fn: EvalFn | None = None,
    *,
    valid_metric: str = VALID_METRIC,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train ``peer`` epoch by epoch, score valid after each, report test at the best epoch.

    Parameters
    ----------
    peer : Peer
        ``partial_fit_epoch(train_csr) -> seconds`` and ``scorer()`` (:mod:`benchmarks.peers`).
    split : metricrec.data.splits.Split
        Train, valid and test parts over the same users and items.
    max_epochs : int
        Upper bound on epochs (1 is enough for the popularity peer).
    patience : int
        Stop after this many epochs without a better ``valid_metric``.
    eval_fn : callable, optional
        ``eval_fn(scorer, part)``; default :func:`protocol_eval` of ``split``.
    valid_metric : str, default "recall@50"
        Model-selection metric (docs/protocol.md).
    verbose : bool
        Print one line per epoch.

    Returns
    -------
    dict
        ``peer``, ``params``, ``epochs_run``, ``epoch_seconds`` (list), ``valid`` (list of dicts, one
        per epoch), ``best_epoch`` (1-based), ``best_valid`` (dict), ``test`` (dict at the best epoch),
        ``median_s_per_epoch``, ``train_seconds_to_best``, ``train_seconds_total``,
        ``eval_seconds_total``, ``peak_rss_mb`` (process peak so far, MiB).
    """
    if max_epochs < 1 or patience < 1:
        raise ValueError(f"max_epochs and patience must be >= 1, got {max_epochs} and {patience}")
    eval_fn = eval_fn if eval_fn is not None else protocol_eval(split)
    train = split.train.matrix
    seconds: list[float] = []
    valid: list[dict[str, float]] = []
    best = _Selection(valid_metric, patience)
    eval_seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        seconds.append(float(peer.partial_fit_epoch(train)))
        t = time.perf_counter()
        scorer = peer.scorer()  # a copy of the parameters: kept as is if this epoch is the best
        valid.append(dict(eval_fn(scorer, "valid")))
        eval_seconds += time.perf_counter() - t
        if verbose:
            print(f"{peer.name} epoch {epoch}: {seconds[-1]:.3f}s valid {valid_metric}="
                  f"{valid[-1].get(valid_metric, float('nan')):.4f}", flush=True)
        if best.offer(epoch, valid[-1], scorer):
            break
    t = time.perf_counter()
    test = dict(eval_fn(best.scorer, "test"))
    eval_seconds += time.perf_counter() - t
    return _report(peer, seconds, valid, best.epoch, test, eval_seconds)


def _report(peer: Peer, seconds: list[float], valid: list[dict[str, float]], best_epoch: int,
            test: dict[str, float], eval_seconds: float) -> dict[str, Any]:
    return {
        "peer": peer.name,
        "params": peer.params(),
        "epochs_run": len(seconds),
        "epoch_seconds": seconds,
        "valid": valid,
        "best_epoch": best_epoch,
        "best_valid": valid[best_epoch - 1],
        "test": test,
        "median_s_per_epoch": statistics.median(seconds),
        "train_seconds_to_best": float(sum(seconds[:best_epoch])),
        "train_seconds_total": float(sum(seconds)),
        "eval_seconds_total": eval_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
