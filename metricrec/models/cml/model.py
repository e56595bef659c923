"""`CML`: the Collaborative Metric Learning recommender with an implicit/LightFM-style API."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ... import __version__
from .config import CMLConfig
from .feature_reg import FeatureRegularizer, make_item_regularizer
from .feature_net import FeatureMLP, SparseRows, feature_row_tensor, mlp_from_arrays, mlp_to_arrays
from ...data.interactions import Features, Interactions
from .step_torch import cml_step
from ...training.optim import GradBuffer
from ...training.optim import RowAdagrad, clip_rows
from ...training.sampling import UniformSampler
from ...serialization import ModelFormatError, load_model_files, save_model_files
from ...training.trainer import EpochCallback, History, Trainer

__all__ = ["CML"]


class CML:
    """Collaborative Metric Learning (Hsieh et al., WWW 2017).

    Users and items are points in one Euclidean space; a user is pulled towards the items it
    interacted with and pushes sampled impostors out of a margin. Scores are negative Euclidean
    distances (higher is better).

    Parameters
    ----------
    config : CMLConfig, optional
        All hyperparameters; keyword arguments override its fields (``CML(margin=1.0)``).
    device : str
        ``"cpu"`` or ``"cuda"`` (``"auto"`` picks CUDA when available).
    num_threads : int, optional
        Torch CPU threads during ``fit`` (restored afterwards).
    show_progress : bool
        tqdm bar over epochs.
    verbose : bool
        Print the per-epoch table.
    kernel : {"auto", "torch", "numba"}
        Backend of the training step: the compiled CPU kernel (numba, ``metricrec[fast]``) or
        torch ops (any device). ``"auto"`` picks numba on CPU when installed. Same maths.
    **params
        Any :class:`CMLConfig` field.

    Attributes
    ----------
    user_embeddings, item_embeddings : numpy.ndarray, shapes (n_users, d), (n_items, d)
    history : History
        Per-epoch loss, valid metrics and seconds of the last ``fit``.
    user_ids, item_ids : numpy.ndarray or None
        Raw ids when fitted on an :class:`Interactions` (saved with the model).
    item_feature_names : numpy.ndarray of str or None
        Feature columns of a model trained with item features (CML+F); its feature network f is
        saved with it and drives :meth:`recalculate_item`.
    feature_info : dict or None
        What the feature term used (weight, MLP shape, rows with features, cold items).
    """

    def __init__(
        self,
        config: CMLConfig | None = None,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        show_progress: bool = True,
        verbose: bool = True,
        kernel: str = "auto",
        **params: Any,
    ) -> None:
        base = config if config is not None else CMLConfig()
        self.config = base.replace(**params) if params else base
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available in this torch build/machine")
        self.device = torch.device(device)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        self.show_progress = show_progress
        if kernel not in ("auto", "torch", "numba"):
            raise ValueError(f"kernel must be 'auto', 'torch' or 'numba', got {kernel!r}")
        self.kernel = kernel
        self.verbose = verbose
        self.history = History()
        self.user_ids: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None
        self._user: torch.Tensor | None = None
        self._item: torch.Tensor | None = None
        self._item_mlp: FeatureMLP | None = None
        self._item_placement: tuple[torch.Tensor, float] | None = None  # (centre c, scale s) for f's items
        self.item_feature_names: np.ndarray | None = None
        self.feature_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ training
    def fit(
        self,
        user_items: sp.spmatrix | Interactions,
        valid: sp.spmatrix | Interactions | None = None,
        *,
        item_features: Features | sp.spmatrix | np.ndarray | None = None,
        callbacks: Sequence[EpochCallback] = (),
        show_progress: bool | None = None,
    ) -> "CML":
        """Train on a user x item matrix of positives.

        Parameters
        ----------
        user_items : scipy.sparse matrix or Interactions, shape (n_users, n_items)
            Non-zero entries are positives (weights must be finite and >= 0; zeros are ignored).
        valid : same type, optional
            Held-out positives: per-epoch Recall@50/@100 in the table, early stopping on Recall@50
            with the best epoch's weights restored.
        item_features : Features, scipy sparse matrix or 2-D array, shape (n_items, n_features), optional
            Item features for CML+F (needs ``feature_weight > 0``). When omitted and
            ``feature_weight > 0``, the ``item_features`` of an :class:`Interactions` ``user_items``
            are used. Items with features but no training interaction are placed by f alone
            (``v_j = c + s (f(x_j) - c)``, see :meth:`item_vectors_from_features`).
        callbacks : sequence of callables
            ``callback(record, trainer)`` after each epoch; return True to stop.
        """
        train = self._as_matrix(user_items, "user_items")
        if train.nnz == 0:
            raise ValueError("user_items has no positive interactions: nothing to train on")
        valid_m = None
        if valid is not None:
            valid_m = self._as_matrix(valid, "valid")
            if valid_m.shape != train.shape:
                raise ValueError(f"valid has shape {valid_m.shape} but user_items has shape {train.shape}")
            if valid_m.nnz == 0:
                raise ValueError("valid has no positive interactions: nothing to validate on")
            overlap = train.multiply(valid_m).nnz
            if overlap:
                raise ValueError(f"valid shares {overlap} (user, item) pairs with user_items; splits must be disjoint")
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        std = cfg.init_std if cfg.init_std is not None else 1.0 / np.sqrt(cfg.factors)
        n_users, n_items = train.shape
        user = (torch.randn(n_users, cfg.factors, generator=gen) * std).to(self.device)
        item = (torch.randn(n_items, cfg.factors, generator=gen) * std).to(self.device)
        clip_rows(user, cfg.max_norm)
        clip_rows(item, cfg.max_norm)
        reg = make_item_regularizer(cfg, train, user_items, item_features, self.device)
        if reg is not None and cfg.init_from_features:
            reg.initial_vectors(item)
        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            trainer = Trainer(
                cfg, train, valid_m, device=self.device,
                progress=self.show_progress if show_progress is None else show_progress,
                verbose=self.verbose, callbacks=callbacks, hooks=[] if reg is None else [reg],
                kernel=self.kernel,
            )
            with torch.random.fork_rng(devices=[]):  # f's dropout: seeded, the caller's RNG untouched
                torch.manual_seed(cfg.seed)
                self.history = trainer.fit(user, item)
        finally:
            torch.set_num_threads(old_threads)
        self._user, self._item = user, item
        self._set_feature_model(reg)
        # ids of the data these vectors belong to (None for a plain matrix, never stale ones)
        if isinstance(user_items, Interactions):
            self.user_ids, self.item_ids = user_items.user_ids, user_items.item_ids
        else:
            self.user_ids = self.item_ids = None
        return self

    def _set_feature_model(self, reg: FeatureRegularizer | None) -> None:
        self._item_mlp = None if reg is None else reg.mlp.eval()
        self._item_placement = None if reg is None else (reg.center.clone(), float(reg.scale))
        self.item_feature_names = None if reg is None else reg.features.names
        self.feature_info = None if reg is None else reg.describe()

    @staticmethod
    def _as_matrix(data: sp.spmatrix | Interactions, name: str) -> sp.csr_matrix:
        if isinstance(data, Interactions):
            m = data.matrix
        elif sp.issparse(data):
            m = data
        else:
            raise TypeError(f"{name} must be a scipy sparse matrix or an Interactions, got {type(data).__name__}")
        m = sp.csr_matrix(m, dtype=np.float64, copy=True)  # the clean-up below works in place
        if m.nnz and not np.all(np.isfinite(m.data)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if m.nnz and (m.data < 0).any():
            raise ValueError(f"{name} contains negative weights ({int((m.data < 0).sum())} entries)")
        m.eliminate_zeros()
        m.sum_duplicates()
        m.sort_indices()
        return m

    # ------------------------------------------------------------------ embeddings
    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user is None or self._item is None:
            raise RuntimeError("this CML model is not fitted yet: call fit() or CML.load()")
        return self._user, self._item

    @property
    def user_embeddings(self) -> np.ndarray:
        """User vectors, shape (n_users, d), as numpy (on CPU)."""
        return self._fitted()[0].detach().cpu().numpy()

    @property
    def item_embeddings(self) -> np.ndarray:
        """Item vectors, shape (n_items, d), as numpy (on CPU)."""
        return self._fitted()[1].detach().cpu().numpy()

    # ------------------------------------------------------------------ retrieval
    def recommend(
        self,
        userid: int | Sequence[int] | np.ndarray,
        user_items: sp.spmatrix | None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items: Sequence[int] | np.ndarray | None = None,
        recalculate_user: bool = False,
        items: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items for one or many users.

        Parameters
        ----------
        userid : int or array of int
            User indices. A scalar gives 1-D results, an array 2-D results (one row per user).
        user_items : scipy.sparse matrix, shape (len(userid), n_items), or None
            The rows of these users' interactions (as in ``implicit``): used to filter already-liked
            items and, with ``recalculate_user``, to fold the users in. Required unless
            ``filter_already_liked_items=False``.
        N : int
            Number of items to return (may exceed the number of candidates: see the padding below).
        filter_items : array of int, optional
            Item indices never to return.
        recalculate_user : bool
            Fit each user's vector from ``user_items`` against the frozen items (fold-in) instead
            of using the trained vector; ``userid`` is then only used for the output shape.
        items : array of int, optional
            Restrict the candidates to these item indices.

        Returns
        -------
        ids : numpy.ndarray of int64, shape (N,) or (n_users, N)
        scores : numpy.ndarray of float32, same shape
            Negative Euclidean distances, best first. Where a user has fewer than N candidates left
            after filtering, the tail is padded with id -1 and score -inf.
        """
        user, item = self._fitted()
        scalar = np.ndim(userid) == 0
        uids = np.atleast_1d(np.asarray(userid))
        if uids.dtype.kind not in "iu":
            raise TypeError(f"userid must be integer user indices, got dtype {uids.dtype}")
        if uids.ndim != 1:
            raise ValueError(f"userid must be a scalar or a 1-D array, got shape {uids.shape}")
        n_users, n_items = user.shape[0], item.shape[0]
        if not recalculate_user:
            bad = uids[(uids < 0) | (uids >= n_users)]
            if bad.size:
                raise IndexError(f"unknown user index {bad[0]} (the model has {n_users} users)")
        _check_n(N)
        rows = None
        if user_items is not None:
            if not sp.issparse(user_items):
                raise TypeError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
            rows = sp.csr_matrix(user_items)
            if rows.shape != (uids.size, n_items):
                raise ValueError(
                    f"user_items must have shape (len(userid), n_items) = ({uids.size}, {n_items}), got {rows.shape}"
                )
        elif filter_already_liked_items or recalculate_user:
            raise ValueError("user_items is required when filter_already_liked_items or recalculate_user is set")
        if recalculate_user:
            assert rows is not None
            qvec = torch.stack([torch.from_numpy(self.recalculate_user(rows[i])) for i in range(rows.shape[0])]).to(item)
        else:
            qvec = user[torch.from_numpy(uids.astype(np.int64)).to(self.device)]
        mask = self._candidate_mask(uids.size, n_items, rows if filter_already_liked_items else None, filter_items, items)
        ids, scores = _top_n(qvec, item, N, mask)
        return (ids[0], scores[0]) if scalar else (ids, scores)

    def similar_items(
        self,
        itemid: int | Sequence[int] | np.ndarray,
        N: int = 10,
        filter_items: Sequence[int] | np.ndarray | None = None,
        items: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items (the query item itself first, at score 0) -- same shapes as :meth:`recommend`."""
        _, item = self._fitted()
        return self._similar(item, item, itemid, N, filter_items, items, "item")

    def similar_users(
        self,
        userid: int | Sequence[int] | np.ndarray,
        N: int = 10,
        filter_users: Sequence[int] | np.ndarray | None = None,
        users: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest users (the query user first) -- same shapes as :meth:`recommend`."""
        user, _ = self._fitted()
        return self._similar(user, user, userid, N, filter_users, users, "user")

    def _similar(self, table, candidates, qid, N, filter_ids, only_ids, what):
        scalar = np.ndim(qid) == 0
        q = np.atleast_1d(np.asarray(qid))
        if q.dtype.kind not in "iu":
            raise TypeError(f"{what}id must be integer indices, got dtype {q.dtype}")
        if q.ndim != 1:
            raise ValueError(f"{what}id must be a scalar or a 1-D array, got shape {q.shape}")
        bad = q[(q < 0) | (q >= table.shape[0])]
        if bad.size:
            raise IndexError(f"unknown {what} index {bad[0]} (the model has {table.shape[0]} {what}s)")
        _check_n(N)
        mask = self._candidate_mask(q.size, candidates.shape[0], None, filter_ids, only_ids)
        ids, scores = _top_n(table[torch.from_numpy(q.astype(np.int64)).to(table.device)], candidates, N, mask)
        return (ids[0], scores[0]) if scalar else (ids, scores)

    def _candidate_mask(self, n_rows, n_cols, liked, filter_ids, only_ids) -> torch.Tensor:
        """(n_rows, n_cols) bool, True where a column may be returned."""
        mask = torch.ones(n_rows, n_cols, dtype=torch.bool)
        if only_ids is not None:
            allowed = torch.zeros(n_cols, dtype=torch.bool)
            allowed[torch.from_numpy(_check_ids(only_ids, n_cols, "items"))] = True
            mask &= allowed
        if filter_ids is not None:
            mask[:, torch.from_numpy(_check_ids(filter_ids, n_cols, "filter_items"))] = False
        if liked is not None and liked.nnz:
            r = np.repeat(np.arange(n_rows), np.diff(liked.indptr))
            keep = liked.data != 0  # stored zeros are not interactions (as in fit)
            mask[torch.from_numpy(r[keep]), torch.from_numpy(liked.indices[keep].astype(np.int64))] = False
        return mask.to(self.device)

    # ------------------------------------------------------------------ fold-in
    def recalculate_user(self, liked_items: sp.spmatrix | Sequence[int] | np.ndarray, *, steps: int = 100,
                         learning_rate: float | None = None, seed: int = 0) -> np.ndarray:
        """Fit a vector for a user unseen in training, against the frozen item vectors.

        The user starts at the centroid of its items and takes ``steps`` AdaGrad steps on the
        model's own loss (margin, U negatives, rank weight, unit ball); item vectors do not move.

        Parameters
        ----------
        liked_items : 1 x n_items sparse row or array of item indices
        steps : int
        Returns
        -------
        numpy.ndarray, shape (d,)
        """
        _, item = self._fitted()
        n_items = item.shape[0]
        if sp.issparse(liked_items):
            row = sp.csr_matrix(liked_items)
            if row.shape != (1, n_items):
                raise ValueError(f"liked_items must be a 1 x {n_items} row, got shape {row.shape}")
            idx = row.indices[row.data != 0].astype(np.int64)
        else:
            idx = _check_ids(liked_items, n_items, "liked_items")
        idx = np.unique(idx)
        if idx.size == 0:
            raise ValueError("liked_items is empty: a user needs at least one item to be folded in")
        if idx.size >= n_items:
            raise ValueError("liked_items covers every item: no negatives to learn from")
        cfg = self.config
        user = item[torch.from_numpy(idx).to(item.device)].mean(0, keepdim=True).clone()
        row_m = sp.csr_matrix((np.ones(idx.size, np.float32), idx, [0, idx.size]), shape=(1, n_items))
        sampler = UniformSampler(row_m, seed=seed, device=item.device)
        opt = RowAdagrad(user, learning_rate or cfg.learning_rate)
        gu = GradBuffer(1, user.shape[1], dtype=user.dtype, device=item.device)
        gi = GradBuffer(n_items, user.shape[1], dtype=user.dtype, device=item.device)
        users = torch.zeros(idx.size, dtype=torch.long, device=item.device)
        pos = torch.from_numpy(idx).to(item.device)
        for _ in range(steps):
            draw = sampler.sample(users, cfg.n_negatives, 1)
            cml_step(user, item, users, pos, draw, gu, gi, margin=cfg.margin, use_rank_weight=cfg.use_rank_weight)
            opt.step(*gu.pop(), max_norm=cfg.max_norm)
            gi.pop()
        return user[0].detach().cpu().numpy()

    def recalculate_item(self, features: Any) -> np.ndarray:
        """Vector of a brand-new item from its features alone, placed as the cold items of ``fit``.

        Parameters
        ----------
        features : 1 x n_features sparse row, array of shape (n_features,), or dict name -> value
            The item's feature vector in the model's columns (:attr:`item_feature_names`); a dict
            names features (unknown names are a ``KeyError``).

        Returns
        -------
        numpy.ndarray, shape (d,)
        """
        x = feature_row_tensor(features, self._feature_names()).numpy()
        return self.item_vectors_from_features(x)[0]

    def item_vectors_from_features(self, features: Any, *, calibrated: bool = True) -> np.ndarray:
        """Vectors of items from their features: ``c + s (f(x) - c)`` in the ball (how ``fit`` places
        items with features and no training interaction; see :mod:`metricrec.feature_reg`), or the
        raw ``f(x)`` in the ball with ``calibrated=False``.

        Parameters
        ----------
        features : Features, scipy sparse matrix or 2-D array, shape (n, n_features)
            Rows in the model's feature columns.

        Returns
        -------
        numpy.ndarray, shape (n, d)
        """
        names = self._feature_names()
        if isinstance(features, Features) and not np.array_equal(features.names, names):
            raise ValueError("features: the columns differ from the model's item_feature_names")
        m = features.matrix if isinstance(features, Features) else sp.csr_matrix(features, dtype=np.float32)
        if m.shape[1] != len(names):
            raise ValueError(f"features must have {len(names)} columns (the model's features), got {m.shape[1]}")
        if m.nnz and not np.all(np.isfinite(m.data)):
            raise ValueError("features contain NaN or infinite values")
        mlp, (center, scale) = self._item_mlp, self._item_placement  # set: _feature_names checked
        with torch.no_grad():
            pred = mlp.eval()(SparseRows(m, self.device).gather(None))
            if calibrated:
                pred = center + scale * (pred - center)
        return clip_rows(pred, self.config.max_norm).cpu().numpy()

    def _feature_names(self) -> np.ndarray:
        self._fitted()
        if self._item_mlp is None or self.item_feature_names is None or self._item_placement is None:
            raise RuntimeError("this model was trained without item features: no feature network to place an item")
        return self.item_feature_names

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, weights_format: str = "npz") -> Path:
        """Save to a directory (``weights.npz`` or ``weights.safetensors`` + ``config.json``) or a
        single ``.npz`` file. No pickle; exact round trip (float32 arrays as trained)."""
        user, item = self._fitted()
        arrays = {"user_embeddings": self.user_embeddings, "item_embeddings": self.item_embeddings}
        meta = {
            "model": "CML",
            "metricrec_version": __version__,
            "config": self.config.to_dict(),
            "n_users": int(user.shape[0]),
            "n_items": int(item.shape[0]),
            "user_ids": _ids_to_json(self.user_ids),
            "item_ids": _ids_to_json(self.item_ids),
            "history": self.history.to_dict(),
        }
        if self._item_mlp is not None and self.item_feature_names is not None and self._item_placement is not None:
            arrays.update(mlp_to_arrays(self._item_mlp, "item_mlp."))
            arrays["item_placement.center"] = self._item_placement[0].detach().cpu().numpy().astype(np.float32)
            meta["item_features"] = {"names": self.item_feature_names.tolist(), "mlp": self._item_mlp.shape_doc(),
                                     "placement_scale": self._item_placement[1], "info": self.feature_info}
        return save_model_files(path, arrays, meta, weights_format=weights_format)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> "CML":
        """Load a model written by :meth:`save` (on any device, e.g. a GPU-trained model on CPU)."""
        arrays, meta = load_model_files(path)
        if meta.get("model") != "CML":
            raise ModelFormatError(f"{path}: holds a {meta.get('model')!r} model, not CML")
        try:
            config = CMLConfig.from_dict(meta["config"])
            n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}: invalid model config ({exc})") from None
        expected = {"user_embeddings": (n_users, config.factors), "item_embeddings": (n_items, config.factors)}
        for name, shape in expected.items():
            if name not in arrays:
                raise ModelFormatError(f"{path}: array {name!r} is missing")
            arr = arrays[name]
            if arr.shape != shape or arr.dtype.kind != "f":
                raise ModelFormatError(f"{path}: array {name!r} has shape {arr.shape} dtype {arr.dtype}, expected {shape} float")
            if not np.all(np.isfinite(arr)):
                raise ModelFormatError(f"{path}: array {name!r} contains NaN or infinite values")
        model = cls(config, device=device, show_progress=False, verbose=False)
        model._user = torch.from_numpy(np.array(arrays["user_embeddings"], dtype=np.float32)).to(model.device)
        model._item = torch.from_numpy(np.array(arrays["item_embeddings"], dtype=np.float32)).to(model.device)
        model.user_ids = _ids_from_json(meta.get("user_ids"), n_users, "user_ids", path)
        model.item_ids = _ids_from_json(meta.get("item_ids"), n_items, "item_ids", path)
        hist = meta.get("history") or {}
        if not isinstance(hist, dict):
            raise ModelFormatError(f"{path}: invalid history (a {type(hist).__name__}, expected an object)")
        model.history = History(best_epoch=hist.get("best_epoch"), stopped_early=bool(hist.get("stopped_early", False)))
        if meta.get("item_features") is not None:
            doc = meta["item_features"]
            model._item_mlp, model.item_feature_names, model.feature_info = mlp_from_arrays(
                arrays, doc, "item_mlp.", config.factors, path)
            model._item_mlp.to(model.device)
            center = arrays.get("item_placement.center")
            scale = doc.get("placement_scale") if isinstance(doc, dict) else None
            if center is None or center.shape != (config.factors,) or not np.all(np.isfinite(center)) \
                    or not isinstance(scale, (int, float)) or not np.isfinite(scale):
                raise ModelFormatError(f"{path}: the item feature placement (centre, scale) is missing or invalid")
            model._item_placement = (torch.from_numpy(np.array(center, dtype=np.float32)).to(model.device), float(scale))
        return model

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)
                           if getattr(self.config, f.name) != f.default)
        return f"CML({fields})"


