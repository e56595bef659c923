"""TransCF's compiled CPU kernel against its torch step (itself checked against autograd on the loop
reference in test_transcf.py): the same losses, gradients and touched rows, in both modes, whatever
the thread count; and a model trained with it as good as one trained with torch."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

numba = pytest.importorskip("numba")

from metricrec.data.splits import ratio_split  # noqa: E402
from metricrec.data.synthetic import generate  # noqa: E402
from metricrec.metrics import evaluate_part  # noqa: E402
from metricrec.models.transcf import TransCF  # noqa: E402
from metricrec.models.transcf import step_numba  # noqa: E402
from metricrec.models.transcf.step import Neighbourhoods, TransCFStep, transcf_gradients  # noqa: E402
from metricrec.models.transcf.step_numba import NeighbourhoodIndex, transcf_gradients_numba  # noqa: E402
from metricrec.training.optim import GradBuffer  # noqa: E402
from metricrec.training.sampling import UniformSampler  # noqa: E402

# float32 on both sides, the same terms summed in another order: the torch step expands |y|^2 into
# products over the shared items (cancelling terms of size |u|^2) and sums the neighbourhood
# gradients in a sparse product after the pairs', the kernel takes direct differences row by row.
# An entry sums at most a few hundred terms (the pairs of a row, the neighbours of a mean), each
# exact to 2^-24 of the largest gradient, so they agree to ~1e-6 of it (4e-7 the largest gap seen
# over 48 problems of this shape); 2e-5 of the largest entry (absolute) and 2e-5 relative are well
# above that and far below a wrong or missing term (O(1e-2) of it or more). The problems keep every
# violation at least 1e-4 from 0, a hundred times the float32 rounding of a distance (< 4, a few
# ulp of it), so no hinge switches between the backends.
RTOL, ATOL = 2e-5, 2e-5
KW = dict(margin=0.5, dist_reg=0.3, nbr_reg=0.7)


def _problem(seed=0, group_size=4, n_users=40, n_items=60, d=8):
    """A random training matrix (user 0 and item 0 without positives, so alpha_0 = beta_0 = 0) and a
    batch of all its positives, U = 5 negatives drawn by the trainer's sampler in shared groups, some
    entries redrawn for their row (the shared item was one of the row's positives)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.2).astype(np.float32)
    dense[0], dense[:, 0] = 0.0, 0.0
    train = sp.csr_matrix(dense)
    gen = torch.Generator().manual_seed(seed)
    ue, ie = 0.3 * torch.randn(n_users, d, generator=gen), 0.3 * torch.randn(n_items, d, generator=gen)
    coo = train.tocoo()
    order = rng.permutation(train.nnz)  # users and items repeat across the batch, in no order
    users = torch.from_numpy(coo.row[order].astype(np.int64))
    positives = torch.from_numpy(coo.col[order].astype(np.int64))
    draw = UniformSampler(train, seed=seed).sample(users, 5, group_size)
    return train, ue, ie, users, positives, draw


def _violations(train, ue, ie, users, positives, negatives, beta=None):
    """(B, U) ``margin + d(u,i) - d(u,k)`` in float64."""
    hoods = Neighbourhoods(train, "cpu", torch.float64)
    u, v = ue.double(), ie.double()
    alpha = hoods.user_means(v)
    beta = hoods.item_means(u) if beta is None else beta.double()

    def dist(items):
        return (u[users].unsqueeze(1) + alpha[users].unsqueeze(1) * beta[items] - v[items]).pow(2).sum(-1)

    return KW["margin"] + dist(positives.unsqueeze(1)) - dist(negatives)


def _both(problem, kw=KW, beta=None):
    """(parts, [(rows, grads) of the user buffer, of the item buffer]) of the torch step, of the kernel."""
    train, ue, ie, users, positives, draw = problem
    out = []
    for fn, positives_of in ((transcf_gradients, Neighbourhoods(train)),
                             (transcf_gradients_numba, NeighbourhoodIndex(train, item_side=beta is None))):
        bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
        parts = fn(ue, ie, positives_of, users, positives, draw, bufs[0], None if beta is not None else bufs[1],
                   beta=beta, **kw)
        out.append((parts, [b.pop() for b in bufs]))
    return out


def _assert_same(torch_out, numba_out):
    (p_t, b_t), (p_n, b_n) = torch_out, numba_out
    assert set(p_n) == set(p_t) == {"hinge_loss", "dist_loss", "nbr_loss"}
    for key in p_t:
        assert p_n[key] == pytest.approx(p_t[key], rel=RTOL, abs=1e-6)
    for (rows_t, g_t), (rows_n, g_n) in zip(b_t, b_n):
        assert torch.equal(rows_n, rows_t)  # the same rows touched
        if rows_t.numel():
            torch.testing.assert_close(g_n, g_t, rtol=RTOL, atol=ATOL * float(g_t.abs().max()))


@pytest.mark.parametrize("group_size", [1, 4])
@pytest.mark.parametrize("kw", [KW, dict(margin=0.5, dist_reg=0.0, nbr_reg=0.0)], ids=["regularised", "hinge"])
def test_the_kernel_fills_the_buffers_as_the_torch_step(group_size, kw):
    problem = _problem(group_size=group_size)
    train, ue, ie, users, positives, draw = problem
    viol = _violations(train, ue, ie, users, positives, draw.negatives)
    assert viol.abs().min() > 1e-4  # no hinge on the edge (see the tolerance above)
    active = viol > 0
    assert 0.2 < active.double().mean() < 0.8
    fixed = active[draw.fix_rows, draw.fix_cols]
    assert fixed.any() and not fixed.all()  # redrawn entries active and inactive (the latter touched all the same)
    torch_out, numba_out = _both(problem, kw)
    _assert_same(torch_out, numba_out)
    # the batch holds every positive: every user with positives is touched, every item with users too
    # (through the alpha of its users when no pair touched it)
    user_rows, item_rows = (set(rows.tolist()) for rows, _ in numba_out[1])
    assert user_rows == set(range(1, train.shape[0])) and set(range(1, train.shape[1])) <= item_rows


def test_a_small_batch_reaches_rows_only_through_the_neighbourhoods():
    # 6 pairs of 40 users: the users touched besides the batch's own are the users of the batch's items
    train, ue, ie, users, positives, draw = _problem(seed=1)
    keep = torch.arange(6)
    sub = UniformSampler(train, seed=2).sample(users[keep], 5, 4)
    problem = (train, ue, ie, users[keep], positives[keep], sub)
    torch_out, numba_out = _both(problem)
    _assert_same(torch_out, numba_out)
    user_rows = set(numba_out[1][0][0].tolist())
    item_rows = set(numba_out[1][1][0].tolist())
    assert user_rows - set(users[keep].tolist())  # through beta
    assert item_rows - set(positives[keep].tolist()) - set(sub.negatives.reshape(-1).tolist())  # through alpha


@pytest.mark.parametrize("group_size", [1, 4])
def test_a_fold_in_trains_the_users_only_as_the_torch_step(group_size):
    problem = _problem(seed=3, group_size=group_size)
    train, ue, ie, users, positives, draw = problem
    beta = Neighbourhoods(train).item_means(0.5 * torch.rand(*ue.shape, generator=torch.Generator().manual_seed(0)))
    assert _violations(train, ue, ie, users, positives, draw.negatives, beta).abs().min() > 1e-4
    torch_out, numba_out = _both(problem, beta=beta)
    _assert_same(torch_out, numba_out)
    assert numba_out[1][1][0].numel() == 0  # the item buffer untouched
    assert set(numba_out[1][0][0].tolist()) == set(users.tolist())  # the batch's users, nothing through beta


def test_the_kernel_does_not_depend_on_the_thread_count_or_the_parts(monkeypatch):
    # each target row is written by the one part that owns it, which adds its terms in a fixed order
    # (pairs, then the batch's users and items in index order): bitwise the same sums for any split
    train, ue, ie, users, positives, draw = _problem(seed=4, n_users=50, n_items=70, d=16)
    results = []
    before = numba.get_num_threads()
    try:
        # one and two threads (parts = threads), then 3 parts on one thread
        for threads, parts in ((1, None), (min(2, numba.config.NUMBA_NUM_THREADS), None), (1, 3)):
            numba.set_num_threads(threads)
            if parts is not None:
                monkeypatch.setattr(step_numba, "kernel_parts", lambda: parts)
            bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
            parts_out = transcf_gradients_numba(ue, ie, NeighbourhoodIndex(train), users, positives, draw, *bufs, **KW)
            results.append((parts_out, [b.pop() for b in bufs]))
    finally:
        numba.set_num_threads(before)
    for parts_out, bufs in results[1:]:
        assert parts_out == results[0][0]
        for (r0, g0), (r1, g1) in zip(results[0][1], bufs):
            assert torch.equal(r0, r1) and torch.equal(g0, g1)


def test_the_step_picks_the_kernel_for_the_numba_backend():
    train, ue, ie, users, positives, draw = _problem(seed=5)
    out = {}
    for backend in ("torch", "numba"):
        step = TransCFStep(TransCF().config, ue, ie, train, backend)
        bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
        out[backend] = step.batch(users, positives, draw, *bufs), [b.pop() for b in bufs]
    assert step._gradients is transcf_gradients_numba and isinstance(step._positives, NeighbourhoodIndex)
    (total_t, parts_t), bufs_t = out["torch"]
    (total_n, parts_n), bufs_n = out["numba"]
    assert total_n == pytest.approx(total_t, rel=RTOL)
    _assert_same((parts_t, bufs_t), (parts_n, bufs_n))


# ---------------------------------------------------------------------- training
def _recall20(model, split):
    return evaluate_part(model.scorer(), split, "test", ks=(20,), metrics=("recall",))["recall@20"]


def test_a_model_trained_with_the_kernel_is_as_good_as_with_torch():
    # the behaviour suite's planted clusters and settings (test_transcf.py), from a random start
    split = ratio_split(generate(preset="small", seed=3, popularity_exponent=0.3, cluster_affinity=0.95), seed=0)
    kw = dict(factors=16, batch_size=500, epochs=10, init="random", learning_rate=0.5, nbr_reg=0.1,
              show_progress=False, verbose=False)
    models = {k: TransCF(kernel=k, **kw).fit(split.train, split.valid) for k in ("torch", "numba")}
    assert models["numba"]._trainer.step.backend == "numba"
    losses = {k: [e.loss for e in m.history.epochs] for k, m in models.items()}
    assert losses["numba"][-1] < 0.8 * losses["numba"][0]
    # the same trajectory up to float32 rounding, amplified over the epochs
    np.testing.assert_allclose(losses["numba"], losses["torch"], rtol=1e-3)
    counts = np.asarray(split.train.matrix.sum(0)).ravel().astype(np.float32)
    popular = evaluate_part(lambda u: torch.from_numpy(np.tile(counts, (len(u), 1))), split, "test", ks=(20,),
                            metrics=("recall",))["recall@20"]
    ours = _recall20(models["numba"], split)
    assert ours > 1.5 * popular, (ours, popular)
    assert ours == pytest.approx(_recall20(models["torch"], split), abs=0.01)
