"""Compiled CPU backend of LRML's step (numba): the batch loss of :func:`metricrec.models.lrml.step.lrml_batch_loss`
and its gradients, with the backward written by hand.

The torch step builds every intermediate of the batch as a (pairs, U, d) tensor (the joint
embeddings, the relations, the differences and their gradients) and runs autograd over all of them,
the inactive hinges included. Here, per pair (u, j) with ``s = u * v_j``, ``a = softmax(K s)``,
``r = a @ M`` and ``x = u + r - v_j``:

1. in parallel over fixed chunks of pairs (:data:`PAIR_CHUNK`, not over threads), the forward of the
   positive and of the U negatives, the hinges, and the backward of the active ones only: the
   distance's ``g = dd/dx`` (``2 x`` for ``"l2"``, ``sign(x)`` for ``"l1"``) times the hinge's weight,
   ``dr = g``, ``da = M dr``, ``dlogits = a * (da - a.da)``, ``ds = K^T dlogits``, hence
   ``du += g + ds * v_j``, ``dv_j += -g + ds * u``, ``dK += dlogits x s`` and ``dM += a x dr``. Each
   chunk sums its key and value gradients in an accumulator of its own; the table gradients of each
   pair go to per-pair rows of a workspace (kept across batches). With ``negative_relation="positive"``
   the negatives add their ``dr`` to the positive's relation, whose attention then takes one backward.
   For ``"l2"`` with own relations a negative's distance needs no relation vector:
   ``||u + r - v||^2 = ||u - v||^2 + a.G a + 2 a.(M u - M v)`` with ``G = M M^T`` and ``M v`` of the
   batch's distinct negatives projected once per batch; so is its ``da = 2 w (M u + G a - M v)``; r is
   built for the active hinges only (most of them are inactive after the first epochs). This pass and
   its pieces for one pair (the attention, the distance, the hinges, the backward of one pair and of
   its attention) are in :mod:`metricrec.models.lrml.pair_kernels`;
2. the per-pair table gradients into the dense buffers, in parallel over parts of the tables (part q
   owns the rows r with r % parts == q and visits the pairs in order), as in SML's kernel
   (:mod:`metricrec.models.sml.step_numba`);
3. the chunks' key and value gradients summed in chunk order.

Every sum runs in an order fixed by the batch alone, so the results do not depend on the thread
count. For the same draws both backends give the same loss and gradients up to float32 rounding (the
tests check this); the step then applies the memory's AdaGrad exactly as the torch step does.
"""

from __future__ import annotations

import math  # noqa: F401  (numba resolves math in the kernels' globals)

import numpy as np
import torch

from ...training.optim import GradBuffer, kernel_parts, lazy_kernels

__all__ = ["lrml_gradients_numba", "warm_up", "Workspace", "PAIR_CHUNK"]

#: Pairs per chunk of the pair pass: the unit of parallel work, and the grain of the key and value
#: gradients' partial sums (a constant, so that their order does not depend on the thread count).
PAIR_CHUNK = 32


def _pair_pass(numba):
    """Per chunk of pairs, in parallel: forward, hinges, the backward of the active ones
    (:func:`metricrec.models.lrml.pair_kernels.pair_pass`, module level so numba caches it)."""
    from . import pair_kernels

    return pair_kernels.pair_pass


def _project_pass(numba):
    """``P[k] = M v_k`` for the distinct negatives of the batch (what the expanded l2 distance reads)."""

    @numba.njit(cache=True)
    def distinct(negs, seen, out):
        n = 0
        for b in range(negs.shape[0]):
            for c in range(negs.shape[1]):
                k = negs[b, c]
                if not seen[k]:
                    seen[k] = True
                    out[n] = k
                    n += 1
        for i in range(n):
            seen[out[i]] = False
        return n

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def project(V, M, items, n, P):
        n_slots, d = M.shape
        for i in numba.prange(n):
            k = items[i]
            for m in range(n_slots):
                z = np.float32(0.0)
                for t in range(d):
                    z += M[m, t] * V[k, t]
                P[k, m] = z

    return distinct, project


def _scatter_pass(numba):
    """The per-pair table gradients into the dense buffers, race-free (rows owned by parts)."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def scatter_pass(users, pos, negs, GU, GP, GN, act, n_act, grad_u, grad_v, touched_u, touched_v, n_parts):
        b_count, n_neg = negs.shape
        d = GU.shape[1]
        for q in numba.prange(n_parts):
            for b in range(b_count):
                if n_act[b] == 0:
                    continue
                u = users[b]
                if u % n_parts == q:
                    for t in range(d):
                        grad_u[u, t] += GU[b, t]
                    touched_u[u] = True
                p = pos[b]
                if p % n_parts == q:
                    for t in range(d):
                        grad_v[p, t] += GP[b, t]
                    touched_v[p] = True
                for c in range(n_neg):
                    k = negs[b, c]
                    if not act[b, c] or k % n_parts != q:
                        continue
                    for t in range(d):
                        grad_v[k, t] += GN[b, c, t]
                    touched_v[k] = True

    return scatter_pass


def _reduce_pass(numba):
    """The chunks' key and value gradients, summed in chunk order (in parallel over the slots)."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def reduce_pass(DK, DM, n_chunks, g_keys, g_memory):
        n_slots, d = g_keys.shape
        for m in numba.prange(n_slots):
            for t in range(d):
                g_keys[m, t] = 0.0
                g_memory[m, t] = 0.0
            for c in range(n_chunks):
                for t in range(d):
                    g_keys[m, t] += DK[c, m, t]
                    g_memory[m, t] += DM[c, m, t]

    return reduce_pass


