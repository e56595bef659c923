"""CML's compiled fold-in (metricrec.models.cml.fold_in_numba): one AdaGrad step checked against a
NumPy computation written here, the rare-negative fallback, thread-count independence, the dispatch
(which configurations take it), and its quality against the trainer's fold-in on planted clusters."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("numba")

from metricrec import CML  # noqa: E402
from metricrec.data.synthetic import generate  # noqa: E402
from metricrec.models.cml import fold_in_numba as fin  # noqa: E402

FAST = dict(factors=16, batch_size=256, num_threads=1, show_progress=False, verbose=False)


def _one_unliked(n_items, free):
    """The sorted liked items of a user liking every item but ``free``: every negative draw must return ``free``."""
    return np.array([j for j in range(n_items) if j != free], dtype=np.int64)


def _step_by_hand(u, V, liked, free, lr, n_neg, margin, acc0=0.1, eps=1e-10, max_norm=1.0):
    """One batch holding all of the user's pairs (n_rounds = 1, one epoch), every negative ``free``."""
    u = u.astype(np.float64)
    V = V.astype(np.float64)
    g = np.zeros_like(u)
    n_items = V.shape[0]
    for p in liked:
        d_pos = ((u - V[p]) ** 2).sum()
        d_neg = ((u - V[free]) ** 2).sum()
        hinge = margin + d_pos - d_neg
        if hinge > 0:  # all U draws are the same item: M = U impostors
            w = np.log(np.floor(n_items * n_neg / n_neg) + 1.0)
            g += 2 * w * (V[free] - V[p])
    acc = acc0 + g * g
    new = u - lr * g / np.sqrt(acc + eps)
    norm = np.linalg.norm(new)
    return new * (max_norm / norm) if norm > max_norm else new


@pytest.mark.parametrize("n_items, free", [(20, 0), (20, 7), (20, 19), (200, 123)])
def test_one_step_matches_numpy_with_the_direct_pick_fallback(n_items, free):
    # the user likes all items but one: rejection misses (n - 1) / n of the time, so many draws go
    # through the direct pick of the t-th unliked item (72% of them with 200 items), which must
    # return the one free item
    rng = np.random.default_rng(free)
    V = rng.normal(0, 0.3, (n_items, 6)).astype(np.float32)
    u0 = rng.normal(0, 0.3, (1, 6)).astype(np.float32)
    liked = _one_unliked(n_items, free)
    user = torch.from_numpy(u0.copy())
    fin.fold_in_numba(user, torch.from_numpy(V), np.array([0, liked.size]), liked, np.array([0.3], np.float32),
                      n_rounds=1, n_negatives=4, margin=2.0, use_rank_weight=True, max_norm=1.0, seed=3)
    want = _step_by_hand(u0[0], V, liked, free, 0.3, 4, 2.0)
    # float32 kernel (fastmath sums over d = 6 terms) against a float64 reference: relative 1e-5
    np.testing.assert_allclose(user.numpy()[0], want, rtol=1e-5, atol=1e-6)


def test_inactive_hinges_leave_the_vector_alone():
    V = np.zeros((5, 3), np.float32)
    V[4] = [0.9, 0.0, 0.0]  # the only unliked item, far from the user
    u0 = np.array([[-0.5, 0.0, 0.0]], np.float32)
    user = torch.from_numpy(u0.copy())
    liked = np.arange(4)
    fin.fold_in_numba(user, torch.from_numpy(V), np.array([0, 4]), liked, np.full(3, 0.5, np.float32), n_rounds=1,
                      n_negatives=2, margin=0.1, use_rank_weight=True, max_norm=1.0, seed=0)
    np.testing.assert_array_equal(user.numpy(), u0)  # d(u, free)^2 = 1.96 > 0.1 + 0.25: no step at all


def _random_rows(n_rows, n_items, seed):
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_items, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    m.data[:] = 1.0
    m = m + sp.csr_matrix((np.ones(n_rows, np.float32), (np.arange(n_rows), rng.integers(0, n_items, n_rows))),
                          shape=m.shape)
    m.data[:] = 1.0
    m.sort_indices()
    return m


