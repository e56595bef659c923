"""Initial tables: the spectral start ranks like a truncated SVD, lies in the ball, is seeded."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML, CMLConfig
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ConfigError
from metricrec.metrics import embedding_scorer, evaluate_part
from metricrec.models.init import INSIDE, random_tables, spectral_tables
from metricrec.training.optim import clip_rows


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), seed=0)


def test_spectral_tables_shape_ball_and_seed(split):
    train = split.train.matrix
    u, v = spectral_tables(train, 16, seed=3, radius=0.8)
    assert u.shape == (train.shape[0], 16) and v.shape == (train.shape[1], 16)
    assert u.dtype == np.float32 and v.dtype == np.float32
    # items on the sphere of radius INSIDE * 0.8 (1.5e-5 inside the ball; float32 rounding is 1e-7)
    assert np.linalg.norm(v, axis=1) == pytest.approx(0.8 * INSIDE, abs=1e-6)
    assert np.linalg.norm(u, axis=1).max() <= 0.8 + 1e-5
    # the ball constraint holds exactly, by any norm kernel: every row measures <= the radius in
    # float32 (torch, the kernel clip_rows uses) and in float64, so the first clip moves nothing
    for table in (u, v):
        assert float(torch.from_numpy(table).norm(dim=1).max()) <= 0.8
        assert np.linalg.norm(table.astype(np.float64), axis=1).max() <= 0.8
        assert torch.equal(clip_rows(torch.from_numpy(table.copy()), 0.8), torch.from_numpy(table))
    # same process, same inputs and thread count: the same kernels run, so the result repeats exactly
    u2, v2 = spectral_tables(train, 16, seed=3, radius=0.8)
    assert np.array_equal(u, u2) and np.array_equal(v, v2)


def test_distance_ranks_as_the_inner_product_of_the_spectral_part(split):
    u, v = spectral_tables(split.train.matrix, 16, seed=0)
    d2 = (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2 * u @ v.T
    dot = u[:, :-1] @ v[:, :-1].T  # users have no extra coordinate
    for row in range(0, u.shape[0], 37):
        if np.abs(u[row]).sum() == 0:
            continue
        assert np.corrcoef(-d2[row], dot[row])[0, 1] > 0.9999


def test_spectral_start_beats_random_before_training(split):
    train = split.train.matrix
    u, v = spectral_tables(train, 16, seed=0)
    ru, rv = random_tables(*train.shape, 16, 0.25, seed=0)

    def r50(a, b):
        return evaluate_part(embedding_scorer(torch.as_tensor(a), torch.as_tensor(b)), split, "valid",
                             ks=(50,), metrics=("recall",))["recall@50"]

    assert r50(u, v) > 2 * r50(ru, rv)


def test_tiny_or_empty_matrix_falls_back():
    assert spectral_tables(sp.csr_matrix(np.ones((2, 5))), 8, seed=0) is None
    assert spectral_tables(sp.csr_matrix((6, 6)), 8, seed=0) is None
    m = CML(factors=8, epochs=1, init="spectral", show_progress=False, verbose=False).fit(sp.csr_matrix(np.eye(2)))
    assert m.user_embeddings.shape == (2, 8)


def test_fewer_components_than_factors_are_padded():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((6, 40)) < 0.3).astype(np.float32))
    u, v = spectral_tables(x, 32, seed=0)
    assert u.shape == (6, 32) and v.shape == (40, 32)
    assert np.all(u[:, 5:-1] == 0) and np.all(v[:, 5:-1] == 0)  # 5 = min(shape) - 1 components


def test_model_uses_the_configured_start(split):
    kw = dict(factors=8, epochs=1, batch_size=256, show_progress=False, verbose=False)
    spectral = CML(init="spectral", **kw)
    spectral._init_tables(*split.train.shape, train=split.train.matrix)
    expected = spectral_tables(split.train.matrix, 8, seed=0)
    # the start lies strictly inside the ball, so the model's clip is the identity on it (scale
    # exactly 1.0); 1e-6 allows only float32 rounding (norms <= 1, eps 6e-8 per coordinate), far
    # below any difference between two starts
    np.testing.assert_allclose(spectral.item_embeddings, expected[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(spectral.user_embeddings, expected[0], rtol=0, atol=1e-6)
    assert spectral.init_seconds is not None and spectral.init_seconds >= 0
    rand = CML(init="random", **kw)
    rand._init_tables(*split.train.shape, train=split.train.matrix)
    ref = clip_rows(random_tables(*split.train.shape, 8, 1 / np.sqrt(8), seed=0)[1], 1.0)
    # torch's generator and clip_rows on both sides: the same kernels on the same machine, so the
    # values match to the bit; a tolerance covers a clip whose norm kernel differs by an ulp
    np.testing.assert_allclose(rand.item_embeddings, ref.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="init"):
        CMLConfig(init="svd")