# ---------------------------------------------------------------------- helpers
def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"N must be a positive integer, got {n!r}")


def _check_ids(ids: Any, n: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ids))
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer indices, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise IndexError(f"{name}: index {bad[0]} out of range [0, {n})")
    return arr.astype(np.int64)


def _top_n(q: torch.Tensor, cand: torch.Tensor, n: int, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-n candidates by negative Euclidean distance, masked entries excluded.

    Always ``n`` columns: missing candidates are padded with id -1 and score -inf.
    """
    sq = (q * q).sum(1, keepdim=True) + (cand * cand).sum(1)[None, :] - 2.0 * q @ cand.T
    score = -sq.clamp_min_(0.0).sqrt_()
    score = score.masked_fill(~mask, float("-inf"))
    k = min(int(n), cand.shape[0])
    vals, idx = torch.topk(score, k, dim=1)
    # The GEMM form above loses ~1e-3 absolute precision for near points (a query is not at
    # distance 0 from itself); recompute the returned scores directly and re-sort them.
    # (chunks of rows bound the (rows, k, d) difference tensor; + 0.0 turns -0.0 into 0.0)
    exact = torch.empty_like(vals)
    step = max(1, (1 << 24) // max(1, k * q.shape[1]))
    for lo in range(0, q.shape[0], step):
        diff = q[lo : lo + step, None, :] - cand[idx[lo : lo + step]]
        exact[lo : lo + step] = diff.pow_(2).sum(2).sqrt_().neg_().add_(0.0)
    vals = torch.where(torch.isfinite(vals), exact, vals)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    idx = idx.gather(1, order)
    ids = np.full((q.shape[0], int(n)), -1, dtype=np.int64)
    out = np.full((q.shape[0], int(n)), -np.inf, dtype=np.float32)
    ids[:, :k] = idx.cpu().numpy()
    out[:, :k] = vals.cpu().numpy()
    ids[~np.isfinite(out)] = -1
    return ids, out


def _ids_to_json(ids: np.ndarray | None) -> dict[str, Any] | None:
    if ids is None:
        return None
    kind = "int" if ids.dtype.kind in "iu" else "str"
    return {"kind": kind, "values": ids.tolist() if kind == "int" else [str(x) for x in ids.tolist()]}


def _ids_from_json(doc: Any, n: int, name: str, path: Any) -> np.ndarray | None:
    if doc is None:
        return None
    try:
        values = doc["values"]
        arr = np.asarray(values, dtype=np.int64) if doc["kind"] == "int" else np.asarray(values, dtype=str)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: invalid {name} ({exc})") from None
    if arr.shape != (n,):
        raise ModelFormatError(f"{path}: {name} has {arr.shape[0] if arr.ndim else 0} entries, expected {n}")
    return arr