def test_thread_count_does_not_change_the_result():
    # each row is one thread's sequential loop with a generator keyed by (seed, row): bitwise equal
    import numba

    m = _random_rows(64, 40, 0)
    V = torch.from_numpy(np.random.default_rng(1).normal(0, 0.3, (40, 8)).astype(np.float32))
    rates = np.linspace(0.2, 0.01, 3 * 4).astype(np.float32)
    out = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            user = torch.full((64, 8), 0.05)
            fin.fold_in_numba(user, V, m.indptr, m.indices, rates, n_rounds=4, n_negatives=5, margin=1.0,
                              use_rank_weight=True, max_norm=1.0, seed=11)
            out.append(user.numpy().copy())
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(out[0], out[1])
    assert np.all(np.linalg.norm(out[0], axis=1) <= 1.0 + 1e-6)
    assert not np.allclose(out[0], 0.05)  # it trained


def test_rates_must_be_whole_epochs():
    with pytest.raises(ValueError, match="whole epochs"):
        fin.fold_in_numba(torch.zeros(1, 2), torch.ones(3, 2), np.array([0, 1]), np.array([0]),
                          np.ones(5, np.float32), n_rounds=2, n_negatives=1, margin=1.0, use_rank_weight=True,
                          max_norm=1.0, seed=0)


@pytest.fixture(scope="module")
def clustered():
    data = generate(400, 200, 8000, n_clusters=8, seed=0, popularity_exponent=0.5, cluster_affinity=0.9,
                    with_item_features=False)
    rng = np.random.default_rng(0)
    held = rng.choice(data.n_users, size=60, replace=False)
    m = data.matrix.tolil(copy=True)
    m[held] = 0
    return data, held, sp.csr_matrix(m)


