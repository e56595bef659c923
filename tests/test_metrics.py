"""Tests of metricrec.metrics: every metric against a slow per-user reference and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.data.interactions import Interactions
from metricrec.metrics import embedding_scorer, evaluate, evaluate_part
from metricrec.data.splits import ratio_split

ALL = ("recall", "precision", "ndcg", "hitrate", "map", "mrr", "auc")


# ---------------------------------------------------------------------- slow reference
def reference(scores: np.ndarray, target: sp.csr_matrix, exclude: sp.csr_matrix | None, ks) -> dict[str, float]:
    """Per-user loops over Python lists; ranking = sort by (-score, item index)."""
    n_users, n_items = scores.shape
    sums: dict[str, float] = {}
    n_eval = 0
    auc_sum, auc_n = 0.0, 0
    for u in range(n_users):
        t = set(target[u].indices.tolist())
        if not t:
            continue
        n_eval += 1
        ex = set() if exclude is None else set(exclude[u].indices.tolist())
        s = [float(x) for x in scores[u]]
        cand = [i for i in range(n_items) if i not in ex]
        ranking = sorted(cand, key=lambda i: (-s[i], i))
        for k in ks:
            top = ranking[:k]
            hit_ranks = [r for r, i in enumerate(top) if i in t]
            h = len(hit_ranks)
            dcg = sum(1.0 / math.log2(r + 2) for r in hit_ranks)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(t))))
            ap = sum((j + 1) / (r + 1) for j, r in enumerate(hit_ranks)) / min(k, len(t))
            for name, v in (
                ("recall", h / len(t)),
                ("precision", h / k),
                ("ndcg", dcg / idcg),
                ("hitrate", 1.0 if h else 0.0),
                ("map", ap),
            ):
                sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + v
        first = next(r for r, i in enumerate(ranking) if i in t)
        sums["mrr"] = sums.get("mrr", 0.0) + 1.0 / (first + 1)
        neg = [i for i in cand if i not in t]
        if neg:
            good = 0.0
            for a in t:
                for n in neg:
                    good += 1.0 if s[a] > s[n] else (0.5 if s[a] == s[n] else 0.0)
            auc_sum += good / (len(t) * len(neg))
            auc_n += 1
    out = {k: v / n_eval for k, v in sums.items()}
    out["auc"] = auc_sum / auc_n
    out["n_users"] = n_eval
    return out


def random_problem(seed: int, n_users=37, n_items=29, tied=False):
    rng = np.random.default_rng(seed)
    if tied:  # few distinct values: many ties everywhere
        scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    code = rng.choice(3, size=(n_users, n_items), p=[0.6, 0.25, 0.15])  # 0 none, 1 exclude, 2 target
    code[3] = np.where(code[3] == 2, 0, code[3])  # a user without targets
    code[4] = 2  # a user whose candidates are all targets (no AUC pair)
    code[5, :] = 1
    code[5, 0] = 2  # a single candidate, which is the target
    target = sp.csr_matrix((code == 2).astype(np.float32))
    exclude = sp.csr_matrix((code == 1).astype(np.float32))
    return scores, target, exclude


def table_scorer(scores: np.ndarray):
    t = torch.from_numpy(scores)
    return lambda users: t[torch.from_numpy(np.asarray(users))]


def assert_same(got: dict, ref: dict):
    assert set(got) == set(ref)
    assert got["n_users"] == ref["n_users"]
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tied", [False, True])
def test_all_metrics_match_slow_reference(seed, tied):
    scores, target, exclude = random_problem(seed, tied=tied)
    ks = (1, 3, 10, 40)  # 40 > n_items: precision still divides by K
    got = evaluate(table_scorer(scores), target, exclude, ks=ks, metrics=ALL, batch_size=8)
    assert_same(got, reference(scores, target, exclude, ks))


def test_no_exclusion_and_default_batch_match_reference():
    scores, target, _ = random_problem(7)
    got = evaluate(table_scorer(scores), target, None, ks=(5, 20), metrics=ALL)
    assert_same(got, reference(scores, target, None, (5, 20)))


def test_global_metrics_without_cutoffs():
    scores, target, exclude = random_problem(5, tied=True)
    got = evaluate(table_scorer(scores), target, exclude, ks=(), metrics=("mrr", "auc"))
    ref = reference(scores, target, exclude, ())
    assert set(got) == {"mrr", "auc", "n_users"}
    for k in got:
        assert got[k] == pytest.approx(ref[k], rel=1e-12), k
    with pytest.raises(ValueError, match="need at least one K"):
        evaluate(table_scorer(scores), target, exclude, ks=(), metrics=("recall",))


def test_hand_worked_example():
    # scores of items 0..5: .9 .8 .7 .6 .5 .4; item 1 excluded; targets {2, 5}
    # ranking of candidates: 0, 2, 3, 4, 5 -> hits at ranks 1 and 4 (0-based)
    # K=2: hits 1 -> recall 1/2, precision 1/2, hitrate 1,
    #      ndcg = (1/log2 3) / (1 + 1/log2 3) = 0.630930/1.630930 = 0.386853,
    #      map = (precision@2 = 1/2) / min(2, 2) = 0.25
    # K=5: hits 2 -> recall 1, precision 2/5,
    #      ndcg = (1/log2 3 + 1/log2 6) / (1 + 1/log2 3) = 1.017783/1.630930 = 0.624051,
    #      map = (1/2 + 2/5) / 2 = 0.45
    # mrr = 1/2; auc: negatives {0, 3, 4}; item 2 beats 3 and 4, item 5 beats none -> 2/6
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]], dtype=np.float32)
    target = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 1]], dtype=np.float32))
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 0]], dtype=np.float32))
    r = evaluate(table_scorer(scores), target, exclude, ks=(2, 5), metrics=ALL)
    expected = {
        "recall@2": 0.5, "precision@2": 0.5, "hitrate@2": 1.0, "ndcg@2": 0.386853, "map@2": 0.25,
        "recall@5": 1.0, "precision@5": 0.4, "hitrate@5": 1.0, "ndcg@5": 0.624051, "map@5": 0.45,
        "mrr": 0.5, "auc": 1 / 3, "n_users": 1,
    }
    assert set(r) == set(expected)
    for k, v in expected.items():
        assert r[k] == pytest.approx(v, abs=1e-6), k


def test_ties_auc_half_and_index_order():
    # scores 1 1 0 1. Target {0}: vs item 1 tie (1/2), vs 2 win (1), vs 3 tie (1/2) -> auc 2/3;
    # ties are ordered by item index, so item 0 ranks first -> mrr 1, precision@1 = 1.
    # Target {3}: ranking 0, 1, 3, 2 -> mrr 1/3, precision@1 = 0, auc again 2/3.
    scores = np.array([[1, 1, 0, 1], [1, 1, 0, 1]], dtype=np.float32)
    target = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    s = table_scorer(scores)
    r0 = evaluate(s, target, ks=(1,), metrics=ALL, users=np.array([0]))
    r1 = evaluate(s, target, ks=(1,), metrics=ALL, users=np.array([1]))
    assert r0["auc"] == pytest.approx(2 / 3) and r1["auc"] == pytest.approx(2 / 3)
    assert r0["mrr"] == 1.0 and r1["mrr"] == pytest.approx(1 / 3)
    assert r0["precision@1"] == 1.0 and r1["precision@1"] == 0.0
    # all scores equal -> auc exactly 1/2
    flat = evaluate(table_scorer(np.zeros((2, 4), np.float32)), target, ks=(1,), metrics=("auc",))
    assert flat["auc"] == 0.5


def test_users_without_targets_are_ignored_and_users_filter():
    scores, target, exclude = random_problem(3)
    s = table_scorer(scores)
    full = evaluate(s, target, exclude, ks=(5,), metrics=ALL)
    has = np.flatnonzero(np.diff(target.indptr) > 0)
    assert full["n_users"] == len(has) < target.shape[0]
    # adding users without targets changes nothing
    sub = evaluate(s, target, exclude, ks=(5,), metrics=ALL, users=np.arange(target.shape[0]))
    assert sub == full
    # a restriction to some users = reference on those rows only
    pick = has[::3]
    mask = sp.diags(np.isin(np.arange(target.shape[0]), pick).astype(np.float32))
    part = evaluate(s, target, exclude, ks=(5,), metrics=ALL, users=pick)
    assert_same(part, reference(scores, sp.csr_matrix(mask @ target), exclude, (5,)))


def test_batch_size_does_not_change_results():
    scores, target, exclude = random_problem(4)
    s = table_scorer(scores)
    a = evaluate(s, target, exclude, ks=(3, 7), batch_size=1)
    b = evaluate(s, target, exclude, ks=(3, 7), batch_size=1000)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12)


def test_errors():
    scores, target, exclude = random_problem(0)
    s = table_scorer(scores)
    with pytest.raises(ValueError, match="both target and excluded"):
        evaluate(s, target, exclude + target)
    with pytest.raises(ValueError, match="exclude has shape"):
        evaluate(s, target, exclude[:, :-1])
    with pytest.raises(ValueError, match="scorer returned shape"):
        evaluate(lambda u: torch.zeros(len(u), 3), target)
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate(lambda u: torch.full((len(u), target.shape[1]), float("nan")), target)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(s, target, metrics=("recall", "f1"))
    with pytest.raises(ValueError, match="ks must be positive"):
        evaluate(s, target, ks=(0, 5))
    with pytest.raises(ValueError, match="users contains"):
        evaluate(s, target, users=np.array([0, 10_000]))


def test_embedding_scorer_matches_explicit_distances():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(9, 5, generator=g), torch.randn(13, 5, generator=g)
    users = np.array([4, 0, 8])
    d = embedding_scorer(u, v)(users)
    expected = -((u[users][:, None, :] - v[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(d, expected, atol=1e-5)
    dot = embedding_scorer(u.numpy(), v.numpy(), kind="dot")(users)
    assert torch.allclose(dot, u[users] @ v.T, atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        embedding_scorer(u, v, kind="cosine")
    with pytest.raises(ValueError, match="same width"):
        embedding_scorer(u, v[:, :3])


def test_evaluate_part_uses_protocol_exclusions():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    m = rng.random((n_users, n_items)) < 0.4
    users, items = np.nonzero(m)
    data = Interactions.from_arrays(users, items, user_ids=np.arange(n_users), item_ids=np.arange(n_items))
    split = ratio_split(data, seed=1)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    s = table_scorer(scores)
    valid = evaluate_part(s, split, "valid", ks=(5,))
    assert_same(valid, reference(scores, split.valid.matrix, split.train.matrix, (5,)))
    test = evaluate_part(s, split, "test", ks=(5,))
    excl = sp.csr_matrix(split.train.matrix + split.valid.matrix)
    assert_same(test, reference(scores, split.test.matrix, excl, (5,)))
    with pytest.raises(ValueError, match="part"):
        evaluate_part(s, split, "train")
