"""LRML's compiled CPU step (numba) against the torch step (itself checked against autograd on the
loop reference in test_lrml.py): the same loss, table gradients, touched rows and memory gradients
for the same draws, in every metric, negative relation and the fold-in; independent of the thread
count; and a training run in the torch run's quality band."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

numba = pytest.importorskip("numba")

from metricrec.metrics import evaluate_part  # noqa: E402
from metricrec.models.lrml import LRML, LRMLConfig  # noqa: E402
from metricrec.models.lrml.step import LRMLStep, lrml_batch_loss  # noqa: E402
from metricrec.models.lrml.step_numba import lrml_gradients_numba  # noqa: E402
from metricrec.training.backends import resolve_backend  # noqa: E402
from metricrec.training.optim import GradBuffer  # noqa: E402
from metricrec.training.sampling import UniformSampler  # noqa: E402
from recommender_behaviour import data_split  # noqa: E402,F401

# float32 on both sides, the same terms summed in other orders: torch's BLAS blocks and autograd's
# broadcast reductions against the kernel's sequential loops (reassociated by fastmath), and for
# "l2" with own relations the kernel's negative distances ||u - v||^2 + a.G a + 2 a.(M u - M v)
# against torch's ||u + r - v||^2. Each entry is a sum of O(1) products over d = 16 terms and the
# softmax's 5 slots, exact to ~1e-7 relative per term: the tables' gradients agree to ~1e-6, the
# memory's (sums over the batch's ~1,000 active hinges) to ~1e-5 of their largest entry. 1e-4
# relative and 1e-5 absolute (1e-4 of the largest entry for the memory) is well above that and far
# below a wrong or missing term (O(0.01) or more).
RTOL, ATOL = 1e-4, 1e-5


def _problem(seed=0, n_users=30, n_items=50, d=16, n_slots=5, n_neg=6, group_size=4):
    """A batch of every positive pair of a random 30 x 50 matrix, negatives from the uniform sampler
    in shared groups of 4 (so some entries were redrawn: a group's draw was a positive of one row)."""
    rng = np.random.default_rng(seed)
    train = sp.random(n_users, n_items, density=0.12, random_state=rng, format="csr")
    train.data[:] = 1.0
    gen = torch.Generator().manual_seed(seed)
    ue = 0.4 * torch.randn(n_users, d, generator=gen)
    ie = 0.4 * torch.randn(n_items, d, generator=gen)
    keys = torch.randn(n_slots, d, generator=gen)
    memory = 0.5 * torch.randn(n_slots, d, generator=gen)
    users = torch.from_numpy(np.repeat(np.arange(n_users), np.diff(train.indptr)))
    positives = torch.from_numpy(train.indices.astype(np.int64))
    draw = UniformSampler(train, seed=seed).sample(users, n_neg, group_size)
    assert draw.fix_rows.numel() > 0  # the redrawn entries are exercised
    return ue, ie, keys, memory, users, positives, draw


def _run(backend, problem, cfg, train_memory):
    ue, ie, keys, memory, users, positives, draw = problem
    step = LRMLStep(cfg, ue, ie, keys.clone(), memory.clone(), backend, train_memory=train_memory)
    seen = {}
    step._step_memory = lambda g_keys, g_memory: seen.update(keys=g_keys, memory=g_memory)
    bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
    total, parts = step.batch(users, positives, draw, *bufs)
    return total, parts, [b.pop() for b in bufs], seen


@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("negative_relation", ["own", "positive"])
@pytest.mark.parametrize("train_memory", [True, False])
def test_the_numba_step_fills_the_buffers_as_the_torch_step(metric, negative_relation, train_memory):
    problem = _problem()
    ue, ie, keys, memory = problem[:4]
    cfg = LRMLConfig(factors=16, memory_slots=5, margin=1.0, metric=metric, negative_relation=negative_relation)
    t_total, t_parts, t_bufs, t_seen = _run("torch", problem, cfg, train_memory)
    n_total, n_parts, n_bufs, n_seen = _run("numba", problem, cfg, train_memory)
    assert n_total == pytest.approx(t_total, rel=RTOL) and n_parts == {"hinge_loss": n_total}
    for (rows_t, g_t), (rows_n, g_n) in zip(t_bufs, n_bufs):
        assert torch.equal(rows_t, rows_n)  # the same rows touched: those with an active hinge
        torch.testing.assert_close(g_n, g_t, rtol=RTOL, atol=ATOL)
    assert set(n_seen) == set(t_seen) == ({"keys", "memory"} if train_memory else set())
    for name in n_seen:
        want = t_seen[name]
        torch.testing.assert_close(n_seen[name], want, rtol=RTOL, atol=1e-4 * float(want.abs().max()))
    # the batch has active and inactive hinges, and rows without any: both filters are exercised
    users, positives, draw = problem[4:]
    _, viol = lrml_batch_loss(ue[users], ie[positives], ie[draw.negatives], keys, memory, margin=1.0, metric=metric,
                              negative_relation=negative_relation)
    active = viol > 0
    assert 0.1 < active.float().mean() < 0.9 and not active.any(1).all()
    assert viol.abs().min() > 1e-4  # no hinge so close to 0 that rounding could decide it


def test_the_numba_step_takes_the_same_memory_step():
    problem = _problem(1)
    cfg = LRMLConfig(factors=16, memory_slots=5, margin=1.0, memory_lr=0.1)
    ue, ie, keys, memory, users, positives, draw = problem
    after = []
    for backend in ("torch", "numba"):
        step = LRMLStep(cfg, ue, ie, keys.clone(), memory.clone(), backend)
        step.batch(users, positives, draw, GradBuffer(*ue.shape), GradBuffer(*ie.shape))
        after.append((step.keys, step.memory))
    for got, want in zip(after[1], after[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(after[1][0], keys)


@pytest.mark.parametrize("metric, negative_relation", [("l2", "own"), ("l1", "own"), ("l2", "positive")])
def test_the_kernel_does_not_depend_on_the_thread_count(metric, negative_relation):
    # bitwise: every sum runs in an order the batch fixes (chunks of pairs of a constant size, each
    # table row summed in pair order by the one part that owns it, the chunks' memory gradients in
    # chunk order), whichever thread computes it
    ue, ie, keys, memory, users, positives, draw = _problem(2)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            bufs = GradBuffer(*ue.shape), GradBuffer(*ie.shape)
            total, g_keys, g_memory = lrml_gradients_numba(ue, ie, keys, memory, users, positives, draw.negatives,
                                                           *bufs, margin=1.0, metric=metric,
                                                           negative_relation=negative_relation)
            results.append((total, [b.pop() for b in bufs], g_keys, g_memory))
    finally:
        numba.set_num_threads(before)
    (t0, b0, k0, m0), (t1, b1, k1, m1) = results[0], results[-1]
    assert t0 == t1 and torch.equal(k0, k1) and torch.equal(m0, m1)
    for (r0, g0), (r1, g1) in zip(b0, b1):
        assert torch.equal(r0, r1) and torch.equal(g0, g1)


def test_auto_picks_the_kernel_and_refuses_tables_it_cannot_take():
    assert LRML.backends == ("torch", "numba")
    assert resolve_backend("auto", "cpu", LRML.backends) == "numba"
    ue, ie, keys, memory = (t.double() for t in _problem()[:4])
    with pytest.raises(ValueError, match="float32"):
        LRMLStep(LRMLConfig(factors=16, memory_slots=5), ue, ie, keys, memory, "numba")


def _recall20(scorer, split):
    return evaluate_part(scorer, split, "test", ks=(20,), metrics=("recall",))["recall@20"]


def test_a_numba_run_learns_as_the_torch_run(data_split):  # noqa: F811
    # a random start (the spectral one already ranks this data well): the quality is the steps'
    kw = dict(factors=16, batch_size=500, epochs=6, init="random", learning_rate=0.5, memory_slots=8,
              show_progress=False, verbose=False)
    fast = LRML(kernel="numba", **kw).fit(data_split.train)
    assert fast._trainer.step.backend == "numba"
    ref = LRML(kernel="torch", **kw).fit(data_split.train)
    losses = [e.loss for e in fast.history.epochs]
    assert losses[-1] < 0.8 * losses[0]
    # the trajectories part only by float32 rounding, amplified over the epochs (~1e-6 here)
    np.testing.assert_allclose(losses, [e.loss for e in ref.history.epochs], rtol=1e-3)
    ours = _recall20(fast.scorer(), data_split)
    assert ours == pytest.approx(_recall20(ref.scorer(), data_split), abs=0.02)
    counts = torch.from_numpy(np.asarray(data_split.train.matrix.sum(0)).ravel().astype(np.float32))
    assert ours > 1.5 * _recall20(lambda u: counts.expand(len(u), -1), data_split)  # 0.39 against 0.17
