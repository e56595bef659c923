"""SFCML's compiled CPU kernel against the torch step (itself checked against autograd on the double
sum in test_sfcml.py): the same losses, gradients and touched rows for every weighting, with the
items trained or frozen; the same bits for any thread count; and the same training."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

numba = pytest.importorskip("numba")

from metricrec.metrics import evaluate_part  # noqa: E402
from metricrec.models.sfcml import SFCML, SFCMLConfig  # noqa: E402
from metricrec.models.sfcml.step import SFCMLStep, item_moments, sfcml_gradients, user_weights  # noqa: E402
from metricrec.models.sfcml.step_numba import item_moments_numba, sfcml_gradients_numba  # noqa: E402
from metricrec.training.optim import GradBuffer  # noqa: E402
from metricrec.training.sampling import UniformSampler  # noqa: E402
from recommender_behaviour import data_split  # noqa: E402,F401

# Tolerances, float32 against float32. Both backends evaluate the same closed form in float32 (the
# numba kernel keeps the per-user scalars in float64), in different orders: BLAS and fastmath
# reassociate the sums over d and over the items. The closed form cancels -- the sums over all n
# items of d(u,j) and d(u,j)^2 (O(n) each) minus the positives' share give the negatives' moments,
# and a gradient row is a few O(W n / |N_u|) terms that mostly cancel -- so each backend is off the
# exact value by some 1e2 float32 epsilons (6e-8) of the largest term: here either is within 5e-7
# of the largest gradient entry of the float64 result, and the two as close to each other. 2e-5 of
# that scale (and 1e-5 relative on the losses) is well above it and far below a missing or wrong
# term, which is O(1e-2) of the scale or more.
GRAD_TOL, LOSS_RTOL = 2e-5, 1e-5


def _problem(seed=0, n_users=40, n_items=70, d=8, n_pairs=150):
    """A float32 problem: random positives plus a user with a single positive (user 0: item 3), an
    item nobody holds (item 0) and one nearly everybody holds (item 1); a batch of random positive
    pairs in which users and pairs repeat, and some users are absent."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.12
    dense[:, 0] = False
    dense[:, 1] = rng.random(n_users) < 0.9
    dense[0] = False
    dense[0, 3] = True
    dense[np.flatnonzero(dense.sum(1) == 0), 2] = True
    train = sp.csr_matrix(dense.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    ue = torch.randn(n_users, d, generator=gen) * 0.3
    ie = torch.randn(n_items, d, generator=gen) * 0.3
    r, c = train.nonzero()
    sel = rng.choice(np.flatnonzero(r < n_users - 5), n_pairs)  # the last five users are absent
    sel[:3] = np.flatnonzero(r == 0)[0]  # user 0's only pair, three times
    return train, ue, ie, torch.from_numpy(r[sel]).long(), torch.from_numpy(c[sel]).long()


def _run(fn, problem, weighting, train_items, margin=2.0, moments=None):
    train, ue, ie, users, positives = problem
    bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
    parts = fn(ue, ie, users, positives, train, user_weights(train, weighting).float(), bufs[0],
               bufs[1] if train_items else None, margin=margin, moments=moments)
    return parts, bufs


def _assert_same_grads(got, want):
    scale = float(want.grad.abs().max())
    assert scale > 0
    torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=GRAD_TOL * scale)
    assert torch.equal(got.touched, want.touched)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weighting", ["user", "pair"])
@pytest.mark.parametrize("train_items", [True, False])
@pytest.mark.parametrize("margin", [2.0, 0.5])
def test_same_losses_gradients_and_touched_rows_as_the_torch_step(seed, weighting, train_items, margin):
    problem = _problem(seed)
    a_parts, (a_u, a_i) = _run(sfcml_gradients, problem, weighting, train_items, margin)
    b_parts, (b_u, b_i) = _run(sfcml_gradients_numba, problem, weighting, train_items, margin)
    assert b_parts.keys() == a_parts.keys()
    for key in a_parts:
        assert b_parts[key] == pytest.approx(a_parts[key], rel=LOSS_RTOL)
    _assert_same_grads(b_u, a_u)
    assert sorted(b_u.touched.nonzero().squeeze(1).tolist()) == problem[3].unique().tolist()
    if train_items:
        _assert_same_grads(b_i, a_i)
        assert bool(b_i.touched.all())  # the all-negatives term reaches every item
    else:
        assert not b_i.touched.any() and not b_i.grad.any()


def test_the_buffers_accumulate_and_given_moments_are_used():
    # a fold-in hands the frozen moments in; the kernel adds to what the buffers hold
    problem = _problem(2)
    ie = problem[2]
    frozen = item_moments(ie)
    a_parts, (a_u, _) = _run(sfcml_gradients, problem, "user", False, moments=frozen)
    b_parts, (b_u, _) = _run(sfcml_gradients_numba, problem, "user", False, moments=frozen)
    assert b_parts == pytest.approx(a_parts, rel=LOSS_RTOL)
    _assert_same_grads(b_u, a_u)
    before = b_u.grad.clone()
    train, ue, _, users, positives = problem
    sfcml_gradients_numba(ue, ie, users, positives, train, user_weights(train, "user").float(), b_u, None,
                          margin=2.0, moments=frozen)
    torch.testing.assert_close(b_u.grad, 2 * before, rtol=1e-6, atol=0)


