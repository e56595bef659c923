"""The pair pass of LRML's compiled step (:mod:`metricrec.models.lrml.step_numba`, pass 1), with the
pieces of one pair as helpers inlined into it (numba).

Defined at module level, not as closures: numba's on-disk cache cannot key a closure that calls
other jitted functions, so every process would compile the pass again (as
:mod:`metricrec.training.sampling_kernels`). The helpers live in this file with the pass so that
editing them invalidates its cache. Importing this module requires numba; the step imports it only
when it compiles its kernels.

Per pair (u, j) with ``s = u * v_j``, ``a = softmax(K s)``, ``r = a @ M`` and ``x = u + r - v_j``:
the forward of the positive and of the U negatives (:func:`pair_distance`: :func:`attention`,
:func:`relation`, :func:`difference`, or :func:`expanded_distance` for "l2" with own relations), the
hinges, then the backward of the active ones (:func:`hinge_grads`, per pair :func:`pair_grad`:
:func:`distance_grad`, :func:`attention_grad`); the step's docstring gives the maths.

The helpers are inlined into the pass at numba's IR level (``inline="always"``) and compiled with
its flags, so that it runs the same arithmetic in the same order as when it was one function. (The
hinges stay in the pass: as a helper returning their count and sum, LLVM summed them in another
order.)
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["pair_pass"]


@numba.njit(inline="always", fastmath=True, cache=True)
def project_user(M, uu, mu):
    """``mu = M u``."""
    n_slots, d = M.shape
    for m in range(n_slots):
        z = np.float32(0.0)
        for t in range(d):
            z += M[m, t] * uu[t]
        mu[m] = z


@numba.njit(inline="always", fastmath=True, cache=True)
def attention(K, uu, v, s, a):
    """The attention of one pair: ``s = u * v``, ``a = softmax(K s)``."""
    n_slots, d = K.shape
    zero = np.float32(0.0)
    for t in range(d):
        s[t] = uu[t] * v[t]
    top = np.float32(-np.inf)
    for m in range(n_slots):
        z = zero
        for t in range(d):
            z += K[m, t] * s[t]
        a[m] = z
        top = max(top, z)
    total = zero
    for m in range(n_slots):
        e = np.exp(a[m] - top)
        a[m] = e
        total += e
    scale = np.float32(1.0) / total
    for m in range(n_slots):
        a[m] *= scale


@numba.njit(inline="always", fastmath=True, cache=True)
def expanded_distance(uu, v, G, a, mu, P, it):
    """``||u + r - v||^2 = ||u - v||^2 + a.G a + 2 a.(M u - M v)``, G = M M^T, P[k] = M v_k: no
    relation vector (it is built for the active hinges only)."""
    n_slots = G.shape[0]
    two = np.float32(2.0)
    zero = np.float32(0.0)
    acc = zero
    for t in range(uu.shape[0]):
        x = uu[t] - v[t]
        acc += x * x
    for m in range(n_slots):
        z = zero
        for n in range(n_slots):
            z += G[m, n] * a[n]
        acc += a[m] * (z + two * (mu[m] - P[it, m]))
    return acc


@numba.njit(inline="always", fastmath=True, cache=True)
def relation(M, a, rel):
    """``r = a @ M``."""
    n_slots, d = M.shape
    rel[:] = np.float32(0.0)
    for m in range(n_slots):
        am = a[m]
        for t in range(d):
            rel[t] += am * M[m, t]


@numba.njit(inline="always", fastmath=True, cache=True)
def difference(uu, rel, v, x, l1):
    """``x = u + r - v`` into x, and the distance: ``sum |x|`` (l1) or ``sum x^2`` (l2)."""
    acc = np.float32(0.0)
    if l1:
        for t in range(uu.shape[0]):
            xt = uu[t] + rel[t] - v[t]
            x[t] = xt
            acc += abs(xt)
    else:
        for t in range(uu.shape[0]):
            xt = uu[t] + rel[t] - v[t]
            x[t] = xt
            acc += xt * xt
    return acc


@numba.njit(inline="always", fastmath=True, cache=True)
def distance_grad(x, w, l1, dr):
    """``dr = g = w dd/dx``: ``sign(x)`` for l1 (0 at 0, torch's abs backward), ``2 x`` for l2."""
    zero = np.float32(0.0)
    if l1:
        for t in range(x.shape[0]):
            xt = x[t]
            dr[t] = w if xt > zero else (-w if xt < zero else zero)
    else:
        two = np.float32(2.0)
        for t in range(x.shape[0]):
            dr[t] = (two * w) * x[t]


@numba.njit(inline="always", fastmath=True, cache=True)
def attention_grad(K, M, G, P, it, uu, v, a, mu, w, expand, train_memory, dr, s, da, ds, gu, gv, dk, dm):
    """The backward of one pair's attention, given its ``dr``: ``da = M dr`` (for the expanded l2
    distance ``2 w (M u + G a - M v)``), ``dlogits = a (da - a.da)``, ``ds = K^T dlogits``, then
    ``du += ds * v``, ``dv += ds * u`` and (train_memory) ``dK += dlogits x s``, ``dM += a x dr``."""
    n_slots, d = K.shape
    two = np.float32(2.0)
    zero = np.float32(0.0)
    for t in range(d):
        s[t] = uu[t] * v[t]
    if expand:  # da = M dr = 2 w (M u + G a - M v)
        for m in range(n_slots):
            z = zero
            for n in range(n_slots):
                z += G[m, n] * a[n]
            da[m] = (two * w) * (mu[m] + z - P[it, m])
    else:  # da = M dr
        for m in range(n_slots):
            z = zero
            for t in range(d):
                z += M[m, t] * dr[t]
            da[m] = z
    dot = zero
    for m in range(n_slots):
        dot += a[m] * da[m]
    ds[:] = zero
    for m in range(n_slots):
        am = a[m]
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


@numba.njit(inline="always", fastmath=True, cache=True)
def pair_distance(K, M, G, P, it, uu, v, mu, l1, attend, expand, a, x, s, rel):
    """The forward of one pair: its attention (``attend``; a negative of "positive" keeps the
    positive's), then its distance, expanded (``expand``) or through ``x = u + r - v``."""
    if attend:
        attention(K, uu, v, s, a)
    if expand:
        return expanded_distance(uu, v, G, a, mu, P, it)
    if attend:
        relation(M, a, rel)
    return difference(uu, rel, v, x, l1)


@numba.njit(inline="always", fastmath=True, cache=True)
def pair_grad(K, M, G, P, it, uu, v, a, x, mu, w, j, own, expand, l1, train_memory,
              rel, dr, dr_pos, s, da, ds, gu, gv, dk, dm):
    """The gradients of pair j (0: the positive, after the negatives) of one positive's active
    hinges, of weight w: ``dr = g`` from its distance, the direct terms of ``x = u + r - v`` (into
    gu, and gv, which it sets), then the backward of its attention; a negative of "positive" adds
    its ``dr`` to the positive's relation instead (dr_pos)."""
    d = uu.shape[0]
    if j > 0 and expand:  # the relation, now: x = u + r - v
        relation(M, a, rel)
        for t in range(d):
            x[t] = uu[t] + rel[t] - v[t]
    distance_grad(x, w, l1, dr)
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
        attention_grad(K, M, G, P, it, uu, v, a, mu, w, j > 0 and expand, train_memory, dr, s, da, ds, gu, gv, dk, dm)


@numba.njit(inline="always", fastmath=True, cache=True)
def hinge_grads(K, M, G, P, V, uu, p, negs, act, count, inv, mu, att, diff, l1, own, train_memory,
                rel, dr, dr_pos, s, da, ds, gu, gv, GP, GN, dk, dm):
    """The backward of one positive's ``count`` active hinges (act): the negatives first, then the
    positive; the user's table gradient into gu, the positive's and each active negative's into GP
    and GN (this pair's rows), the key and value gradients added to dk and dm."""
    n_neg = negs.shape[0]
    expand = own and not l1
    gu[:] = np.float32(0.0)
    dr_pos[:] = np.float32(0.0)
    for jj in range(n_neg + 1):
        j = (jj + 1) % (n_neg + 1)
        if j == 0:
            w = np.float32(count) * inv
            it = p
        else:
            if not act[j - 1]:
                continue
            w = -inv
            it = negs[j - 1]
        pair_grad(K, M, G, P, it, uu, V[it], att[j], diff[j], mu, w, j, own, expand, l1, train_memory,
                  rel, dr, dr_pos, s, da, ds, gu, gv, dk, dm)
        if j == 0:
            GP[:] = gv
        else:
            GN[j - 1] = gv


@numba.njit(parallel=True, fastmath=True, cache=True)
def pair_pass(U, V, K, M, G, P, users, pos, negs, margin, l1, own, train_memory, chunk,
              GU, GP, GN, act, n_act, loss, DK, DM):
    """Per chunk of pairs, in parallel: forward, hinges, the backward of the active ones."""
    b_count, n_neg = negs.shape
    d = U.shape[1]
    n_slots = K.shape[0]
    n_chunks = (b_count + chunk - 1) // chunk
    inv = np.float32(1.0 / n_neg)
    zero = np.float32(0.0)
    expand = own and not l1  # l2 with own relations: the negatives' distances without r
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
                project_user(M, uu, mu)
            # ---- forward: j = 0 the positive, j = 1..U the negatives
            for j in range(n_neg + 1):
                it = pos[b] if j == 0 else negs[b, j - 1]
                dist[j] = pair_distance(K, M, G, P, it, uu, V[it], mu, l1, j == 0 or own, j > 0 and expand,
                                        att[j], diff[j], s, rel)
            count = 0  # the hinges m + d(u,i) - d(u,k): the active ones, their count and sum
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
            hinge_grads(K, M, G, P, V, uu, pos[b], negs[b], act[b], count, inv, mu, att, diff, l1, own, train_memory,
                        rel, dr, dr_pos, s, da, ds, gu, gv, GP[b], GN[b], dk, dm)
            GU[b] = gu
