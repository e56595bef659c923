"""Peer recommenders for side-by-side benchmarks: popularity, LightFM (WARP/BPR), implicit BPR and ALS.

Benchmark-only code: ``implicit`` and ``lightfm`` (the ``rectools-lightfm`` fork) are not metricrec
dependencies; see benchmarks/README.md for the install commands.

Every peer trains on a binary scipy CSR train matrix (n_users x n_items) one epoch at a time, so
the caller can evaluate on valid after each epoch and keep the best epoch (PROTOCOL.md):

- ``peer.partial_fit_epoch(train_csr) -> float``: one more epoch, returns its training seconds
  (no evaluation inside). Factors persist across calls; they are never re-initialised.
- ``peer.scorer() -> scorer``: ``scorer(users)`` with ``users`` an int array of shape (b,) returns a
  float32 ``torch.Tensor`` of shape (b, n_items), higher is better. The scorer holds a *copy* of
  the current factors, so a scorer kept at the best epoch stays valid while training goes on.

:func:`run_peer` is the generic driver (per-epoch timing, early stopping on valid Recall@50, test
metrics at the best epoch, peak RSS).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from metricrec.metrics import Scorer, embedding_scorer, evaluate

__all__ = ["PopularityPeer", "LightFMPeer", "lightfm_item_features", "ImplicitBPRPeer", "ImplicitALSPeer", "run_peer", "PEERS"]

# Implicit's own threads do the work; nested BLAS threads only oversubscribe the cores.
_BLAS_THREADS = 1


def _binary_csr(train: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(train, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    return m


def _dot_scorer(user: np.ndarray, item: np.ndarray) -> Scorer:
    """Scorer over copies of (n_users, d) and (n_items, d) factors: score = user . item."""
    u = torch.from_numpy(np.ascontiguousarray(user, dtype=np.float32).copy())
    v = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32).copy())
    return embedding_scorer(u, v, kind="dot")


class PopularityPeer:
    """Rank items by their number of train interactions (the same list for every user)."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.n_users = 0

    def partial_fit_epoch(self, train: sp.spmatrix) -> float:
        t = time.perf_counter()
        m = _binary_csr(train)
        self.n_users = m.shape[0]
        self.counts = np.bincount(m.indices, minlength=m.shape[1]).astype(np.float32)
        return time.perf_counter() - t

    def scorer(self) -> Scorer:
        if self.counts is None:
            raise RuntimeError("PopularityPeer: call partial_fit_epoch before scorer")
        return _dot_scorer(np.ones((self.n_users, 1), np.float32), self.counts[:, None])

    def params(self) -> dict[str, Any]:
        return {}


class LightFMPeer:
    """LightFM, one ``fit_partial`` epoch per step; pure collaborative filtering unless
    ``item_features`` are given.

    Parameters
    ----------
    loss : {"warp", "bpr", "warp-kos", "logistic"}
    no_components : int
        Embedding size ``d``.
    learning_rate, item_alpha, user_alpha, max_sampled : float, float, float, int
        As in :class:`lightfm.LightFM` (adagrad schedule).
    num_threads : int, default 2
    seed : int
        ``random_state`` of the model (initialisation and sampling).
    item_features : scipy sparse matrix, shape (n_items, n_columns), optional
        LightFM's item feature matrix, passed to every ``fit_partial`` and to the item
        representations (an item is the sum of its columns' embeddings). LightFM users usually give
        identity + features: see :func:`lightfm_item_features`.
    """

    def __init__(
        self,
        loss: str = "warp",
        no_components: int = 100,
        learning_rate: float = 0.05,
        item_alpha: float = 0.0,
        user_alpha: float = 0.0,
        max_sampled: int = 10,
        num_threads: int = 2,
        seed: int = 0,
        item_features: sp.spmatrix | None = None,
    ) -> None:
        from lightfm import LightFM  # benchmark-only dependency (rectools-lightfm)

        self.name = f"lightfm-{loss}" + ("+features" if item_features is not None else "")
        self.item_features = None if item_features is None else sp.csr_matrix(item_features, dtype=np.float32)
        self._params = dict(
            loss=loss, no_components=no_components, learning_rate=learning_rate, item_alpha=item_alpha,
            user_alpha=user_alpha, max_sampled=max_sampled, num_threads=num_threads, seed=seed,
        )
        self.num_threads = num_threads
        self.model = LightFM(
            no_components=no_components, loss=loss, learning_rate=learning_rate, item_alpha=item_alpha,
            user_alpha=user_alpha, max_sampled=max_sampled, random_state=np.random.RandomState(seed),
        )
        self._coo: sp.coo_matrix | None = None
        self._key: tuple[int, int, int] | None = None

    def partial_fit_epoch(self, train: sp.spmatrix) -> float:
        key = (id(train), train.shape[0], train.nnz)
        if self._key != key:  # convert once per train matrix; not part of an epoch's time
            self._coo = _binary_csr(train).tocoo()
            self._key = key
        t = time.perf_counter()
        self.model.fit_partial(self._coo, item_features=self.item_features, epochs=1, num_threads=self.num_threads)
        return time.perf_counter() - t

    def scorer(self) -> Scorer:
        # score = u . v + b_item (+ b_user, constant per user so irrelevant to ranking)
        _, u = self.model.get_user_representations()
        b, v = self.model.get_item_representations(self.item_features)
        return _dot_scorer(np.hstack([u, np.ones((len(u), 1), u.dtype)]), np.hstack([v, b[:, None]]))

    def params(self) -> dict[str, Any]:
        return dict(self._params)


