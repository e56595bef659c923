"""EASE: the closed form against a direct implementation, its ranking of a planted item-item structure, and the
memory rule that skips a catalogue too large for the inverse before allocating anything."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import benchmarks.ease as ease
from benchmarks.ease import EASEPeer, ease_weights
from benchmarks.peers import make_peer
from benchmarks.runner import run_peer
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

X = np.array([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 1, 1, 0, 0],
              [0, 1, 0, 1, 1]], dtype=np.float64)


def direct_ease(x, lam):
    """Steck's formula written out: B = I - P diagMat(1 / diag(P)), P = (X^T X + lam I)^-1."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


@pytest.mark.parametrize("lam", [0.5, 2.0, 50.0])
def test_weights_match_the_direct_closed_form(lam, monkeypatch):
    monkeypatch.setattr(ease, "_MIRROR_BLOCK", 2)  # several column blocks on a 5 x 5 matrix
    b = ease_weights(sp.csr_matrix(X), lam)
    assert b.dtype == np.float64 and np.all(np.diag(b) == 0.0)
    # float64 on a 5 x 5 matrix with condition number < 30: LAPACK's Cholesky and numpy's LU agree to ~1e-15
    np.testing.assert_allclose(b, direct_ease(X, lam), rtol=1e-10, atol=1e-12)
    # the constrained optimum: (X^T X + lam I) B - X^T X is diagonal (the Lagrange multipliers of diag(B) = 0)
    g = X.T @ X
    kkt = (g + lam * np.eye(5)) @ b - g
    np.testing.assert_allclose(kkt - np.diag(np.diag(kkt)), 0.0, atol=1e-10)


def test_weights_count_each_pair_once_and_refuse_a_non_positive_lam():
    dup = sp.csr_matrix((np.full(3, 2.0), ([0, 0, 1], [0, 1, 1])), shape=(2, 2))
    np.testing.assert_allclose(ease_weights(dup, 1.0), direct_ease(np.array([[1.0, 1.0], [0.0, 1.0]]), 1.0),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="lam must be > 0"):
        ease_weights(sp.csr_matrix(X), 0.0)


def test_scorer_ranks_the_planted_item_groups():
    # items 0-3 form one group, 4-7 another: every user holds 3 of its group's 4 items
    rows = [[g * 4 + k for k in range(4) if k != skip] for g in (0, 1) for skip in range(4) for _ in range(3)]
    users = np.repeat(np.arange(len(rows)), 3)
    train = sp.csr_matrix((np.ones(users.size), (users, np.concatenate(rows))), shape=(len(rows), 8))
    peer = EASEPeer(lam=1.0, num_threads=1)
    assert peer.partial_fit_epoch(train) > 0
    scores = peer.scorer()(np.array([0, 12])).numpy()  # user 0 lacks item 0, user 12 lacks item 4
    assert scores.shape == (2, 8) and scores.dtype == np.float32
    assert int(np.argmax(np.where(train[0].toarray()[0] > 0, -np.inf, scores[0]))) == 0
    assert int(np.argmax(np.where(train[12].toarray()[0] > 0, -np.inf, scores[1]))) == 4
    assert scores[0, :4].min() > scores[0, 4:].max() and scores[1, 4:].min() > scores[1, :4].max()


def test_skip_rule_states_the_reason_without_allocating(monkeypatch):
    assert EASEPeer.skip_reason(sp.csr_matrix((3, 1000)), budget=20 * 1000**2) is None  # exactly the need
    reason = EASEPeer.skip_reason(sp.csr_matrix((3, 1001)), budget=20 * 1000**2)
    assert reason.startswith("EASE needs ~0.0 GiB for the 1,001 x 1,001 float64 item-item inverse (2.5 x n_items^2")
    huge = sp.csr_matrix((1, 2_000_000))  # 80 TB at 20 bytes a cell
    tracemalloc.start()
    reason = EASEPeer.skip_reason(huge)
    peer = EASEPeer(lam=10.0)
    with pytest.raises(MemoryError, match="EASE needs ~74505.8 GiB for the 2,000,000 x 2,000,000"):
        peer.partial_fit_epoch(huge)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "25% of this machine's RAM" in reason and peak < 1_000_000
    monkeypatch.setattr(ease, "memory_budget", lambda: 0)
    assert "over its budget of 0.0 GiB" in EASEPeer.skip_reason(sp.csr_matrix(X))


def test_ease_through_the_peer_loop_beats_popularity():
    split = ratio_split(generate(preset="small", seed=0), (0.6, 0.2, 0.2), seed=0)
    out = run_peer(make_peer("ease", {"lam": 10.0}, num_threads=1), split, max_epochs=1, patience=1)
    pop = run_peer(make_peer("popularity"), split, max_epochs=1, patience=1)
    assert out["epochs_run"] == 1 and out["best_epoch"] == 1 and out["params"] == {"lam": 10.0, "num_threads": 1}
    assert out["test"]["recall@50"] > pop["test"]["recall@50"]


def test_scorer_is_the_dense_product_of_the_train_rows_and_the_weights():
    rng = np.random.default_rng(0)
    train = sp.random(40, 30, density=0.1, format="csr", random_state=1)  # random non-zeros: each counts as 1
    weights = rng.standard_normal((30, 30))
    users = np.array([3, 0, 39, 3, 17])
    scores = ease.EASEScorer(train, weights)(users)
    dense = (train.toarray() > 0).astype(np.float64)[users] @ weights
    assert scores.dtype == torch.float32 and tuple(scores.shape) == (5, 30)
    # weights rounded to float32 (relative 6e-8) and summed over ~3 items a row: errors ~1e-6, well under 1e-5
    np.testing.assert_allclose(scores.numpy(), dense, rtol=0, atol=1e-5)
    assert np.all(scores.numpy()[train[users].getnnz(axis=1) == 0] == 0.0)
