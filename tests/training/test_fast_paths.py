"""The compiled CPU paths of the sampler and the optimiser against their torch references."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import metricrec.training.optim as optim
import metricrec.training.sampling as sampling
from metricrec.training.optim import GradBuffer, RowAdagrad
from metricrec.training.sampling import PositiveSet, UniformSampler
from metricrec.training.trainer import Trainer
from metricrec.training.config import TrainingConfig

pytest.importorskip("numba")


def _train(seed=0, n_users=50, n_items=80, density=0.2):
    rng = np.random.default_rng(seed)
    m = sp.random(n_users, n_items, density=density, random_state=rng, format="csr")
    m.data[:] = 1
    m.data[m.indptr[3]:m.indptr[4]] = 0  # a user without positives
    m.eliminate_zeros()
    return m


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("dense_limit", [1 << 27, 0])
def test_compiled_membership_equals_the_torch_paths(monkeypatch, dense_limit, exact):
    m = _train()
    users = torch.randint(0, 50, (3000,))
    items = torch.randint(0, 80, (3000,))
    if not exact:  # the hashed filter + binary search in the user's row
        monkeypatch.setattr(sampling, "_EXACT_BITS", 0)
        monkeypatch.setattr(sampling, "_EXACT_BITS_PER_PAIR", 0)
    fast = PositiveSet(m)
    assert fast._csr and fast._exact == exact
    monkeypatch.setattr(sampling, "_kernels", False)
    monkeypatch.setattr(sampling, "_DENSE_LIMIT", dense_limit)
    ref = PositiveSet(m)
    assert not ref._csr
    truth = torch.from_numpy(m.toarray()[users.numpy(), items.numpy()] > 0)
    assert torch.equal(fast.contains(users, items), truth)
    assert torch.equal(ref.contains(users, items), truth)
    # broadcasting (B, 1) x (B, U), as the sampler asks
    grid_u, grid_i = users[:200, None], items[:1000].view(200, 5)
    assert torch.equal(fast.contains(grid_u, grid_i), ref.contains(grid_u, grid_i))


@pytest.mark.parametrize("group_size", [1, 4, 16])
def test_sampler_draws_the_same_with_and_without_numba(monkeypatch, group_size):
    m = _train(1)
    users = torch.from_numpy(np.repeat(np.arange(50), np.diff(m.indptr)))
    a = UniformSampler(m, seed=5).sample(users, 6, group_size)
    monkeypatch.setattr(sampling, "_kernels", False)
    b = UniformSampler(m, seed=5).sample(users, 6, group_size)
    for name in ("shared", "negatives", "fix_rows", "fix_cols"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not (m.toarray()[users.numpy()[:, None], a.negatives.numpy()] > 0).any()


@pytest.mark.parametrize("max_norm", [1.0, None])
def test_fused_adagrad_equals_the_torch_step(monkeypatch, max_norm):
    torch.manual_seed(0)
    w0 = optim.clip_rows(torch.randn(40, 6) * 0.5, 1.0)
    a, b = w0.clone(), w0.clone()
    opt_a, opt_b = RowAdagrad(a, 0.3), RowAdagrad(b, 0.3)
    buf_a, buf_b = GradBuffer(40, 6), GradBuffer(40, 6)
    for step in range(5):
        rows = torch.randint(0, 40, (30 if step % 2 else 5,))
        g = torch.randn(rows.numel(), 6) * 2
        buf_a.add(rows, g)
        buf_b.add(rows, g)
        opt_a.step_buffer(buf_a, max_norm=max_norm)  # fused (numba)
        with monkeypatch.context() as mp:
            mp.setattr(optim, "_fused", False)
            opt_b.step_buffer(buf_b, max_norm=max_norm)  # torch (dense or sparse path)
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(opt_a.acc, opt_b.acc, atol=1e-5)
        assert not buf_a.touched.any() and float(buf_a.grad.abs().sum()) == 0.0
    if max_norm:
        assert a.norm(dim=1).max() <= max_norm + 1e-6


def test_trainer_reads_pairs_from_the_csr_arrays():
    m = _train(2)

    class Step:
        name, backend = "noop", "torch"
        user_emb, item_emb = torch.zeros(50, 2), torch.zeros(80, 2)

    trainer = Trainer(Step(), m, config=TrainingConfig(epochs=1), progress=False, verbose=False)
    idx = torch.randperm(m.nnz)[:100]
    users, items = trainer.pairs(idx)
    rows = np.repeat(np.arange(50), np.diff(m.indptr))
    assert np.array_equal(users.numpy(), rows[idx.numpy()])
    assert np.array_equal(items.numpy(), m.indices[idx.numpy()])
    assert users.dtype == items.dtype == torch.int64