_compile = lazy_kernels(_pair_pass, _scatter_pass, _reduce_pass, _project_pass)


class Workspace:
    """Scratch arrays of the kernel, kept across batches and grown when a batch needs more.

    The per-pair gradients of the negatives are a (B, U, d) array: 86 MiB for a steam-200k batch
    (8,456 pairs x 20 x 128). A fresh one per batch would be a fresh memory mapping whose pages the
    operating system faults in and zeroes each time.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised array of ``shape`` (a view of the kept one when it is large enough)."""
        size = int(np.prod(shape))
        buf = self._arrays.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype=dtype)
            self._arrays[name] = buf
        return buf[:size].reshape(shape)

    def zeros(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An array of ``shape`` that is zero when first made: the caller leaves it zero again."""
        size = int(np.prod(shape))
        buf = self._arrays.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.zeros(max(size, 1), dtype=dtype)
            self._arrays[name] = buf
        return buf[:size].reshape(shape)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem."""
    ue, ie = torch.zeros(2, 2), torch.ones(3, 2)
    keys, memory = torch.ones(2, 2), torch.ones(2, 2)
    lrml_gradients_numba(ue, ie, keys, memory, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[2], [2]]),
                         GradBuffer(2, 2), GradBuffer(3, 2), margin=1.0)


def lrml_gradients_numba(user_emb: torch.Tensor, item_emb: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                         users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                         user_grad: GradBuffer, item_grad: GradBuffer, *, margin: float, metric: str = "l2",
                         negative_relation: str = "own", train_memory: bool = True,
                         workspace: Workspace | None = None) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """``L_B`` of :mod:`metricrec.models.lrml.step` and its gradients, for contiguous float32 CPU tensors.

    Parameters
    ----------
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
    keys, memory : torch.Tensor, shape (N, d)
    users, positives : torch.LongTensor, shape (B,)
    negatives : torch.LongTensor, shape (B, U)
        The draw's per-row negatives (``NegativeDraw.negatives``).
    user_grad, item_grad : GradBuffer
        Receive the table gradients of the rows with an active hinge (and mark them touched), as the
        torch step's.
    margin : float
    metric : {"l2", "l1"}
    negative_relation : {"own", "positive"}
    train_memory : bool
        False (a fold-in): no key and value gradients.
    workspace : Workspace, optional
        Scratch kept across calls (a fresh one when None).

    Returns
    -------
    loss : float
    g_keys, g_memory : torch.Tensor, shape (N, d), or None without ``train_memory``
    """
    if metric not in ("l2", "l1"):
        raise ValueError(f"metric must be 'l2' or 'l1', got {metric!r}")
    if negative_relation not in ("own", "positive"):
        raise ValueError(f"negative_relation must be 'own' or 'positive', got {negative_relation!r}")
    pair_pass, scatter_pass, reduce_pass, (distinct, project) = _compile()
    ws = workspace if workspace is not None else Workspace()
    U, V = user_emb.detach().numpy(), item_emb.detach().numpy()
    K, M = keys.detach().numpy(), memory.detach().numpy()
    u_np, p_np, negs = users.numpy(), positives.numpy(), negatives.numpy()
    b, n_neg = negs.shape
    d, n_slots = U.shape[1], K.shape[0]
    n_chunks = (b + PAIR_CHUNK - 1) // PAIR_CHUNK
    l1, own = metric == "l1", negative_relation == "own"
    if own and not l1:  # the expanded distance's G = M M^T and P[k] = M v_k of the batch's negatives
        gram = M @ M.T
        proj = ws.take("proj", (V.shape[0], n_slots))
        items = ws.take("items", (negs.size,), np.int64)
        project(V, M, items, distinct(negs, ws.zeros("seen", (V.shape[0],), np.bool_), items), proj)
    else:
        gram, proj = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    gu, gp = ws.take("gu", (b, d)), ws.take("gp", (b, d))
    gn = ws.take("gn", (b, n_neg, d))
    act, n_act = ws.take("act", (b, n_neg), np.bool_), ws.take("n_act", (b,), np.int64)
    loss = ws.take("loss", (b,))
    dk = ws.take("dk", (n_chunks, n_slots if train_memory else 0, d))
    dm = ws.take("dm", (n_chunks, n_slots if train_memory else 0, d))
    pair_pass(U, V, K, M, gram, proj, u_np, p_np, negs, np.float32(margin), l1, own, bool(train_memory), PAIR_CHUNK,
              gu, gp, gn, act, n_act, loss, dk, dm)
    scatter_pass(u_np, p_np, negs, gu, gp, gn, act, n_act, user_grad.grad.numpy(), item_grad.grad.numpy(),
                 user_grad.touched.numpy(), item_grad.touched.numpy(), kernel_parts())
    value = float(loss.sum(dtype=np.float64))
    if not train_memory:
        return value, None, None
    g_keys = torch.empty(n_slots, d, dtype=keys.dtype)
    g_memory = torch.empty(n_slots, d, dtype=memory.dtype)
    reduce_pass(dk, dm, n_chunks, g_keys.numpy(), g_memory.numpy())
    return value, g_keys, g_memory