def test_the_compiled_item_moments_are_torchs():
    ie = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    want, got = item_moments(ie), item_moments_numba(ie)
    assert got.n == want.n
    for name in ("q", "S", "Q1", "Q2", "R", "M"):  # float32 sums of up to 1,000 terms, reordered
        torch.testing.assert_close(getattr(got, name).double(), getattr(want, name).double(), rtol=1e-5,
                                   atol=1e-5 * float(getattr(want, name).abs().max()))


def test_the_step_uses_the_kernel_and_ignores_the_sampled_negatives():
    # SFCML uses every negative: shared draws, their group size and the redrawn entries
    # (fix_rows/fix_cols) change nothing; the numba step is the torch step up to rounding
    train, ue, ie, users, positives = _problem(3)
    out = {}
    for backend, group, n_neg in (("numba", 1, 1), ("numba", 8, 5), ("torch", 8, 5)):
        draw = UniformSampler(train, seed=group).sample(users, n_neg, group)
        if group > 1:
            assert draw.fix_rows.numel() > 0  # item 1 is nearly everybody's: some entries were redrawn
        step = SFCMLStep(SFCMLConfig(factors=8), ue, ie, train, backend)
        bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
        total, parts = step.batch(users, positives, draw, *bufs)
        assert total == pytest.approx(sum(parts.values()))
        out[backend, group] = parts, bufs
    (p1, (u1, i1)), (p8, (u8, i8)) = out["numba", 1], out["numba", 8]
    assert p1 == p8 and torch.equal(u1.grad, u8.grad) and torch.equal(i1.grad, i8.grad)
    pt, (ut, it) = out["torch", 8]
    assert p1 == pytest.approx(pt, rel=LOSS_RTOL)
    _assert_same_grads(u1, ut)
    _assert_same_grads(i1, it)


def test_the_numba_step_refuses_tables_it_cannot_run_on():
    train, ue, ie, _, _ = _problem()
    with pytest.raises(ValueError, match="float32"):
        SFCMLStep(SFCMLConfig(factors=8), ue.double(), ie.double(), train, "numba")


def test_results_do_not_depend_on_the_thread_count():
    # bitwise: every row of either buffer is written by one loop iteration, which sums its terms in a
    # fixed order (a user's positives in row order, an item's users in increasing order), and the
    # item moments are summed over fixed slices of the table, in order -- no reduction depends on
    # how the iterations are split among threads
    problem = _problem(4, n_users=120, n_items=300, n_pairs=600)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            parts, (bu, bi) = _run(sfcml_gradients_numba, problem, "user", True)
            results.append((parts, bu.grad, bi.grad, item_moments_numba(problem[2])))
    finally:
        numba.set_num_threads(before)
    first = results[0]
    for other in results[1:]:
        assert other[0] == first[0]
        assert torch.equal(other[1], first[1]) and torch.equal(other[2], first[2])
        assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(other[3][1:], first[3][1:]))


def test_auto_picks_the_kernel_and_trains_as_torch_does(data_split):
    kw = dict(factors=16, batch_size=500, init="random", epochs=6, learning_rate=0.3, show_progress=False,
              verbose=False)
    fits = {kernel: SFCML(kernel=kernel, **kw).fit(data_split.train) for kernel in ("auto", "torch")}
    assert fits["auto"]._trainer.step.backend == "numba"
    again = SFCML(kernel="numba", **kw).fit(data_split.train)
    assert np.array_equal(again.item_embeddings, fits["auto"].item_embeddings)  # deterministic
    recall = {k: evaluate_part(m.scorer(), data_split, "test", ks=(20,), metrics=("recall",))["recall@20"]
              for k, m in fits.items()}
    losses = [e.loss for e in fits["auto"].history.epochs]
    assert losses[-1] < 0.5 * losses[0]
    assert recall["auto"] == pytest.approx(recall["torch"], abs=0.01)
    # the square loss is smooth: the two backends follow the same trajectory up to rounding (they
    # differ by ~2e-6 after six epochs here)
    assert np.allclose(fits["auto"].item_embeddings, fits["torch"].item_embeddings, atol=1e-4)
    assert np.allclose(fits["auto"].user_embeddings, fits["torch"].user_embeddings, atol=1e-4)


def test_a_numba_fold_in_leaves_the_items_as_trained(data_split):
    model = SFCML(factors=16, batch_size=500, epochs=2, kernel="numba", show_progress=False,
                  verbose=False).fit(data_split.train)
    items = model.item_embeddings.copy()
    rows = model.partial_fit_users([int(model.user_ids.max()) + 1], [list(model.item_ids[[0, 5, 9]])], epochs=2)
    assert np.array_equal(model.item_embeddings, items)
    assert np.abs(model.user_embeddings[rows[0]]).sum() > 0
