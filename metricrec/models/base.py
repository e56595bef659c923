"""What every embedding recommender shares: fitting through the model-agnostic trainer, exact
retrieval with filters, raw-id maps, and pickle-free persistence.

A model subclasses :class:`EmbeddingRecommender` and writes only its config class and its training
step (:meth:`EmbeddingRecommender._make_step`); see :mod:`metricrec.models.bpr` for a complete
second model in a few dozen lines, and the README's contributor section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..data.ids import IdIndex
from ..data.interactions import Interactions
from ..errors import ConfigError, DataError, NotFittedError
from ..fingerprint import fingerprint
from ..limits import limit_problem, max_threads, usable_cores
from ..metrics import Scorer, embedding_scorer
from ..training.backends import CHOICES, resolve_backend
from ..training.history import History
from ..training.optim import clip_rows
from ..training.trainer import EpochCallback, Trainer, TrainingStep
from .config import EmbeddingConfig
from .init import random_tables, spectral_tables
from .retrieval import DISTANCES
from .fold_in import FoldInMixin
from .frames import frame_interactions, is_dataframe
from .persistence import MODELS, PersistenceMixin, load_model
from .raw_ids import RawIdMixin
from .retrieval_api import RetrievalMixin

__all__ = ["EmbeddingRecommender", "MODELS", "load_model"]


class EmbeddingRecommender(PersistenceMixin, RetrievalMixin, RawIdMixin, FoldInMixin):
    """Base of recommenders that are two embedding tables (users, items) and a distance.

    Parameters
    ----------
    config : EmbeddingConfig, optional
        All hyperparameters (the subclass's config class); keyword arguments override its fields.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    num_threads : int, optional
        Torch CPU threads during training (restored afterwards): at most
        :func:`metricrec.limits.max_threads` (256, or the machine's cores where there are more).
    show_progress : bool
        tqdm bar over epochs.
    verbose : bool
        Print the per-epoch table.
    kernel : str
        Training-step backend, one of :data:`metricrec.training.backends.CHOICES` (``"auto"``: the
        compiled numba kernel on CPU when installed and the model has one, torch otherwise).
    id_dtype : {"int32", "int64"}
        Integer type of the item indices :meth:`recommend` returns. ``"int32"`` (the default) is what
        implicit's evaluation functions (``implicit.evaluation.ranking_metrics_at_k``, compiled for C
        ints) accept; a catalogue of more than 2**31 - 1 items gets int64 whatever the setting.
    **params
        Any field of the config class.

    Attributes
    ----------
    user_embeddings, item_embeddings : numpy.ndarray, shapes (n_users, d), (n_items, d)
    history : History
        Per-epoch loss, valid metrics and seconds of the last ``fit``.
    user_ids, item_ids : numpy.ndarray or None
        Raw ids when fitted on an :class:`Interactions` (saved with the model); ``user_map`` and
        ``item_map`` are the same as :class:`~metricrec.data.ids.IdIndex` objects.
    user_items : scipy.sparse.csr_matrix or None
        The training positives, kept and saved with the model (what "already liked" means for
        :meth:`recommend_raw`).
    ann_index : object or None
        An approximate nearest-neighbour index over the items (``approximate=True``).
    data_fingerprint : dict or None
        Facts about the training data (sizes, digests of ids and pairs; :mod:`metricrec.fingerprint`),
        saved with the model so that evaluating it on other data is refused.
    last_epoch_seconds : float or None
        Training seconds of the most recent epoch (evaluation excluded).
    init_seconds : float or None
        Seconds the initial tables of the last ``fit`` took (the spectral start's SVD; not part of
        ``history``'s epoch seconds).
    """

    #: The config dataclass of the model.
    config_class: ClassVar[type[EmbeddingConfig]] = EmbeddingConfig
    #: The name stored in model files.
    model_name: ClassVar[str] = ""
    #: How the model scores (see :data:`metricrec.models.retrieval.DISTANCES`).
    distance: ClassVar[str] = "euclidean"
    #: Backends the model has a step for (None: all of the registry).
    backends: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.model_name:
            assert cls.distance in DISTANCES, cls.distance  # a programming error in a model class
            MODELS[cls.model_name] = cls

    def __init__(self, config: EmbeddingConfig | None = None, *, device: str = "cpu", num_threads: int | None = None,
                 show_progress: bool = True, verbose: bool = True, kernel: str = "auto", id_dtype: str = "int32",
                 **params: Any) -> None:
        base = config if config is not None else self.config_class()
        if not isinstance(base, self.config_class):
            raise ConfigError(f"config must be a {self.config_class.__name__}, got {type(base).__name__}")
        self.config = base.replace(**params) if params else base
        self.device = _device(device)
        problem = None if num_threads is None else limit_problem("num_threads", num_threads, 1, max_threads())
        if problem:  # the CLI's --threads bound (metricrec.limits): a million threads abort inside OpenMP
            raise ConfigError(f"{problem} ({usable_cores()} usable CPU core(s) here)")
        if kernel not in CHOICES or (self.backends is not None and kernel not in (*self.backends, "auto")):
            raise ConfigError(f"kernel must be one of {', '.join(self._kernel_choices())}; got {kernel!r}")
        if id_dtype not in ("int64", "int32"):
            raise ConfigError(f"id_dtype must be 'int64' or 'int32', got {id_dtype!r}")
        self.num_threads, self.show_progress, self.verbose, self.kernel = num_threads, show_progress, verbose, kernel
        self.id_dtype = np.dtype(id_dtype)
        self.history = History()
        self.user_map: IdIndex | None = None
        self.item_map: IdIndex | None = None
        self.user_items: sp.csr_matrix | None = None
        self.ann_index: Any = None
        self.data_fingerprint: dict[str, Any] | None = None
        self._item_sq: np.ndarray | None = None
        self.last_epoch_seconds: float | None = None
        self.init_seconds: float | None = None
        self._user: torch.Tensor | None = None
        self._item: torch.Tensor | None = None
        self._trainer: Trainer | None = None
        self._rng_state: torch.Tensor | None = None

    def _kernel_choices(self) -> tuple[str, ...]:
        return CHOICES if self.backends is None else ("auto", *self.backends)

    # ------------------------------------------------------------------ what a model writes
    def _make_step(self, config: EmbeddingConfig, user_emb: torch.Tensor, item_emb: torch.Tensor,
                   train: sp.csr_matrix, user_items: Any, backend: str, **fit_kw: Any) -> TrainingStep:
        """The model's training step over the given tables (trained in place) on ``train``."""
        raise NotImplementedError

    def _fold_in_config(self, epochs: int) -> EmbeddingConfig:
        """The config a fold-in trains with: the model's, run for ``epochs`` without early stopping."""
        return self.config.replace(epochs=epochs, patience=0, batch_size=None)

    def _adopt(self, step: TrainingStep) -> None:
        """Keep what the step trained besides the tables (CML+F: the feature network)."""

    def _extra_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and metadata a model saves besides the tables."""
        return {}, {}

    def _load_extra(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
        """Restore what :meth:`_extra_arrays` saved."""

    # ------------------------------------------------------------------ training
    def fit(self, user_items: sp.spmatrix | Interactions, valid: sp.spmatrix | Interactions | None = None, *,
            callbacks: Sequence[EpochCallback] = (), show_progress: bool | None = None, **fit_kw: Any):
        """Train on a user x item matrix of positives.

        Parameters
        ----------
        user_items : scipy.sparse matrix, Interactions or pandas.DataFrame, shape (n_users, n_items)
            Non-zero entries are positives (weights must be finite and >= 0; zeros are ignored). A
            DataFrame has one row per interaction: a ``user`` (or ``user_id``, ``userId``) and an
            ``item`` (or ``item_id``, ``itemId``) column and optionally a ``rating`` (or ``weight``)
            column (:mod:`metricrec.models.frames`); the model then keeps its raw ids, users and
            items in sorted id order.
        valid : same type, optional
            Held-out positives: per-epoch Recall@50/@100 in the table, early stopping on Recall@50
            with the best epoch's weights restored. A DataFrame is read in the users and items of
            ``user_items`` (an id they lack is an :class:`~metricrec.errors.UnknownIdError`).
        callbacks : sequence of callables
            ``callback(record, trainer)`` after each epoch; return True to stop.
        show_progress : bool, optional
            Overrides the model's ``show_progress`` for this call.
        **fit_kw
            Model-specific inputs (CML: ``item_features``).

        Returns
        -------
        self
        """
        user_items, valid = _from_frames(user_items, valid)
        train, valid_m = self._fit_data(user_items, valid)
        self._init_tables(*train.shape, train=train)
        trainer = self._trainer_for(train, valid_m, user_items, callbacks, show_progress, fit_kw)
        with self._training_context():
            self.history = trainer.fit()
        self._finish(trainer, user_items)
        return self

    def fit_partial(self, user_items: sp.spmatrix | Interactions, epochs: int = 1, **fit_kw: Any):
        """Train ``epochs`` more epochs, continuing the tables and optimiser state of earlier calls
        on the same data (the first call initialises; new data of the same shape keeps the tables
        and restarts the optimiser). No validation, no early stopping. ``user_items`` as in
        :meth:`fit` (a DataFrame too).

        Returns
        -------
        self
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        user_items, _ = _from_frames(user_items, None)
        train, _ = self._fit_data(user_items, None)
        trainer = self._trainer
        if trainer is None or not _same_matrix(trainer.train, train):
            if self._user is None or (self._user.shape[0], self._item.shape[0]) != train.shape:
                self._init_tables(*train.shape, train=train)
            trainer = self._trainer_for(train, None, user_items, (), False, fit_kw)
        with self._training_context():
            for _ in range(epochs):
                self.last_epoch_seconds = trainer.run_epoch().seconds
        trainer.history.best_epoch = trainer.history.epochs[-1].epoch
        self.history = trainer.history
        self._finish(trainer, user_items)
        return self

    def _trainer_for(self, train, valid_m, user_items, callbacks, show_progress, fit_kw) -> Trainer:
        backend = resolve_backend(self.kernel, self.device, self.backends)
        step = self._make_step(self.config, self._user, self._item, train, user_items, backend, **fit_kw)
        progress = self.show_progress if show_progress is None else show_progress
        self._trainer = Trainer(step, train, valid_m, config=self.config, device=self.device, progress=progress,
                                verbose=self.verbose, callbacks=callbacks)
        return self._trainer

    def _finish(self, trainer: Trainer, user_items: Any) -> None:
        self._adopt(trainer.step)
        if trainer.history.epochs:
            self.last_epoch_seconds = trainer.history.epochs[-1].seconds
        # ids of the data these vectors belong to (None for a plain matrix, never stale ones)
        if isinstance(user_items, Interactions):
            self.user_map = IdIndex(user_items.user_ids, name="user")
            self.item_map = IdIndex(user_items.item_ids, name="item")
        else:
            self.user_map = self.item_map = None
        self.data_fingerprint = fingerprint(trainer.train, self.user_ids, self.item_ids)
        liked = sp.csr_matrix(trainer.train, dtype=np.float32, copy=True)
        liked.data[:] = 1.0
        self.user_items = liked
        self._item_sq = None

    @contextlib.contextmanager
    def _training_context(self) -> Iterator[None]:
        """The caller's thread count and RNG untouched; the model's own RNG seeded at the start of
        a fit and carried from one ``fit_partial`` call to the next."""
        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.random.fork_rng(devices=[]):  # e.g. CML+F's dropout: seeded, and continued
                if self._trainer is not None and self._rng_state is not None:  # by fit_partial
                    torch.set_rng_state(self._rng_state)
                else:
                    torch.manual_seed(self.config.seed)
                yield
                self._rng_state = torch.get_rng_state()
        finally:
            torch.set_num_threads(old_threads)

    def _init_tables(self, n_users: int, n_items: int, train: sp.csr_matrix | None = None) -> None:
        """Fresh tables: ``config.init`` (:mod:`metricrec.models.init`; the spectral start needs
        ``train`` and falls back to the seeded normal one without it or on a tiny matrix), projected
        into the ball. Sets :attr:`init_seconds`."""
        cfg = self.config
        t0 = time.perf_counter()
        tables = None
        if cfg.init == "spectral" and train is not None:
            tables = spectral_tables(train, cfg.factors, cfg.seed, cfg.max_norm or 1.0)
        if tables is not None:
            user, item = (torch.from_numpy(t) for t in tables)
        else:
            std = cfg.init_std if cfg.init_std is not None else 1.0 / np.sqrt(cfg.factors)
            user, item = random_tables(n_users, n_items, cfg.factors, std, cfg.seed)
        self._user, self._item = user.to(self.device), item.to(self.device)
        clip_rows(self._user, cfg.max_norm)
        clip_rows(self._item, cfg.max_norm)
        self._trainer, self._rng_state = None, None
        self.init_seconds = time.perf_counter() - t0

    def _fit_data(self, user_items: Any, valid: Any) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
        train = as_matrix(user_items, "user_items")
        if train.nnz == 0:
            raise DataError("user_items has no positive interactions: nothing to train on")
        if valid is None:
            return train, None
        valid_m = as_matrix(valid, "valid")
        if valid_m.shape != train.shape:
            raise DataError(f"valid has shape {valid_m.shape} but user_items has shape {train.shape}")
        if valid_m.nnz == 0:
            raise DataError("valid has no positive interactions: nothing to validate on")
        overlap = train.multiply(valid_m).nnz
        if overlap:
            raise DataError(f"valid shares {overlap} (user, item) pairs with user_items; splits must be disjoint")
        return train, valid_m

    # ------------------------------------------------------------------ embeddings
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user is None or self._item is None:
            raise NotFittedError(f"this {type(self).__name__} model is not fitted yet: call fit() or load()")
        return self._user, self._item

    def _item_sq_norms(self) -> np.ndarray:
        """Cached squared norms of the item vectors (numpy, float32)."""
        if self._item_sq is None or self._item_sq.shape[0] != self._fitted()[1].shape[0]:
            v = self.item_embeddings
            self._item_sq = np.einsum("ij,ij->i", v, v)
        return self._item_sq

    def attach_index(self, index: Any) -> None:
        """Use ``index`` (``search(queries, k) -> (distances, ids)``) for ``approximate=True``."""
        self.ann_index = index

    @property
    def user_embeddings(self) -> np.ndarray:
        """User vectors, shape (n_users, d), as numpy (on CPU)."""
        return self._fitted()[0].detach().cpu().numpy()

    @property
    def item_embeddings(self) -> np.ndarray:
        """Item vectors, shape (n_items, d), as numpy (on CPU)."""
        return self._fitted()[1].detach().cpu().numpy()

    def scorer(self) -> Scorer:
        """The model's scores for :mod:`metricrec.metrics`: ``scorer(users) -> (len(users), n_items)``
        tensor, higher is better (ranking exactly as :meth:`recommend`)."""
        user, item = self._fitted()
        return embedding_scorer(user, item, "dot" if self.distance == "dot" else "neg_sq_distance")

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)
                           if getattr(self.config, f.name) != f.default)
        return f"{type(self).__name__}({fields})"


