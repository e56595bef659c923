"""Peer recommenders for side-by-side benchmarks: popularity, LightFM (WARP/BPR), implicit BPR and
ALS, EASE (:class:`benchmarks.ease.EASEPeer`) and metricrec's own CML
(:class:`benchmarks.cml_peer.CMLPeer`) behind the same protocol.

Benchmark-only code: ``implicit`` and ``lightfm`` (the ``rectools-lightfm`` fork) are not metricrec
dependencies; see benchmarks/README.md for the install commands.

Every peer trains on a binary scipy CSR train matrix (n_users x n_items) one epoch at a time, so
the caller can evaluate on valid after each epoch and keep the best epoch (docs/protocol.md):

- ``peer.partial_fit_epoch(train_csr) -> float``: one more epoch, returns its training seconds
  (no evaluation inside). Parameters persist across calls; they are never re-initialised.
- ``peer.scorer() -> scorer``: ``scorer(users)`` with ``users`` an int array of shape (b,) returns a
  float32 ``torch.Tensor`` of shape (b, n_items), higher is better. The scorer holds a *copy* of
  the current parameters, so a scorer kept at the best epoch stays valid while training goes on.
- ``peer.params() -> dict``: the settings, for the results file.
- optionally ``peer.skip_reason(train_csr) -> str | None``: why the method cannot run on this data
  here (EASE: the item-item inverse would not fit in memory), checked before training.

:func:`benchmarks.runner.run_peer` is the loop that drives them; :func:`make_peer` builds one by name.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from metricrec.metrics import Scorer, embedding_scorer

from .cml_peer import CMLPeer
from .ease import EASEPeer

__all__ = ["PopularityPeer", "LightFMPeer", "lightfm_item_features", "ImplicitBPRPeer", "ImplicitALSPeer",
           "CMLPeer", "EASEPeer", "PEERS", "make_peer"]

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

    def __init__(self, num_threads: int = 1) -> None:  # threads: accepted like every peer's; unused
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


#: Every benchmarked method by name: a factory taking ``num_threads`` and the method's settings.
PEERS: dict[str, Callable[..., Any]] = {
    "cml": CMLPeer,
    "popularity": PopularityPeer,
    "lightfm-warp": lambda **kw: LightFMPeer(loss="warp", **kw),
    "lightfm-bpr": lambda **kw: LightFMPeer(loss="bpr", **kw),
    "implicit-bpr": ImplicitBPRPeer,
    "implicit-als": ImplicitALSPeer,
    "ease": EASEPeer,
}


def make_peer(method: str, params: dict[str, Any] | None = None, *, num_threads: int = 2, **extra: Any) -> Any:
    """The peer named ``method`` (a key of :data:`PEERS`) with settings ``params``.

    Parameters
    ----------
    method : str
    params : dict, optional
        The method's settings (e.g. ``{"margin": 1.5}`` for CML, ``{"learning_rate": 0.02}`` for
        LightFM).
    num_threads : int
        Threads of the method's training (every method of one comparison gets the same).
    **extra
        Further constructor arguments (e.g. ``item_features``).
    """
    if method not in PEERS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(PEERS)}")
    return PEERS[method](num_threads=num_threads, **{**(params or {}), **extra})