def lightfm_item_features(features: sp.spmatrix, identity: bool = True) -> sp.csr_matrix:
    """LightFM's usual item feature matrix: ``[I | features]`` (or features alone), each row scaled
    to absolute sum 1 (what ``lightfm.data.Dataset`` builds by default). Items without features keep their
    identity column (or an empty row without one)."""
    f = sp.csr_matrix(features, dtype=np.float32)
    m = sp.hstack([sp.identity(f.shape[0], dtype=np.float32, format="csr"), f]).tocsr() if identity else f
    sums = np.asarray(abs(m).sum(1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ m)


class _ImplicitPeer:
    """Shared epoch loop for implicit's models: ``iterations=1`` fits continue the same factors.

    implicit initialises factors only when they are ``None`` and re-reads ``random_state`` on each
    ``fit``; a ``numpy.random.Generator`` (returned unaltered by implicit's ``check_random_state``)
    advances between calls, so every epoch draws fresh samples.
    """

    model: Any
    name: str
    _params: dict[str, Any]

    def partial_fit_epoch(self, train: sp.spmatrix) -> float:
        from threadpoolctl import threadpool_limits

        key = (id(train), train.shape[0], train.nnz)
        if getattr(self, "_key", None) != key:
            self._csr = self._prepare(train)
            self._key = key
        with threadpool_limits(_BLAS_THREADS, user_api="blas"):
            t = time.perf_counter()
            self.model.fit(self._csr, show_progress=False)
            return time.perf_counter() - t

    def _prepare(self, train: sp.spmatrix) -> sp.csr_matrix:
        return _binary_csr(train)

    def scorer(self) -> Scorer:
        if self.model.user_factors is None:
            raise RuntimeError(f"{self.name}: call partial_fit_epoch before scorer")
        return _dot_scorer(self.model.user_factors, self.model.item_factors)

    def params(self) -> dict[str, Any]:
        return dict(self._params)


class ImplicitBPRPeer(_ImplicitPeer):
    """implicit's BPR (CPU), one SGD pass over the train pairs per epoch.

    Its factors carry a bias column (user side fixed at 1), so ``user . item`` already includes
    the item bias.
    """

    def __init__(
        self,
        factors: int = 100,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        num_threads: int = 2,
        seed: int = 0,
    ) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self.name = "implicit-bpr"
        self._params = dict(
            factors=factors, learning_rate=learning_rate, regularization=regularization,
            num_threads=num_threads, seed=seed,
        )
        self.model = BayesianPersonalizedRanking(
            factors=factors, learning_rate=learning_rate, regularization=regularization, iterations=1,
            num_threads=num_threads, random_state=np.random.default_rng(seed),
        )


class ImplicitALSPeer(_ImplicitPeer):
    """implicit's ALS (CPU, conjugate gradient); one step = ``iterations`` alternating sweeps.

    Confidence is ``1 + alpha`` for a positive (implicit scales the binary matrix by ``alpha``).
    """

    def __init__(
        self,
        factors: int = 100,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 1,
        num_threads: int = 2,
        seed: int = 0,
    ) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        self.name = "implicit-als"
        self._params = dict(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            num_threads=num_threads, seed=seed,
        )
        self.model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            num_threads=num_threads, random_state=np.random.default_rng(seed),
        )


