"""Samplers: one behaviour suite run on every sampler."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.training.sampling import PopularitySampler, PositiveSet, UniformSampler, make_sampler
import metricrec.training.sampling as sampling


def _train(seed=0, n_users=40, n_items=25, density=0.5):
    rng = np.random.default_rng(seed)
    m = sp.random(n_users, n_items, density=density, random_state=rng, format="csr")
    m.data[:] = 1
    return m


SAMPLERS = {
    "uniform": lambda m, seed: UniformSampler(m, seed=seed),
    "popularity": lambda m, seed: PopularitySampler(m, alpha=1.0, seed=seed),
    "popularity-alpha0": lambda m, seed: PopularitySampler(m, alpha=0.0, seed=seed),
}


@pytest.fixture(params=list(SAMPLERS))
def make(request):
    return SAMPLERS[request.param]


@pytest.mark.parametrize("group_size", [1, 3, 16])
def test_never_returns_a_positive(make, group_size):
    m = _train()
    dense = m.toarray() > 0
    s = make(m, 0)
    users = torch.from_numpy(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)))
    for _ in range(5):
        draw = s.sample(users, 10, group_size)
        neg = draw.negatives.numpy()
        assert neg.shape == (users.numel(), 10)
        assert not dense[users.numpy()[:, None], neg].any()
        assert neg.min() >= 0 and neg.max() < m.shape[1]


def test_shared_draw_structure(make):
    m = _train(density=0.3)
    s = make(m, 0)
    users = torch.randint(0, m.shape[0], (50,))
    draw = s.sample(users, 6, group_size=8)
    assert draw.shared.shape == (7, 6)  # ceil(50 / 8) groups
    expected = draw.shared.repeat_interleave(8, 0)[:50].clone()
    expected[draw.fix_rows, draw.fix_cols] = draw.negatives[draw.fix_rows, draw.fix_cols]
    assert torch.equal(expected, draw.negatives)
    # every entry that differs from the shared draw is listed as fixed
    differs = (draw.shared.repeat_interleave(8, 0)[:50] != draw.negatives).nonzero()
    fixed = set(zip(draw.fix_rows.tolist(), draw.fix_cols.tolist()))
    assert set(map(tuple, differs.tolist())) <= fixed


def test_deterministic_for_a_seed(make):
    m = _train()
    users = torch.arange(m.shape[0]).repeat(3)
    a = make(m, 7).sample(users, 5, 4).negatives
    b = make(m, 7).sample(users, 5, 4).negatives
    c = make(m, 8).sample(users, 5, 4).negatives
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_marginal_is_uniform_over_non_positives():
    # user 0 likes items 0..4 of 10: negatives must be uniform over items 5..9
    m = sp.csr_matrix(np.array([[1] * 5 + [0] * 5, [0] * 9 + [1]], dtype=np.float32))
    s = UniformSampler(m, seed=0)
    neg = s.sample(torch.zeros(20000, dtype=torch.long), 5, 4).negatives.numpy().ravel()
    counts = np.bincount(neg, minlength=10)
    assert counts[:5].sum() == 0
    assert np.allclose(counts[5:] / counts[5:].sum(), 0.2, atol=0.01)


def test_popularity_sampler_prefers_popular_items():
    # item 0 is liked by 50 users, items 1..9 by none; user 50 likes nothing
    dense = np.zeros((51, 10), dtype=np.float32)
    dense[:50, 0] = 1
    s = PopularitySampler(sp.csr_matrix(dense), alpha=1.0, seed=0)
    neg = s.sample(torch.full((20000,), 50), 1).negatives.numpy().ravel()
    share = np.mean(neg == 0)
    assert share == pytest.approx(51 / (51 + 9), abs=0.02)  # (count + 1) ** alpha


def test_positive_set_sparse_path_matches_dense(monkeypatch):
    m = _train(n_users=60, n_items=70, density=0.1)
    users = torch.randint(0, 60, (1000,))
    items = torch.randint(0, 70, (1000,))
    dense = PositiveSet(m).contains(users, items)
    monkeypatch.setattr(sampling, "_DENSE_LIMIT", 0)
    sparse = PositiveSet(m)
    assert sparse._bitmap is None
    assert torch.equal(sparse.contains(users, items), dense)
    assert torch.equal(dense, torch.from_numpy(m.toarray()[users.numpy(), items.numpy()] > 0))


def test_bad_arguments():
    m = _train()
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("nope", m)
    with pytest.raises(ValueError, match="n_negatives"):
        UniformSampler(m).sample(torch.zeros(3, dtype=torch.long), 0)
    full = sp.csr_matrix(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="every item"):
        UniformSampler(full)