# ---------------------------------------------------------------------- helpers
def as_matrix(data: sp.spmatrix | Interactions, name: str) -> sp.csr_matrix:
    """A canonical float64 CSR copy of a sparse matrix or an Interactions' matrix (zeros dropped,
    duplicates summed, indices sorted); :class:`DataError` on NaN, infinite or negative weights."""
    if isinstance(data, Interactions):
        m = data.matrix
    elif sp.issparse(data):
        m = data
    else:
        raise TypeError(f"{name} must be a scipy sparse matrix, an Interactions or a pandas DataFrame, "
                        f"got {type(data).__name__}")
    m = sp.csr_matrix(m, dtype=np.float64, copy=True)
    if m.nnz and not np.all(np.isfinite(m.data)):
        raise DataError(f"{name} contains NaN or infinite values")
    if m.nnz and (m.data < 0).any():
        raise DataError(f"{name} contains negative weights ({int((m.data < 0).sum())} entries)")
    m.eliminate_zeros()
    m.sum_duplicates()
    m.sort_indices()
    return m


def _from_frames(user_items: Any, valid: Any) -> tuple[Any, Any]:
    """DataFrames given to ``fit`` as :class:`Interactions` (valid in the users and items of the
    training frame); anything else unchanged."""
    if is_dataframe(user_items):
        user_items = frame_interactions(user_items, "user_items")
    if is_dataframe(valid):
        if not isinstance(user_items, Interactions):
            raise TypeError("valid is a DataFrame but user_items is a matrix without ids: give user_items as a "
                            "DataFrame or an Interactions too, so that valid's ids can be matched")
        valid = frame_interactions(valid, "valid", like=user_items)
    return user_items, valid


def _same_matrix(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def _device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available in this torch build/machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return dev