def _held_out_hits(model, data, held, seed):
    """Fold in half of each held-out user's items, count hidden items in the top 10."""
    rng = np.random.default_rng(seed)
    rows, hidden = [], []
    for u in held:
        perm = rng.permutation(data.matrix[u].indices)
        rows.append(np.sort(perm[: len(perm) // 2]))
        hidden.append(perm[len(perm) // 2:])
    liked = sp.csr_matrix((np.ones(sum(map(len, rows)), np.float32), np.concatenate(rows),
                           np.concatenate([[0], np.cumsum([len(r) for r in rows])])), shape=(len(held), data.n_items))
    vecs = model.fold_in_rows(liked).numpy()
    items = model.item_embeddings
    d = ((vecs[:, None, :] - items[None]) ** 2).sum(2)
    d[liked.nonzero()] = np.inf
    top = np.argsort(d, 1, kind="stable")[:, :10]
    return float(np.mean([np.isin(h, t).mean() for h, t in zip(hidden, top)])), vecs


def test_compiled_fold_in_is_as_good_as_the_trainers(clustered, monkeypatch):
    data, held, train = clustered
    model = CML(epochs=15, seed=0, kernel="numba", **FAST).fit(train)
    calls = []
    real = fin.fold_in_numba
    monkeypatch.setattr(fin, "fold_in_numba", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    compiled, vecs = _held_out_hits(model, data, held, 1)
    assert calls and np.all(np.linalg.norm(vecs, axis=1) <= 1 + 1e-6)
    model.kernel = "torch"  # the trainer's fold-in of the same model
    trainer, _ = _held_out_hits(model, data, held, 1)
    assert len(calls) == 1
    chance = 10 / (data.n_items / 2)
    assert compiled >= 4 * chance and trainer >= 4 * chance
    assert abs(compiled - trainer) <= 0.06, (compiled, trainer)  # the same optimisation, other draws


def test_other_configurations_take_the_trainer(clustered, monkeypatch):
    _, _, train = clustered
    model = CML(epochs=2, seed=0, kernel="numba", optimizer="adam", **FAST).fit(train)
    monkeypatch.setattr(fin, "fold_in_numba", lambda *a, **k: pytest.fail("adam must fold in through the trainer"))
    vec = model.recalculate_user([1, 2, 3])
    assert vec.shape == (16,) and np.isfinite(vec).all()


# ---------------------------------------------------------------------- an independent slow implementation
_M64 = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _fold_reference(U, V, indptr, indices, rates, n_rounds, n_neg, margin, max_norm, seed, acc0=0.1, eps=1e-10):
    """The kernel's documented algorithm in float64 Python, with its generator (splitmix64 keyed by
    (seed, row)) in Python integers: batches per epoch, U draws per pair (rejection, then the t-th
    unliked item), the closest negative's rank-weighted hinge, AdaGrad, the ball."""
    U = U.astype(np.float64).copy()
    V = V.astype(np.float64)
    n_items = V.shape[0]
    for r in range(U.shape[0]):
        liked = indices[indptr[r]: indptr[r + 1]]
        held = set(liked.tolist())
        state = [(seed * _GOLDEN + r * _MIX2 + 1) & _M64]

        def draw(n):
            state[0] = (state[0] + _GOLDEN) & _M64
            z = ((state[0] ^ (state[0] >> 30)) * _MIX1) & _M64
            z = ((z ^ (z >> 27)) * _MIX2) & _M64
            return ((z ^ (z >> 31)) >> 11) % n

        acc, u = np.full(U.shape[1], acc0), U[r]
        for e in range(len(rates) // n_rounds):
            batch_of = [draw(n_rounds) for _ in liked]
            for q in range(n_rounds):
                g, active = np.zeros_like(u), False
                for p in liked[np.array(batch_of, dtype=np.int64) == q]:
                    d_pos = ((u - V[p]) ** 2).sum()
                    dists = []
                    for _ in range(n_neg):
                        k = next((c for c in (draw(n_items) for _ in range(64)) if c not in held), None)
                        if k is None:
                            k = sorted(set(range(n_items)) - held)[draw(n_items - len(liked))]
                        dists.append((((u - V[k]) ** 2).sum(), k))
                    impostors = sum(margin + d_pos - dk > 0 for dk, _ in dists)
                    best, k = min(dists, key=lambda t: t[0])
                    if margin + d_pos - best > 0:
                        g += 2 * np.log(np.floor(n_items * impostors / n_neg) + 1.0) * (V[k] - V[p])
                        active = True
                if active:
                    acc += g * g
                    u -= rates[e * n_rounds + q] * g / np.sqrt(acc + eps)
                    norm = np.linalg.norm(u)
                    if norm > max_norm:
                        u *= max_norm / norm
    return U


def test_whole_fold_in_matches_a_slow_reference_with_the_same_draws():
    rng = np.random.default_rng(0)
    m = sp.random(30, 25, density=0.3, random_state=rng, format="csr")
    m.data[:] = 1.0
    m = m[np.diff(m.indptr) > 0]
    m.sort_indices()
    V = rng.normal(0, 0.4, (25, 5)).astype(np.float32)
    U0 = rng.normal(0, 0.3, (m.shape[0], 5)).astype(np.float32)
    rates = np.linspace(0.3, 0.02, 2 * 3).astype(np.float32)
    user = torch.from_numpy(U0.copy())
    fin.fold_in_numba(user, torch.from_numpy(V), m.indptr, m.indices, rates, n_rounds=3, n_negatives=4, margin=1.0,
                      use_rank_weight=True, max_norm=1.0, seed=5)
    want = _fold_reference(U0, V, m.indptr, m.indices, rates, 3, 4, 1.0, 1.0, 5)
    # the same draws and branch decisions (none within rounding of a hinge's edge here); float32
    # against float64 over 6 steps: absolute 1e-5 on vectors of norm <= 1
    np.testing.assert_allclose(user.numpy(), want, atol=1e-5)
    assert not np.allclose(want, U0)
