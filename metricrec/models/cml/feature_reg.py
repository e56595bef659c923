"""Transformation regularisation (CML+F): pull each vector towards what its features predict.

The loss gains ``lambda_f * sum_j ||f(x_j) - v_j||^2`` with f a :class:`~metricrec.features.FeatureMLP`.
Per training batch, :class:`FeatureRegularizer` takes the distinct rows of the batch that have
features and at least one training interaction (for items: the positives and the shared negative
draw, so rarely-liked items are pulled too), and

- adds ``dL/dv_j = 2 lambda_f (v_j - f(x_j))`` into the embedding table's
  :class:`~metricrec.kernel.GradBuffer` (the fused kernel and its hand-written gradients stay as
  they are; the row-sparse optimiser applies both in one step);
- steps f's own torch optimiser (Adam) on the same term with ``v`` held fixed.

Rows with features but no training interaction ("cold" rows) get their vector from f at the end of
every epoch, so the per-epoch validation, the best-epoch snapshot and the final model all rank them
by their features. f is a least-squares regression, so f(x) is a *conditional mean* of trained
vectors: it sits near the centre c of the users, nearer to every user than even the most popular
trained item (measured on ml-100k: 17 of every user's top 50 were then cold items, test Recall@50
0.33 instead of 0.51). The placement therefore keeps f's direction about c and calibrates the
distance: ``v_j = c + s (f(x_j) - c)``, projected into the ball, where ``s`` is the ratio, over the
rarest trained rows (bottom decile of training counts), of their mean distance to c to the mean
distance of their own predictions f(x) to c -- "a new item is placed as far out as the rarest
known items really are". ``s`` and ``c`` are saved with the model; the raw f(x) stays available.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .config import CMLConfig
from ...data.features import as_features
from .feature_net import FeatureMLP, SparseRows
from ...data.interactions import Features
from ...training.optim import GradBuffer, clip_rows
from ...training.sampling import NegativeDraw

__all__ = ["DEFAULT_FEATURE_WEIGHT", "FeatureRegularizer", "default_feature_weight", "feature_resolution",
           "make_item_regularizer"]

#: lambda_f for features that tell every item apart, scaled down by :func:`default_feature_weight`
#: for coarser ones; chosen on valid Recall@50 (benchmarks/results/convergence.md, CMLConfig's docstring).
DEFAULT_FEATURE_WEIGHT = 100.0


def feature_resolution(features: Any) -> float:
    """Share of distinct feature rows among the rows with any feature (1: every row is told apart).

    f can only place rows with identical features on one point; where most rows share their
    feature row with many others (ml-100k's 19 genres and 8 decades: 363 distinct rows for 1,682
    movies, 0.22) a strong pull would stack them up, where nearly every row is its own
    (citeulike-a's tags: 0.99) it does not.
    """
    m = sp.csr_matrix(features.matrix if isinstance(features, Features) else features, dtype=np.float64)
    has = np.diff(m.indptr) > 0
    if not has.any():
        return 0.0
    rng = np.random.default_rng(0)  # two random projections: distinct rows get distinct pairs
    keys = np.asarray(m[has] @ rng.standard_normal((m.shape[1], 2)))
    return float(np.unique(np.round(keys, 9), axis=0).shape[0] / keys.shape[0])


def default_feature_weight(features: Any) -> float:
    """lambda_f when features are given without a weight (the CLI's ``--item-features`` alone):
    ``DEFAULT_FEATURE_WEIGHT * resolution^2`` (:func:`feature_resolution`). citeulike-a tags: 98.9
    (valid Recall@50 0.386 against 0.360 without features; 30 to 100 were all as good); ml-100k
    genres and decades: 4.7 (0.521 against 0.515; 100 there fell to 0.423)."""
    return DEFAULT_FEATURE_WEIGHT * feature_resolution(features) ** 2


class FeatureRegularizer:
    """Joint training of f and the feature term; a :class:`~metricrec.trainer.Trainer` hook.

    Parameters
    ----------
    features : Features, shape (n_rows, n_features)
        One row per item (``side="item"``) or per user (``side="user"``).
    dim : int
        Embedding dimension d.
    weight : float
        lambda_f (> 0).
    hidden, dropout, row_norm : see :class:`~metricrec.models.cml.feature_net.FeatureMLP`
    lr : float
        Adam learning rate of f.
    threads : int, optional
        Torch threads for f's step (default: torch's count when the regulariser is made). The
        compiled CML kernel runs its epochs with torch on one thread; f's forward, backward and Adam
        step get these threads back for their duration.
    max_norm : float or None
        Ball radius for the vectors assigned from f (cold rows, initialisation).
    train_counts : array of int, shape (n_rows,), optional
        Training interactions per row. Rows with features and count 0 are cold (their vector is
        placed from f after every epoch and f does not learn from them); the rows in the bottom
        decile of positive counts calibrate the placement. Without it no row is cold.
    side : {"item", "user"}
    seed : int
    device : torch device
    """

    def __init__(self, features: Features, dim: int, *, weight: float, hidden: tuple[int, ...] = (256,),
                 dropout: float = 0.1, lr: float = 1e-3, max_norm: float | None = 1.0,
                 train_counts: np.ndarray | None = None, side: str = "item", seed: int = 0,
                 device: str | torch.device = "cpu", row_norm: bool = False, threads: int | None = None) -> None:
        if not weight > 0:
            raise ValueError(f"the feature weight lambda_f must be > 0, got {weight}")
        if side not in ("item", "user"):
            raise ValueError(f"side must be 'item' or 'user', got {side!r}")
        self.device = torch.device(device)
        self.weight, self.side, self.max_norm = float(weight), side, max_norm
        self.features = features
        self.rows = SparseRows(features.matrix, self.device)
        self.has_features = self.rows.row_nnz > 0
        self.mlp = FeatureMLP(features.n_features, dim, hidden, dropout, seed=seed, row_norm=row_norm).to(self.device)
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.opt = torch.optim.Adam(self.mlp.parameters(), lr=lr)
        has = np.diff(features.matrix.indptr) > 0
        cold = rare = np.zeros(0, np.int64)
        if train_counts is not None:
            counts = np.asarray(train_counts)
            if counts.shape != (features.matrix.shape[0],):
                raise ValueError(f"train_counts must have shape ({features.matrix.shape[0]},), got {counts.shape}")
            cold = np.flatnonzero(has & (counts == 0))
            warm = has & (counts > 0)
            if warm.any():
                rare = np.flatnonzero(warm & (counts <= np.quantile(counts[warm], 0.1)))
        self.cold_rows = torch.from_numpy(cold).to(self.device)
        self.rare_rows = torch.from_numpy(rare).to(self.device)
        self.center = torch.zeros(dim, device=self.device)
        self.scale = 1.0
        # f learns from rows with features and interaction evidence; a cold row's vector only ever
        # receives negative pushes, so it would teach f nothing about where such rows belong
        self.trainable = self.has_features.clone()
        self.trainable[self.cold_rows] = False
        self._mask = torch.zeros(features.matrix.shape[0], dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ trainer hook
    def on_batch(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor,
                 items: torch.Tensor, draw: NegativeDraw, user_grad: GradBuffer, item_grad: GradBuffer) -> float:
        """Feature term of one batch: gradients into the GradBuffer, one step of f. Returns the
        term's value ``lambda_f * sum ||f(x_j) - v_j||^2`` over the batch's distinct rows."""
        if self.side == "item":
            rows = self._distinct_with_features(items, draw.shared.reshape(-1))
            return self.step(item_emb, rows, item_grad)
        return self.step(user_emb, self._distinct_with_features(users), user_grad)

    def on_epoch_end(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        """Recalibrate the placement, then place the cold rows from f."""
        table, other = (item_emb, user_emb) if self.side == "item" else (user_emb, item_emb)
        self.calibrate(other, table)
        self.assign_cold(table)

    def state(self) -> dict[str, Any]:
        """A copy of f's parameters and the placement (the trainer keeps the best epoch's)."""
        return {"mlp": copy.deepcopy(self.mlp.state_dict()), "center": self.center.clone(), "scale": self.scale}

    def restore(self, state: dict[str, Any]) -> None:
        self.mlp.load_state_dict(state["mlp"])
        self.center, self.scale = state["center"], state["scale"]

    # ------------------------------------------------------------------ pieces
    def step(self, table: torch.Tensor, rows: torch.Tensor, grad: GradBuffer) -> float:
        """Add ``2 lambda_f (v - f(x))`` for ``rows`` into ``grad`` and take one Adam step of f.

        Parameters
        ----------
        table : torch.Tensor, shape (n_rows, d)
            The embedding table (read only here).
        rows : torch.LongTensor, shape (R,)
            Distinct rows, all with features.
        grad : GradBuffer
        """
        if rows.numel() == 0:
            return 0.0
        with _torch_threads(self.threads):
            self.mlp.train()
            pred = self.mlp(self.rows.gather(rows))
            v = table.index_select(0, rows).detach()
            diff = pred - v
            loss = self.weight * (diff * diff).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        grad.add(rows, diff.detach().mul_(-2.0 * self.weight))  # d/dv of lambda ||f - v||^2 = 2 lambda (v - f)
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, rows: torch.Tensor | None = None, *, clip: bool = True) -> torch.Tensor:
        """f(x) (dropout off) for ``rows`` (all rows when None), projected into the ball.

        Returns
        -------
        torch.Tensor, shape (len(rows), d)
        """
        self.mlp.eval()
        out = self.mlp(self.rows.gather(None if rows is None else rows.to(self.device)))
        return clip_rows(out, self.max_norm) if clip else out

    @torch.no_grad()
    def calibrate(self, others: torch.Tensor, table: torch.Tensor) -> None:
        """Centre c = mean of ``others`` (the users, for item features) and scale s from the rare
        rows of ``table`` (see the module docstring); s = 1 when there are no rare rows."""
        self.center = others.mean(0).detach().clone()
        if self.rare_rows.numel() == 0:
            self.scale = 1.0
            return
        pred = self.predict(self.rare_rows, clip=False)
        true_r = (table.index_select(0, self.rare_rows) - self.center).norm(dim=1).mean()
        pred_r = (pred - self.center).norm(dim=1).mean()
        self.scale = float(true_r / pred_r.clamp_min(1e-12))

    @torch.no_grad()
    def place(self, pred: torch.Tensor) -> torch.Tensor:
        """Vectors for rows known only by their features: ``c + s (f(x) - c)`` in the ball."""
        return clip_rows(self.center + self.scale * (pred - self.center), self.max_norm)

    @torch.no_grad()
    def assign_cold(self, table: torch.Tensor) -> None:
        """Set the cold rows of ``table`` to their calibrated feature placement."""
        if self.cold_rows.numel():
            pred = self.predict(self.cold_rows, clip=False)
            table.index_copy_(0, self.cold_rows, self.place(pred).to(table.dtype))

    @torch.no_grad()
    def initial_vectors(self, table: torch.Tensor) -> None:
        """Start the rows with features at f(x) of the untrained f, rescaled to the mean norm of
        their random initial vectors: rows with shared features start near each other."""
        rows = self.has_features.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        pred = self.predict(rows, clip=False)
        pred = pred - pred.mean(0, keepdim=True)  # the common offset says nothing about a row
        target = table.index_select(0, rows).norm(dim=1).mean()
        pred *= target / pred.norm(dim=1).mean().clamp_min(1e-12)
        table.index_copy_(0, rows, clip_rows(pred, self.max_norm).to(table.dtype))

    def _distinct_with_features(self, *parts: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        for p in parts:
            mask[p] = True
        mask &= self.trainable
        rows = mask.nonzero().squeeze(1)
        mask.zero_()
        return rows

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports."""
        return {"side": self.side, "weight": self.weight, **self.mlp.shape_doc(),
                "n_rows_with_features": int(self.has_features.sum()), "n_cold": int(self.cold_rows.numel()),
                "n_calibration_rows": int(self.rare_rows.numel()), "cold_scale": self.scale}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Torch on ``n`` threads inside the block (restored after)."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def make_item_regularizer(config: CMLConfig, train: sp.csr_matrix, user_items: Any, item_features: Any,
                          device: str | torch.device = "cpu", threads: int | None = None) -> FeatureRegularizer | None:
    """The item feature term ``CML.fit`` trains with, or None when features are off.

    Features are on when ``config.feature_weight > 0``; they come from ``item_features`` or else
    from the ``item_features`` of an :class:`~metricrec.interactions.Interactions` ``user_items``.
    Cold items: rows with features and no positive in ``train``.

    Raises
    ------
    ValueError
        ``item_features`` given with ``feature_weight == 0`` (it would be ignored), or
        ``feature_weight > 0`` with no item features anywhere, or features without any usable row.
    """
    n_items = train.shape[1]
    if config.feature_weight == 0:
        if item_features is not None:
            raise ValueError("item_features were given but feature_weight is 0, so they would be ignored; "
                             "set feature_weight > 0 (e.g. CML(feature_weight=...)) to train with them")
        return None
    if item_features is None:
        item_features = getattr(user_items, "item_features", None)
        if item_features is None:
            raise ValueError("feature_weight > 0 needs item features: pass item_features= to fit, or an "
                             "Interactions that carries item_features")
    feats = as_features(item_features, n_items, "item_features")
    has = np.diff(feats.matrix.indptr) > 0
    if not has.any():
        raise ValueError("item_features: no item has any feature (an empty feature set)")
    counts = np.diff(sp.csc_matrix(train).indptr)
    return FeatureRegularizer(feats, config.factors, weight=config.feature_weight, hidden=config.feature_hidden,
                              dropout=config.feature_dropout, lr=config.feature_lr, max_norm=config.max_norm,
                              train_counts=counts, side="item", seed=config.seed, device=device,
                              row_norm=config.feature_row_norm, threads=threads)
