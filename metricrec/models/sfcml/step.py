"""SFCML's training step: CML's margin loss over *all* negatives, squared, in closed form, with
hand-written gradients.

The loss (Bao, Xu, Yang, Cao and Huang, "Rethinking Collaborative Metric Learning: Toward an
Efficient Alternative without Negative Sampling", IEEE TPAMI 45(1), 2023; arXiv 2206.11549). CML
(Hsieh et al., WWW 2017) minimises the hinge ``[m + d(u,i) - d(u,j)]_+`` on sampled negatives j; the
paper shows that sampling biases the estimate of the generalisation error (a per-user total-variation
term between the sampling and the true negative distribution) and that the bias vanishes when every
negative is used. To make all ``|P_u| x |N_u|`` pairs affordable it replaces the hinge with the
square loss. Its per-user risk, as the authors' LibCML implements it (``model/SFCML.py``,
``FastSqPairwiseLoss``), with ``d(a, b) = ||a - b||^2``, P_u the user's training positives and
``N_u = I \\ P_u`` all its other items::

    (SF)   L_u = 1 / (|P_u| |N_u|)  sum_{i in P_u} sum_{j in N_u} ( m - (d(u,j) - d(u,i)) )^2
           L   = mean over users of L_u,   subject to the norm constraints of the tables

(the authors keep every vector on the unit sphere, where ``d(u,j) - d(u,i) = 2 u.(v_i - v_j)``, and
write it on the scores ``2 u.v``; here it is the squared Euclidean form, which is the same on the
sphere and exact for vectors anywhere in CML's unit ball -- the tests check both). The paper's
acceleration is that the square expands, so the double sum over ``P_u x N_u`` becomes sums over
items: ``|N_u| sum_{i in P_u} (m + d(u,i) - mu_u)^2 + |P_u| |N_u| var_u`` (LibCML's ``A - 2 B``,
from the user's full row of n scores: ``O(n d)`` a user instead of ``O(|P_u| n d)``). The paper's
equation numbers are not quoted: its text was not available to this implementation (the abstract
and the authors' code were), so (SF) is named here, not numbered.

What one batch B of the trainer's positive pairs minimises. Per pair, the sum over N_u is a
function of two per-user moments of the distances::

    l(u,i) = 1/|N_u| sum_{j in N_u} (m + d(u,i) - d(u,j))^2 = (m + d(u,i) - mu_u)^2 + var_u
    mu_u   = mean_{j in N_u} d(u,j),     var_u = mean_{j in N_u} d(u,j)^2 - mu_u^2

    L_B    = sum_{(u,i) in B} w_u l(u,i),    w_u = pbar / |P_u|  ("user", the paper's weighting)
                                              w_u = 1             ("pair": every positive pair alike)

with ``pbar`` the mean number of positives per user, so that one epoch (every pair once) sums to
``pbar sum_u L_u`` -- the paper's L times a constant, on the scale of a sum over the pairs as CML's
and SML's steps (AdaGrad's accumulators start at 0.1). The trainer's sampled negatives are not
used.

The moments come in closed form from statistics of the item table (the acceleration beyond the
paper's): with ``s = |u|^2``, ``q_j = |v_j|^2``, n items,

    sum_{j in I} d(u,j)   = n s + Q1 - 2 u.S
    sum_{j in I} d(u,j)^2 = n s^2 + Q2 + 4 u'Mu + 2 s Q1 - 4 s u.S - 4 u.R
    S = sum_j v_j,  Q1 = sum_j q_j,  Q2 = sum_j q_j^2,  R = sum_j q_j v_j,  M = sum_j v_j v_j'

and the sums over N_u are these minus the same sums over the user's positives. The statistics are
recomputed every batch (the items move every batch): ``O(n d^2)`` for M, then ``O(d^2)`` per
distinct user of the batch, and ``O(|P_u| d)`` for its positives -- against ``O(n d)`` per user
for LibCML's full score row and ``O(n d)`` per pair for the plain double sum. The positives' sums
(and the gradient's corrections on them, below) run as sparse kernels over the batch users' rows
of the training matrix: one sampled dense-dense product for ``u.v_j`` and two sparse-dense
products, so no (nnz, d) tensor is gathered; the batch's pairs are entries of that pattern, found
by binary search. A step's cost thus hardly depends on the number of its pairs, which is why
SFCML's batches are a quarter of the pairs (:meth:`SFCMLConfig.resolved_batch_size`). On
ml-100k (1,682 items, d = 128, 4 batches of ~900 users an epoch) an epoch takes 0.043 s on one
CPU thread, against 0.061 s for CML's sampled epoch at its defaults.
The compiled CPU backend (:mod:`.step_numba`) keeps the dense ``d x d`` products in torch and fuses
the per-row work (the positives' distances, the pairs, the corrections) into passes over the
batch's users and over the items, without that integer bookkeeping: about half the step's time.

Touched rows. Every item is a negative of nearly every user, so the exact gradient of the
all-negatives term reaches every item row. It has the same structure as the loss (per item
``O(d^2)`` through ``G = sum_u c_u u u'`` and a few user-side sums, ``O((n + |U_B|) d^2)`` a
batch), and it is applied densely once per batch: the step adds it to every row of the item
buffer, and the trainer's AdaGrad updates the whole item table (its dense path, or the fused numba
pass over all rows) -- ``O(n d)``, less than computing it. The user side stays row-sparse (the
batch's users). Holding the item gradient back to apply it once an epoch would save only that dense
AdaGrad pass -- under a tenth of the epoch on ml-100k; the statistics are needed every batch for the
users' gradients anyway -- at the price of a different, lagged optimisation, so it is not offered.
A fold-in (frozen items) computes no item gradient and the statistics once.

The tests check every gradient against autograd on :func:`sfcml_loss_reference`, the loss written
as the plain double sum over all (positive, negative) pairs.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ...metrics import Scorer, embedding_scorer
from ...training.backends import NUMBA
from ...training.trainer import TablesStep
from ...training.optim import GradBuffer
from ...training.sampling import NegativeDraw
from .config import SFCMLConfig

__all__ = ["SFCMLStep", "ItemMoments", "item_moments", "sfcml_gradients", "sfcml_loss_reference",
           "user_weights"]


class ItemMoments(NamedTuple):
    """Statistics of the item table that the sums over all items reduce to (module docstring).

    Attributes
    ----------
    n : int
        Number of items.
    q : torch.Tensor, shape (n,)
        ``|v_j|^2`` of every item.
    S : torch.Tensor, shape (d,)
        ``sum_j v_j``.
    Q1, Q2 : torch.Tensor, shape ()
        ``sum_j |v_j|^2`` and ``sum_j |v_j|^4``.
    R : torch.Tensor, shape (d,)
        ``sum_j |v_j|^2 v_j``.
    M : torch.Tensor, shape (d, d)
        ``sum_j v_j v_j'``.
    """

    n: int
    q: torch.Tensor
    S: torch.Tensor
    Q1: torch.Tensor
    Q2: torch.Tensor
    R: torch.Tensor
    M: torch.Tensor


def item_moments(item_emb: torch.Tensor) -> ItemMoments:
    """The :class:`ItemMoments` of ``item_emb`` (shape (n, d)): ``O(n d^2)``, one GEMM for M."""
    q = (item_emb * item_emb).sum(1)
    return ItemMoments(item_emb.shape[0], q, item_emb.sum(0), q.sum(), (q * q).sum(), q @ item_emb,
                       item_emb.T @ item_emb)


def user_weights(train: sp.csr_matrix, weighting: str) -> torch.Tensor:
    """w_u of every user (module docstring), float64: ``pbar / |P_u|`` for ``"user"`` (0 for a user
    without positives, who has no pair to weigh), 1 for ``"pair"``."""
    counts = np.diff(train.indptr).astype(np.float64)
    if weighting == "pair":
        return torch.ones(counts.shape[0], dtype=torch.float64)
    if weighting != "user":
        raise ValueError(f"weighting must be 'user' or 'pair', got {weighting!r}")
    has = counts > 0
    pbar = counts[has].mean() if has.any() else 1.0
    w = np.zeros_like(counts)
    w[has] = pbar / counts[has]
    return torch.from_numpy(w)


class _Positives:
    """The training positives P_u as torch tensors: the CSR arrays (rows sorted) and the sorted keys
    ``u * n_items + j`` of its entries, to find a pair's entry by binary search."""

    def __init__(self, train: sp.csr_matrix, device: torch.device) -> None:
        train = sp.csr_matrix(train, copy=True)
        train.sum_duplicates()  # sorted, distinct column indices per row (the sparse kernels' CSR)
        self.indptr = torch.from_numpy(train.indptr.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(train.indices.astype(np.int64)).to(device)
        self.n_items = train.shape[1]
        rows = torch.repeat_interleave(torch.arange(train.shape[0], device=device), self.indptr.diff())
        self.keys = rows * self.n_items + self.indices
        # the same entries item by item (the transposed pattern): their users and CSR positions
        order = torch.argsort(self.indices, stable=True)
        self.t_users, self.t_pos = rows[order], order
        self.t_indptr = torch.zeros(self.n_items + 1, dtype=torch.int64, device=device)
        torch.cumsum(torch.bincount(self.indices, minlength=self.n_items), 0, out=self.t_indptr[1:])

    def of(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sub-matrix of the rows ``users`` (distinct, shape (k,)), flat in CSR order: (counts
        (k,), owner (nnz,) the position in ``users`` of each entry's user, items (nnz,), first (k,)
        where each user's run begins)."""
        start, stop = self.indptr[users], self.indptr[users + 1]
        counts = stop - start
        owner = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(owner.numel(), device=users.device) - first[owner] + start[owner]
        return counts, owner, self.indices[pos], first

    def transposed(self, users: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transposed pattern of the sub-matrix of :meth:`of` (items x users, CSR), without a
        sort: (crow (n_items + 1,), col (nnz,) the position in ``users``, entry (nnz,) the position
        of each entry in the flat order of :meth:`of`). One pass over all entries (``O(nnz)``
        integer operations)."""
        loc = torch.full((self.indptr.numel() - 1,), -1, dtype=torch.int64, device=users.device)
        loc[users] = torch.arange(users.numel(), device=users.device)
        lu = loc.index_select(0, self.t_users)
        keep = lu >= 0
        col, pos = lu[keep], self.t_pos[keep]
        entry = first.index_select(0, col) + pos - self.indptr.index_select(0, users.index_select(0, col))
        kept = torch.zeros(keep.numel() + 1, dtype=torch.int64, device=users.device)
        torch.cumsum(keep, 0, out=kept[1:])
        return kept.index_select(0, self.t_indptr), col, entry

    def entry(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Position in the CSR arrays of each pair (users[b], items[b]) (each must be a positive)."""
        return torch.searchsorted(self.keys, users * self.n_items + items)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A torch CSR matrix (without the beta-state warning torch gives on first use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _sddmm(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a b')`` at the entries of the CSR pattern (crow, col), as a flat vector in CSR order."""
    pattern = _csr(crow, col, a.new_ones(col.numel()), (a.shape[0], b.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()


def sfcml_gradients(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                    train: sp.csr_matrix | _Positives, weights: torch.Tensor, user_grad: GradBuffer,
                    item_grad: GradBuffer | None, *, margin: float,
                    moments: ItemMoments | None = None) -> dict[str, float]:
    """The batch loss ``L_B`` of the module docstring; adds its exact gradients into the buffers.

    Parameters
    ----------
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
    users, positives : torch.LongTensor, shape (B,)
        The batch's positive pairs.
    train : scipy.sparse.csr_matrix, shape (n_users, n_items)
        The training positives P_u (every other item is a negative of u); or the step's flat copy.
    weights : torch.Tensor, shape (n_users,)
        w_u (:func:`user_weights`).
    user_grad : GradBuffer
        Receives the gradients of the batch's users.
    item_grad : GradBuffer or None
        Receives the gradient of every item (the all-negatives term reaches them all: every row is
        marked touched); None: the items are frozen and no item gradient is computed.
    margin : float
        m.
    moments : ItemMoments, optional
        The item table's statistics (computed here when not given).

    Returns
    -------
    dict
        ``pair_loss`` ``sum w_u (m + d(u,i) - mu_u)^2`` and ``spread_loss`` ``sum w_u var_u`` over
        the batch's pairs (their sum is ``L_B``).
    """
    pos_sets = train if isinstance(train, _Positives) else _Positives(sp.csr_matrix(train), users.device)
    mo = moments if moments is not None else item_moments(item_emb)
    dtype, dev = user_emb.dtype, user_emb.device
    n, V = mo.n, item_emb
    uniq, inv = torch.unique(users, return_inverse=True)
    k = uniq.numel()
    U = user_emb.index_select(0, uniq)  # (k, d): the batch's distinct users
    s = (U * U).sum(1)
    US, UR = U @ mo.S, U @ mo.R
    UM = U @ mo.M
    t1 = n * s + mo.Q1 - 2.0 * US  # sums over all items of d(u,j) and of d(u,j)^2
    t2 = n * s * s + mo.Q2 + 4.0 * (UM * U).sum(1) + 2.0 * s * mo.Q1 - 4.0 * s * US - 4.0 * UR
    # the positives of the batch's users (their rows of the training matrix, flat in CSR order):
    # subtracted from the sums over all items (N_u = I - P_u), by sparse kernels over that pattern,
    # so that no (nnz, d) tensor is gathered; the batch's pairs are entries of it
    counts, owner, pitems, first = pos_sets.of(uniq)
    crow = torch.zeros(k + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    q = mo.q
    dp = s.index_select(0, owner) + q.index_select(0, pitems) - 2.0 * _sddmm(crow, pitems, U, V)  # d(u,j)
    x1 = t1 - torch.zeros(k, dtype=dtype, device=dev).index_add_(0, owner, dp)
    x2 = t2 - torch.zeros(k, dtype=dtype, device=dev).index_add_(0, owner, dp * dp)
    n_neg = (n - counts).to(dtype)
    mu = x1 / n_neg
    var = x2 / n_neg - mu * mu
    # the batch's pairs: a = m + d(u,i), r = a - mu_u
    entry = first.index_select(0, inv) + pos_sets.entry(users, positives) - pos_sets.indptr.index_select(0, users)
    w = weights.to(device=dev, dtype=dtype).index_select(0, users)
    a = margin + dp.index_select(0, entry)
    r = a - mu.index_select(0, inv)
    pair_loss = float((w * r * r).sum())
    spread_loss = float((w * var.index_select(0, inv)).sum())
    W = torch.zeros(k, dtype=dtype, device=dev).index_add_(0, inv, w)
    A = torch.zeros(k, dtype=dtype, device=dev).index_add_(0, inv, w * a)
    # dL/d d(u,j) = c_u d(u,j) - e_u =: h_uj for every negative j of u; dL/d d(u,i) = 2 w (a - mu_u)
    # for the pair's positive. On the pattern's entries: kappa = (the pair's coefficient) - h, the
    # negatives' closed form over all items counting the positives as negatives, corrected
    c, e = 2.0 * W / n_neg, 2.0 * A / n_neg
    kappa = torch.zeros_like(dp).index_add_(0, entry, 2.0 * w * r)
    kappa.sub_(c.index_select(0, owner) * dp).add_(e.index_select(0, owner))
    K = _csr(crow, pitems, kappa, (k, n))
    # d/du = 2 sum_{j in I} h_uj (u - v_j) + 2 sum_{j in P_u} kappa_uj (u - v_j); with
    # sum_j d(u,j) v_j = s S + R - 2 M u this is 2 [beta u + 2 c Mu + (e - c s) S - c R - K V]
    row_k = torch.zeros(k, dtype=dtype, device=dev).index_add_(0, owner, kappa)
    beta = c * t1 - e * n + row_k
    grad_u = torch.addmm((K @ V).neg_(), torch.stack([e - c * s, -c], 1), torch.stack([mo.S, mo.R]))
    grad_u.addcmul_(U, beta[:, None]).addcmul_(UM, 2.0 * c[:, None]).mul_(2.0)
    user_grad.add(uniq, grad_u)
    if item_grad is not None:
        # d/dv_j = 2 sum_u h_uj (v_j - u) + 2 sum_{u: j in P_u} kappa_uj (v_j - u), the first over the
        # batch's users in closed form (h_uj = alpha_u + c_u q_j - 2 c_u u.v_j): O(d^2) per item
        # through G = sum_u c_u u u'
        alpha = c * s - e
        cu, au = c @ U, alpha @ U
        G = (U * c[:, None]).T @ U
        col_k = torch.zeros(n, dtype=dtype, device=dev).index_add_(0, pitems, kappa)
        coef = (alpha.sum() + q * c.sum() - 2.0 * (V @ cu)).add_(col_k)
        t_crow, t_col, t_entry = pos_sets.transposed(uniq, first)
        dense = torch.addmm((_csr(t_crow, t_col, kappa.index_select(0, t_entry), (n, k)) @ U).neg_(),
                            torch.stack([torch.ones_like(q), q], 1), torch.stack([au, cu]), alpha=-1.0)
        dense.addmm_(V, G, alpha=2.0).addcmul_(V, coef[:, None]).mul_(2.0)
        item_grad.grad.add_(dense)
        item_grad.touched.fill_(True)
    return {"pair_loss": pair_loss, "spread_loss": spread_loss}


def sfcml_loss_reference(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor,
                         positives: torch.Tensor, train: sp.csr_matrix, weights: torch.Tensor, *,
                         margin: float) -> torch.Tensor:
    """``L_B`` written as the plain double sum over every (positive pair, negative item) of the
    batch: ``sum_{(u,i)} w_u / |N_u| sum_{j in N_u} (m + d(u,i) - d(u,j))^2``, for autograd in the
    tests (``O(B n d)``; small sizes only)."""
    dense = torch.from_numpy(sp.csr_matrix(train).toarray() > 0).to(user_emb.device)
    total = user_emb.new_zeros(())
    for b in range(users.numel()):
        u, i = int(users[b]), int(positives[b])
        d_ui = ((user_emb[u] - item_emb[i]) ** 2).sum()
        negs = (~dense[u]).nonzero().squeeze(1)
        terms = [(margin + d_ui - ((user_emb[u] - item_emb[j]) ** 2).sum()) ** 2 for j in negs.tolist()]
        total = total + weights[u] / len(terms) * torch.stack(terms).sum()
    return total


class SFCMLStep(TablesStep):
    """A :class:`~metricrec.training.trainer.TrainingStep` for SFCML: the torch backend (any device) or
    the compiled CPU kernel (:mod:`metricrec.models.sfcml.step_numba`, backend ``"numba"``), which
    computes the same loss and gradients for every weighting and for a fold-in.

    Parameters
    ----------
    config : SFCMLConfig
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        Trained in place by the trainer.
    train : scipy.sparse.csr_matrix
        The positives the trainer trains on (every other item is a negative).
    backend : str
        ``"numba"`` needs contiguous float32 CPU tables.
    train_items : bool
        False for a fold-in: the item table is frozen, so no item gradient is computed and the
        item statistics are computed once.
    """

    name = "SFCML"

    def __init__(self, config: SFCMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                 backend: str, *, train_items: bool = True) -> None:
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.train_items = train_items
        self._gradients = sfcml_gradients
        if backend == NUMBA:
            for name, table in (("user_emb", user_emb), ("item_emb", item_emb)):
                if table.device.type != "cpu" or table.dtype != torch.float32 or not table.is_contiguous():
                    raise ValueError(f"the numba backend needs a contiguous float32 CPU {name}, got "
                                     f"{table.dtype} on {table.device}")
            from . import step_numba

            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._gradients = step_numba.sfcml_gradients_numba
        train = sp.csr_matrix(train)
        self._positives = _Positives(train, user_emb.device)
        self._weights = user_weights(train, config.weighting).to(device=user_emb.device, dtype=user_emb.dtype)
        self._frozen_moments: ItemMoments | None = None

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Gradients of ``L_B`` into the buffers (``draw`` is not used: every negative is);
        (total, {pair_loss, spread_loss})."""
        moments = None
        if not self.train_items:
            if self._frozen_moments is None:
                self._frozen_moments = item_moments(self.item_emb)
            moments = self._frozen_moments
        parts = self._gradients(self.user_emb, self.item_emb, users, items, self._positives, self._weights,
                                user_grad, item_grad if self.train_items else None, margin=self.config.margin,
                                moments=moments)
        return sum(parts.values()), parts

    def scorer(self) -> Scorer:
        """Negative squared distances (the ranking of Euclidean distance, as CML)."""
        return embedding_scorer(self.user_emb, self.item_emb)
