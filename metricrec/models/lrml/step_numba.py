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
   built for the active hinges only (most of them are inactive after the first epochs);
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
    """Per chunk of pairs, in parallel: forward, hinges, the backward of the active ones."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_pass(U, V, K, M, G, P, users, pos, negs, margin, l1, own, train_memory, chunk,
                  GU, GP, GN, act, n_act, loss, DK, DM):
        b_count, n_neg = negs.shape
        d = U.shape[1]
        n_slots = K.shape[0]
        n_chunks = (b_count + chunk - 1) // chunk
        inv = np.float32(1.0 / n_neg)
        two = np.float32(2.0)
        zero = np.float32(0.0)
        expand = own and not l1  # l2 with own relations: the negatives' distances without r (see below)
        for ci in numba.prange(n_chunks):
            att = np.empty((n_neg + 1, n_slots), dtype=np.float32)  # the attention of each relation
            diff = np.empty((n_neg + 1, d), dtype=np.float32)  # x = u + r - v of the positive and each negative
            dist = np.empty(n_neg + 1, dtype=np.float32)
            uu = np.empty(d, dtype=np.float32)
            s = np.empty(d, dtype=np.float32)
            rel = np.empty(d, dtype=np.float32)
            dr = np.empty(d, dtype=np.float32)
            dr_pos = np.empty(d, dtype=np.float32)
            ds = np.empty(d, dtype=np.float32)
            gu = np.empty(d, dtype=np.float32)
            gv = np.empty(d, dtype=np.float32)
            da = np.empty(n_slots, dtype=np.float32)
            mu = np.empty(n_slots, dtype=np.float32)  # M u
            dk = DK[ci]  # (0, d) without train_memory
            dm = DM[ci]
            if train_memory:
                dk[:] = zero
                dm[:] = zero
            for b in range(ci * chunk, min((ci + 1) * chunk, b_count)):
                uu[:] = U[users[b]]
                if expand:
                    for m in range(n_slots):
                        z = zero
                        for t in range(d):
                            z += M[m, t] * uu[t]
                        mu[m] = z
                # ---- forward: j = 0 the positive, j = 1..U the negatives
                for j in range(n_neg + 1):
                    it = pos[b] if j == 0 else negs[b, j - 1]
                    v = V[it]
                    if j == 0 or own:  # a = softmax(K s), s = u * v
                        for t in range(d):
                            s[t] = uu[t] * v[t]
                        top = np.float32(-np.inf)
                        for m in range(n_slots):
                            z = zero
                            for t in range(d):
                                z += K[m, t] * s[t]
                            att[j, m] = z
                            top = max(top, z)
                        total = zero
                        for m in range(n_slots):
                            e = np.exp(att[j, m] - top)
                            att[j, m] = e
                            total += e
                        scale = np.float32(1.0) / total
                        for m in range(n_slots):
                            att[j, m] *= scale
                    if j > 0 and expand:
                        # ||u + r - v||^2 = ||u - v||^2 + a.G a + 2 a.(M u - M v), G = M M^T, P[k] = M v_k:
                        # no relation vector (it is built for the active hinges only)
                        acc = zero
                        for t in range(d):
                            x = uu[t] - v[t]
                            acc += x * x
                        for m in range(n_slots):
                            z = zero
                            for n in range(n_slots):
                                z += G[m, n] * att[j, n]
                            acc += att[j, m] * (z + two * (mu[m] - P[it, m]))
                        dist[j] = acc
                        continue
                    if j == 0 or own:  # r = a @ M (a negative of "positive" keeps the positive's)
                        rel[:] = zero
                        for m in range(n_slots):
                            am = att[j, m]
                            for t in range(d):
                                rel[t] += am * M[m, t]
                    acc = zero
                    if l1:
                        for t in range(d):
                            x = uu[t] + rel[t] - v[t]
                            diff[j, t] = x
                            acc += abs(x)
                    else:
                        for t in range(d):
                            x = uu[t] + rel[t] - v[t]
                            diff[j, t] = x
                            acc += x * x
                    dist[j] = acc
                count = 0
                lb = zero
                for c in range(n_neg):
                    h = margin + dist[0] - dist[c + 1]
                    if h > zero:
                        act[b, c] = True
                        count += 1
                        lb += h
                    else:
                        act[b, c] = False
                n_act[b] = count
                loss[b] = lb * inv
                if count == 0:
                    continue
                # ---- backward of the active hinges: the negatives first, then the positive
                gu[:] = zero
                dr_pos[:] = zero
                for jj in range(n_neg + 1):
                    j = (jj + 1) % (n_neg + 1)
                    if j == 0:
                        w = np.float32(count) * inv
                        it = pos[b]
                    else:
                        if not act[b, j - 1]:
                            continue
                        w = -inv
                        it = negs[b, j - 1]
                    v = V[it]
                    if j > 0 and expand:  # the relation, now: x = u + r - v
                        rel[:] = zero
                        for m in range(n_slots):
                            am = att[j, m]
                            for t in range(d):
                                rel[t] += am * M[m, t]
                        for t in range(d):
                            diff[j, t] = uu[t] + rel[t] - v[t]
                    if l1:  # dr = g = w dd/dx: sign(x) (0 at 0, torch's abs backward)
                        for t in range(d):
                            x = diff[j, t]
                            dr[t] = w if x > zero else (-w if x < zero else zero)
                    else:  # 2 x
                        for t in range(d):
                            dr[t] = (two * w) * diff[j, t]
                    for t in range(d):  # the direct terms of x = u + r - v
                        gu[t] += dr[t]
                        gv[t] = -dr[t]
                    if j > 0 and not own:  # the positive's relation: its attention takes this dr
                        for t in range(d):
                            dr_pos[t] += dr[t]
                    else:
                        if j == 0:
                            for t in range(d):
                                dr[t] += dr_pos[t]
                        for t in range(d):
                            s[t] = uu[t] * v[t]
                        if j > 0 and expand:  # da = M dr = 2 w (M u + G a - M v)
                            for m in range(n_slots):
                                z = zero
                                for n in range(n_slots):
                                    z += G[m, n] * att[j, n]
                                da[m] = (two * w) * (mu[m] + z - P[it, m])
                        else:  # da = M dr
                            for m in range(n_slots):
                                z = zero
                                for t in range(d):
                                    z += M[m, t] * dr[t]
                                da[m] = z
                        dot = zero
                        for m in range(n_slots):
                            dot += att[j, m] * da[m]
                        ds[:] = zero
                        for m in range(n_slots):
                            am = att[j, m]
                            dl = am * (da[m] - dot)  # dlogits = a (da - a.da)
                            for t in range(d):  # ds = K^T dlogits
                                ds[t] += dl * K[m, t]
                            if train_memory:  # dK += dlogits x s; dM += a x dr
                                for t in range(d):
                                    dk[m, t] += dl * s[t]
                                for t in range(d):
                                    dm[m, t] += am * dr[t]
                        for t in range(d):  # through s = u * v
                            gu[t] += ds[t] * v[t]
                            gv[t] += ds[t] * uu[t]
                    if j == 0:
                        GP[b] = gv
                    else:
                        GN[b, j - 1] = gv
                GU[b] = gu

    return pair_pass


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
