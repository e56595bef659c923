"""`CML`: the Collaborative Metric Learning recommender (Hsieh et al., WWW 2017).

Everything an embedding model shares (fit through the trainer, retrieval, ids, persistence) lives
in :class:`~metricrec.models.base.EmbeddingRecommender`; this module adds CML's step, fold-in and
the CML+F feature network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ...data.features import as_features
from ...data.interactions import Features
from ...errors import DataError, NotFittedError, TrainingDivergedError
from ...serialization import ModelFormatError
from ...training import distributed
from ...training.backends import NUMBA, thread_policy
from ...training.optim import clip_rows
from ...training.trainer import make_schedule, unvalidated_epoch_cap
from ..base import EmbeddingRecommender
from .config import CMLConfig
from .feature_net import FeatureMLP, SparseRows, feature_row_tensor, mlp_from_arrays, mlp_shapes, mlp_to_arrays
from .feature_reg import default_feature_weight, make_item_regularizer
from .step import CMLStep

__all__ = ["CML"]


class CML(EmbeddingRecommender):
    """Collaborative Metric Learning (Hsieh et al., WWW 2017).

    Users and items are points in one Euclidean space; a user is pulled towards the items it
    interacted with and pushes sampled impostors out of a margin. Scores are negative Euclidean
    distances (higher is better). Parameters and attributes as
    :class:`~metricrec.models.base.EmbeddingRecommender`, with a :class:`CMLConfig`.

    Attributes
    ----------
    item_feature_names : numpy.ndarray of str or None
        Feature columns of a model trained with item features (CML+F); its feature network f is
        saved with it and drives :meth:`recalculate_item`.
    feature_info : dict or None
        What the feature term used (weight, MLP shape, rows with features, cold items).

    Examples
    --------
    >>> model = CML(factors=64, margin=1.5, epochs=50)            # doctest: +SKIP
    >>> model.fit(split.train, valid=split.valid)                  # doctest: +SKIP
    >>> ids, scores = model.recommend(0, split.train.matrix[0], N=10)  # doctest: +SKIP
    """

    config_class = CMLConfig
    model_name = "CML"
    distance = "euclidean"
    config: CMLConfig

    def __init__(self, config: CMLConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._item_mlp: FeatureMLP | None = None
        self._item_placement: tuple[torch.Tensor, float] | None = None  # (centre c, scale s) for f's items
        self.item_feature_names: np.ndarray | None = None
        self.feature_info: dict[str, Any] | None = None
        self._chosen_feature_weight: float | None = None  # lambda_f that fit chose (the caller gave 0)

    def fit(self, user_items, valid=None, *, item_features: Features | sp.spmatrix | np.ndarray | None = None,
            callbacks=(), show_progress: bool | None = None) -> "CML":
        """Train on a user x item matrix of positives (see
        :meth:`~metricrec.models.base.EmbeddingRecommender.fit`).

        Parameters
        ----------
        item_features : Features, scipy sparse matrix or 2-D array, shape (n_items, n_features), optional
            Item features for CML+F, rows in the model's item order (an :class:`Interactions`' or,
            for a DataFrame, the sorted item ids). With ``feature_weight`` 0 (the default) the model
            takes the CLI's lambda_f for them,
            :func:`~metricrec.models.cml.feature_reg.default_feature_weight` (100 x the squared
            share of distinct feature rows), and its ``config.feature_weight`` then records it; a
            positive ``feature_weight`` is used as given. When omitted and ``feature_weight > 0``,
            the ``item_features`` of an :class:`Interactions` ``user_items`` are used. Items with
            features but no training interaction are placed by f alone (``v_j = c + s (f(x_j) - c)``,
            see :meth:`item_vectors_from_features`).
        """
        self.config = self._feature_config(item_features)
        return super().fit(user_items, valid, callbacks=callbacks, show_progress=show_progress,
                           item_features=item_features)

    def _feature_config(self, item_features: Any) -> CMLConfig:
        """The config a ``fit`` with these features trains with: lambda_f by the CLI's rule when the
        caller left it at 0. A weight an earlier ``fit`` chose this way counts as unset (a later fit
        with other features or none is not held to it)."""
        config = self.config
        if self._chosen_feature_weight is not None and config.feature_weight == self._chosen_feature_weight:
            config = config.replace(feature_weight=0.0)
        self._chosen_feature_weight = None
        if item_features is None or config.feature_weight != 0:
            return config
        shape = item_features.matrix.shape if isinstance(item_features, Features) else np.shape(item_features)
        rows = shape[0] if shape else 0
        weight = default_feature_weight(as_features(item_features, rows))  # their type and values checked first
        if weight == 0:
            raise DataError("item_features: no item has any feature (an empty feature set)")
        self._chosen_feature_weight = weight
        return config.replace(feature_weight=weight)

    # ------------------------------------------------------------------ the step
    def _make_step(self, config: CMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, *, item_features: Any = None) -> CMLStep:
        reg = make_item_regularizer(config, train, user_items, item_features, self.device, threads=self.num_threads)
        if reg is not None and config.init_from_features:
            reg.initial_vectors(item_emb)
        return CMLStep(config, user_emb, item_emb, backend, reg)

    def _fold_in_config(self, epochs: int) -> CMLConfig:
        """Fold-in trains user vectors only: the metric loss (no covariance or feature term, which
        shape the item space), no early stopping."""
        return self.config.replace(epochs=epochs, patience=0, batch_size=None, cov_weight=0.0, feature_weight=0.0)

    def _adopt(self, step: CMLStep) -> None:
        reg = step.feature_reg
        self._item_mlp = None if reg is None else reg.mlp.eval()
        self._item_placement = None if reg is None else (reg.center.clone(), float(reg.scale))
        self.item_feature_names = None if reg is None else reg.features.names
        self.feature_info = None if reg is None else reg.describe()

    # ------------------------------------------------------------------ fold-in
    def _compiled_fold_in(self, m: sp.csr_matrix, user: torch.Tensor, item: torch.Tensor, cfg: CMLConfig,
                          backend: str) -> bool:
        """The whole fold-in in one compiled call (:mod:`metricrec.models.cml.fold_in_numba`) on the
        CPU with the numba backend, AdaGrad and uniform negatives; False otherwise (the trainer)."""
        if (backend != NUMBA or user.device.type != "cpu" or user.dtype != torch.float32
                or cfg.optimizer != "adagrad" or cfg.sampler != "uniform" or distributed.current() is not None):
            return False
        from . import fold_in_numba

        n_pairs = int(m.nnz)
        batch = cfg.resolved_batch_size(n_pairs, sum(m.shape))
        steps = -(-n_pairs // batch)
        schedule = make_schedule(cfg, steps, unvalidated_epoch_cap(cfg))
        rates = cfg.learning_rate * np.array([schedule.factor(s) for s in range(cfg.epochs * steps)], dtype=np.float64)
        m = m.copy()
        m.sort_indices()
        with thread_policy(NUMBA):
            fold_in_numba.fold_in_numba(user, item, m.indptr, m.indices, rates.astype(np.float32), n_rounds=steps,
                                        n_negatives=cfg.resolved_n_negatives(*m.shape, n_pairs), margin=cfg.margin,
                                        use_rank_weight=cfg.use_rank_weight, max_norm=cfg.max_norm,
                                        seed=cfg.seed + 1)
        if not np.isfinite(user.numpy()).all():  # numpy: one pass, no wake-up of torch's thread pool
            raise TrainingDivergedError("fold-in diverged: the new user vectors became NaN or infinite; lower the "
                                        f"learning rate (now {cfg.learning_rate:g})")
        return True

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
            raise NotFittedError("this model was trained without item features: no feature network to place an item")
        return self.item_feature_names

    # ------------------------------------------------------------------ persistence
    def _extra_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if self._item_mlp is None or self.item_feature_names is None or self._item_placement is None:
            return {}, {}
        arrays = mlp_to_arrays(self._item_mlp, "item_mlp.")
        arrays["item_placement.center"] = self._item_placement[0].detach().cpu().numpy().astype(np.float32)
        meta = {"item_features": {"names": self.item_feature_names.tolist(), "mlp": self._item_mlp.shape_doc(),
                                  "placement_scale": self._item_placement[1], "info": self.feature_info}}
        return arrays, meta

    @classmethod
    def _expected_extra(cls, doc: dict[str, Any], config: CMLConfig, where: Any) -> dict[str, tuple[int, ...]]:
        """CML+F saves f's parameters and the placement centre (checked before they are read)."""
        if doc.get("item_features") is None:
            return {}
        return {**mlp_shapes(doc["item_features"], "item_mlp.", config.factors, where),
                "item_placement.center": (config.factors,)}

    def _load_extra(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
        doc = meta.get("item_features")
        if doc is None:
            return
        factors = self.config.factors
        self._item_mlp, self.item_feature_names, self.feature_info = mlp_from_arrays(
            arrays, doc, "item_mlp.", factors, path)
        self._item_mlp.to(self.device)
        center = arrays.get("item_placement.center")
        scale = doc.get("placement_scale") if isinstance(doc, dict) else None
        if center is None or center.shape != (factors,) or not np.all(np.isfinite(center)) \
                or isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
            raise ModelFormatError(f"{path}: the item feature placement (centre, scale) is missing or invalid")
        self._item_placement = (torch.from_numpy(np.array(center, dtype=np.float32)).to(self.device), float(scale))