PEERS: dict[str, Callable[..., Any]] = {
    "popularity": PopularityPeer,
    "lightfm-warp": lambda **kw: LightFMPeer(loss="warp", **kw),
    "lightfm-bpr": lambda **kw: LightFMPeer(loss="bpr", **kw),
    "implicit-bpr": ImplicitBPRPeer,
    "implicit-als": ImplicitALSPeer,
}


def _part(split: Any, name: str) -> sp.csr_matrix:
    part = getattr(split, name)
    return sp.csr_matrix(getattr(part, "matrix", part))


def _default_eval(split: Any, ks: tuple[int, ...]) -> Callable[[Scorer, str], dict[str, float]]:
    train, valid, test = (_part(split, n) for n in ("train", "valid", "test"))
    seen = (train + valid).tocsr()
    seen.data[:] = 1.0

    def eval_fn(scorer: Scorer, part: str) -> dict[str, float]:
        if part == "valid":
            return evaluate(scorer, valid, train, ks=ks)
        return evaluate(scorer, test, seen, ks=ks)

    return eval_fn


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_peer(
    peer: Any,
    split: Any,
    max_epochs: int = 100,
    patience: int = 10,
    eval_fn: Callable[[Scorer, str], Mapping[str, float]] | None = None,
    *,
    valid_metric: str = "recall@50",
    ks: tuple[int, ...] = (10, 20, 50, 100),
    verbose: bool = False,
) -> dict[str, Any]:
    """Train ``peer`` epoch by epoch, evaluate on valid after each, report test at the best epoch.

    Parameters
    ----------
    peer : object with ``partial_fit_epoch(train_csr) -> seconds`` and ``scorer()``
    split : metricrec.data.splits.Split or any object with ``train``, ``valid``, ``test`` attributes
        that are :class:`~metricrec.data.interactions.Interactions` or CSR matrices (n_users x n_items).
    max_epochs : int
        Upper bound on epochs (1 is enough for :class:`PopularityPeer`).
    patience : int
        Stop after this many epochs without a better ``valid_metric``.
    eval_fn : callable, optional
        ``eval_fn(scorer, part)`` with ``part`` in {"valid", "test"} returns a metrics dict. Default:
        :func:`metricrec.metrics.evaluate` with the protocol's exclusions (train for valid; train and
        valid for test) at cut-offs ``ks``.
    valid_metric : str, default "recall@50"
        Model-selection metric (PROTOCOL.md).

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
    train = _part(split, "train")
    if eval_fn is None:
        eval_fn = _default_eval(split, ks)
    seconds: list[float] = []
    valid: list[dict[str, float]] = []
    best_epoch, best_value, best_scorer = 0, -np.inf, None
    eval_seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        seconds.append(float(peer.partial_fit_epoch(train)))
        t = time.perf_counter()
        scorer = peer.scorer()  # a copy of the factors: kept as is if this epoch is the best
        metrics = dict(eval_fn(scorer, "valid"))
        eval_seconds += time.perf_counter() - t
        valid.append(metrics)
        if valid_metric not in metrics:
            raise KeyError(f"eval_fn returned no {valid_metric!r}; keys: {sorted(metrics)}")
        if verbose:
            print(f"{getattr(peer, 'name', 'peer')} epoch {epoch}: {seconds[-1]:.2f}s "
                  f"valid {valid_metric}={metrics[valid_metric]:.4f}", flush=True)
        if metrics[valid_metric] > best_value:
            best_epoch, best_value, best_scorer = epoch, metrics[valid_metric], scorer
        elif epoch - best_epoch >= patience:
            break
    t = time.perf_counter()
    test = dict(eval_fn(best_scorer, "test"))
    eval_seconds += time.perf_counter() - t
    return {
        "peer": getattr(peer, "name", type(peer).__name__),
        "params": peer.params() if hasattr(peer, "params") else {},
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
        "peak_rss_mb": _peak_rss_mb(),
    }
