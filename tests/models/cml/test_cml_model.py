"""Behaviour of the CML estimator: it learns planted structure, and its API keeps its promises.

Scores are checked against numpy distances computed here, retrieval against brute force, and the
learning test against a popularity baseline on synthetic data with known clusters.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML, CMLConfig, Interactions
from metricrec.metrics import embedding_scorer, evaluate
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from tolerances import assert_rankings_agree, assert_top_k_of

FAST = dict(factors=16, batch_size=256, num_threads=1, show_progress=False, verbose=False)


def _np_scores(q, cand):
    """-Euclidean distance of every query row to every candidate row, float64, by definition."""
    q = np.asarray(q, np.float64)
    cand = np.asarray(cand, np.float64)
    return -np.sqrt(((q[:, None, :] - cand[None, :, :]) ** 2).sum(2))


def _popularity_scorer(train: sp.csr_matrix):
    counts = np.asarray(train.sum(0), dtype=np.float32).ravel()
    return lambda users: torch.from_numpy(np.tile(counts, (len(users), 1)))


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def clustered():
    """400 users x 200 items in 8 planted clusters (90% of draws in-cluster, mild popularity skew).

    The ``small`` preset is dominated by its Zipf-1.3 popularity (a cluster oracle only reaches
    test Recall@10 0.57 there, popularity 0.40), so the clusters are made the main signal here.
    """
    data = generate(400, 200, 8000, n_clusters=8, seed=0, popularity_exponent=0.5,
                    cluster_affinity=0.9, with_item_features=False)
    return data, ratio_split(data, seed=0)


@pytest.fixture(scope="module")
def clustered_model(clustered):
    _, split = clustered
    return CML(epochs=30, patience=5, seed=0, eval_every=1, **FAST).fit(split.train, split.valid)


@pytest.fixture(scope="module")
def small():
    return generate(preset="small", seed=0)


@pytest.fixture(scope="module")
def model(small):
    """A briefly trained model on the small preset (fitted on Interactions)."""
    return CML(factors=8, epochs=3, batch_size=512, seed=0, show_progress=False, verbose=False).fit(small)


# ---------------------------------------------------------------------- learning
def test_learns_planted_clusters_far_above_popularity(clustered, clustered_model):
    data, split = clustered
    exclude = split.train.matrix + split.valid.matrix
    m = clustered_model
    cml = evaluate(embedding_scorer(m.user_embeddings, m.item_embeddings), split.test.matrix, exclude,
                   ks=(10,), metrics=("recall",))["recall@10"]
    pop = evaluate(_popularity_scorer(split.train.matrix), split.test.matrix, exclude,
                   ks=(10,), metrics=("recall",))["recall@10"]
    # measured with these seeds: CML 0.32, popularity 0.135 (a cluster oracle: 0.49)
    assert cml >= 2.0 * pop
    assert cml - pop >= 0.12
    # and what it recommends is mostly the user's own cluster (measured 0.59; 8 clusters: 1/8 by chance)
    ids, _ = m.recommend(np.arange(data.n_users), exclude, N=10)
    same = data.meta["item_cluster"][ids] == data.meta["user_cluster"][:, None]
    assert same.mean() >= 0.5


def test_early_stopping_ran_on_valid(clustered_model):
    """The default adaptive budget stops at the first epoch after the decay that does not improve
    (patience is for the other schedules: tests/training/test_trainer.py)."""
    h = clustered_model.history
    r50 = [e.valid["recall@50"] for e in h.epochs]
    assert h.best_epoch == int(np.argmax(r50)) + 1
    assert h.stopped_early and len(h.epochs) == h.best_epoch + 1 > h.budget["end_epoch"]


# ---------------------------------------------------------------------- determinism
def test_same_seed_bit_identical_different_seed_differs(small):
    split = ratio_split(small, seed=0)

    def run(seed):
        m = CML(factors=8, epochs=3, batch_size=256, seed=seed, show_progress=False, verbose=False)
        return m.fit(split.train, split.valid)

    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a.user_embeddings, b.user_embeddings)
    assert np.array_equal(a.item_embeddings, b.item_embeddings)
    assert [e.loss for e in a.history.epochs] == [e.loss for e in b.history.epochs]
    assert not np.array_equal(a.user_embeddings, c.user_embeddings)
    assert not np.allclose(a.item_embeddings, c.item_embeddings)


# ---------------------------------------------------------------------- unit ball
def test_rows_stay_inside_the_ball(small):
    m = CML(factors=8, epochs=3, batch_size=256, max_norm=0.5, init_std=1.0, learning_rate=0.5,
            show_progress=False, verbose=False).fit(small)
    for emb in (m.user_embeddings, m.item_embeddings):
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        assert norms.max() <= 0.5 + 1e-6
        assert norms.max() > 0.49  # the bound binds (init_std=1 starts far outside it)


def test_max_norm_none_allows_larger_rows(small):
    m = CML(factors=8, epochs=3, batch_size=256, max_norm=None, init_std=1.0, learning_rate=0.5,
            show_progress=False, verbose=False).fit(small)
    assert np.linalg.norm(m.item_embeddings, axis=1).max() > 1.5


# ---------------------------------------------------------------------- recommend
def test_recommend_shapes(model, small):
    ui = small.matrix
    ids, scores = model.recommend(3, ui[3], N=7)
    assert ids.shape == scores.shape == (7,)
    assert ids.dtype == np.int32 and scores.dtype == np.float32  # id_dtype's default: implicit's C ints
    ids2, scores2 = model.recommend(np.array([3, 5]), ui[[3, 5]], N=7)
    assert ids2.shape == scores2.shape == (2, 7)
    assert_rankings_agree(ids2[0], scores2[0], ids, scores)  # two users (GEMM) vs one (GEMV): rounding apart
    ids3, _ = model.recommend([3], ui[3], N=7)  # a list is an array, not a scalar
    assert ids3.shape == (1, 7)
    ids4, _ = model.recommend(np.int64(3), ui[3], N=7)
    assert ids4.shape == (7,)


def test_recommend_scores_are_negative_euclidean_distances(model, small):
    users = np.arange(0, 300, 7)
    ids, scores = model.recommend(users, small.matrix[users], N=15)
    ref = _np_scores(model.user_embeddings[users], model.item_embeddings)
    ref[small.matrix[users].toarray() > 0] = -np.inf
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), rtol=0, atol=1e-5)
    # they are the 15 best: nothing left out scores above the last one returned
    rest = ref.copy()
    np.put_along_axis(rest, ids, -np.inf, 1)
    assert np.all(rest.max(1) <= scores[:, -1] + 1e-5)


def test_filter_already_liked_items(model, small):
    users = np.arange(300)
    rows = small.matrix[users]
    ids, _ = model.recommend(users, rows, N=20)
    liked = rows.toarray() > 0
    assert not np.take_along_axis(liked, ids, 1).any()
    # without the filter a trained model puts train items on top
    ids_all, _ = model.recommend(users, None, N=20, filter_already_liked_items=False)
    assert np.take_along_axis(liked, ids_all, 1).mean() > 0.1


def test_filter_ignores_stored_zeros(model):
    # a stored 0 is not an interaction (fit ignores it too), so it must not be filtered
    ids_all, _ = model.recommend(0, None, N=3, filter_already_liked_items=False)
    row = sp.csr_matrix((np.array([0.0, 1.0]), np.array([ids_all[0], ids_all[1]]), np.array([0, 2])), shape=(1, 200))
    ids, _ = model.recommend(0, row, N=2)
    assert ids.tolist() == [ids_all[0], ids_all[2]]


def test_filter_items_and_items_restrict_candidates(model, small):
    rows = small.matrix[:50]
    banned = np.arange(0, 200, 2)
    ids, _ = model.recommend(np.arange(50), rows, N=10, filter_items=banned)
    assert not np.isin(ids, banned).any()
    allowed = np.array([1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121, 144, 169, 196])
    ids, scores = model.recommend(np.arange(50), None, N=5, items=allowed, filter_already_liked_items=False)
    assert np.isin(ids, allowed).all()
    ref = _np_scores(model.user_embeddings[:50], model.item_embeddings[allowed])
    full = np.full((50, 200), -np.inf)
    full[:, allowed] = ref
    assert_top_k_of(ids, full)  # float32 kernels against a float64 reference: ties within rounding
    np.testing.assert_allclose(scores, -np.sort(-ref, axis=1)[:, :5], atol=1e-5)


def test_n_larger_than_candidates_is_padded(model, small):
    ids, scores = model.recommend(0, None, N=5, items=[3, 5, 7], filter_already_liked_items=False)
    assert ids.shape == (5,)
    assert sorted(ids[:3].tolist()) == [3, 5, 7]
    assert ids[3:].tolist() == [-1, -1] and np.isneginf(scores[3:]).all() and np.isfinite(scores[:3]).all()
    # N above the catalogue size: still N columns, one per candidate then padding
    row = small.matrix[0]
    ids, scores = model.recommend(0, row, N=250)
    n_cand = 200 - row.nnz
    assert ids.shape == (250,)
    assert sorted(ids[:n_cand].tolist()) == sorted(set(range(200)) - set(row.indices.tolist()))
    assert (ids[n_cand:] == -1).all() and np.isneginf(scores[n_cand:]).all()


def test_recommend_with_recalculate_user_uses_the_folded_in_vector(model, small):
    row = small.matrix[10]
    ids, scores = model.recommend(10, row, N=5, recalculate_user=True)
    vec = model.recalculate_user(row)
    ref = _np_scores(vec[None], model.item_embeddings)[0]
    ref[row.indices] = -np.inf
    assert_top_k_of(ids, ref)
    np.testing.assert_allclose(scores, ref[ids], atol=1e-5)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda m, ui: m.recommend(300, ui[0]), IndexError, "unknown user index 300"),
        (lambda m, ui: m.recommend(-1, ui[0]), IndexError, "unknown user index -1"),
        (lambda m, ui: m.recommend(0, ui[0], N=0), ValueError, "N must be"),
        (lambda m, ui: m.recommend(0, ui[0], N=-3), ValueError, "N must be"),
        (lambda m, ui: m.recommend(0, ui[0], N=2.5), ValueError, "N must be"),
        (lambda m, ui: m.recommend(0, ui[0], N=True), ValueError, "N must be"),
        (lambda m, ui: m.recommend(0, ui[:2]), ValueError, "user_items must have shape"),
        (lambda m, ui: m.recommend([0, 1], ui[0]), ValueError, "user_items must have shape"),
        (lambda m, ui: m.recommend(0, ui[0][:, :100]), ValueError, "user_items must have shape"),
        (lambda m, ui: m.recommend(0, ui[0].toarray()), TypeError, "scipy sparse"),
        (lambda m, ui: m.recommend(0, None), ValueError, "user_items is required"),
        (lambda m, ui: m.recommend(1.0, ui[0]), TypeError, "integer user indices"),
        (lambda m, ui: m.recommend(np.array(["a"]), ui[0]), TypeError, "integer user indices"),
        (lambda m, ui: m.recommend(np.array([[0, 1]]), ui[:2]), ValueError, "1-D"),
        (lambda m, ui: m.recommend(0, ui[0], filter_items=[1.5]), TypeError, "filter_items"),
        (lambda m, ui: m.recommend(0, ui[0], filter_items=[200]), IndexError, "filter_items"),
        (lambda m, ui: m.recommend(0, ui[0], items=[-1]), IndexError, "items"),
        (lambda m, ui: m.similar_items(200), IndexError, "unknown item index 200"),
        (lambda m, ui: m.similar_users(0.5), TypeError, "integer"),
        (lambda m, ui: m.similar_users(0, N=0), ValueError, "N must be"),
    ],
)
def test_bad_retrieval_input_is_refused(model, small, call, exc, words):
    with pytest.raises(exc, match=words):
        call(model, small.matrix)


def test_unfitted_model_refuses_retrieval():
    m = CML(factors=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.recommend(0, None, filter_already_liked_items=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.user_embeddings


# ---------------------------------------------------------------------- similar items / users
@pytest.mark.parametrize("what", ["item", "user"])
def test_similar_is_brute_force_nearest_neighbours(model, what):
    table = model.item_embeddings if what == "item" else model.user_embeddings
    similar = model.similar_items if what == "item" else model.similar_users
    q = np.arange(0, table.shape[0], 5)
    ids, scores = similar(q, N=8)
    assert ids.shape == scores.shape == (q.size, 8)
    ref = _np_scores(table[q], table)
    assert_top_k_of(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), atol=1e-5)
    # the query itself is in its list at distance exactly 0 (the distance of a returned pair is
    # recomputed from the difference of the rows, which is exactly zero), and first up to rounding
    assert ((ids == q[:, None]) & (scores == 0.0)).any(axis=1).all()
    np.testing.assert_allclose(scores[:, 0], 0.0, atol=1e-5)
    one, one_s = similar(int(q[1]), N=8)  # one query (a GEMV) against many (a GEMM): rounding apart
    assert one.shape == (8,)
    assert_rankings_agree(one, one_s, ids[1], scores[1])


def test_similar_items_filter_and_restrict(model):
    ids, _ = model.similar_items(4, N=5, filter_items=[4])
    assert 4 not in ids.tolist()
    ids, _ = model.similar_items(4, N=3, items=[10, 11])
    assert sorted(ids[:2].tolist()) == [10, 11] and ids[2] == -1
    ids, _ = model.similar_users(4, N=3, users=[4, 7], filter_users=[7])
    assert ids.tolist() == [4, -1, -1]


# ---------------------------------------------------------------------- fold-in
def test_recalculate_user_finds_the_users_cluster(clustered):
    data, _ = clustered
    rng = np.random.default_rng(0)
    held = rng.choice(data.n_users, size=30, replace=False)
    m = data.matrix.tolil(copy=True)
    m[held] = 0  # the held-out users are unseen in training
    model = CML(epochs=15, seed=0, **FAST).fit(sp.csr_matrix(m))
    uc, ic = data.meta["user_cluster"], data.meta["item_cluster"]
    in_cluster, recall, chance = [], [], []
    for u in held:
        items = data.matrix[u].indices
        perm = rng.permutation(items)
        liked, hidden = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        vec = model.recalculate_user(liked)
        assert vec.shape == (16,) and np.linalg.norm(vec) <= 1 + 1e-6
        score = _np_scores(vec[None], model.item_embeddings)[0]
        score[liked] = -np.inf
        top = np.argsort(-score, kind="stable")[:10]
        in_cluster.append(np.mean(ic[top] == uc[u]))
        recall.append(np.isin(hidden, top).mean())
        chance.append(10 / (data.n_items - len(liked)))
    # 8 clusters: 1/8 of random items are in-cluster; a random top-10 recalls ~5% of held-out items
    assert np.mean(in_cluster) >= 0.7
    assert np.mean(recall) >= 4 * np.mean(chance)


def test_recalculate_user_input_checks_and_determinism(model):
    a = model.recalculate_user([1, 2, 3])
    b = model.recalculate_user(sp.csr_matrix(([1.0, 1.0, 1.0], [1, 2, 3], [0, 3]), shape=(1, 200)))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="empty"):
        model.recalculate_user([])
    with pytest.raises(ValueError, match="empty"):
        model.recalculate_user(sp.csr_matrix((1, 200)))
    with pytest.raises(ValueError, match="every item"):
        model.recalculate_user(np.arange(200))
    with pytest.raises(ValueError, match="1 x 200"):
        model.recalculate_user(sp.csr_matrix((2, 200)))
    with pytest.raises(IndexError, match="liked_items"):
        model.recalculate_user([5, 200])
    with pytest.raises(TypeError, match="liked_items"):
        model.recalculate_user([0.5])


# ---------------------------------------------------------------------- fit input
def _m(rows, cols, vals, shape=(3, 4)):
    return sp.csr_matrix((np.asarray(vals, float), (rows, cols)), shape=shape)


GOOD = _m([0, 1, 2], [0, 1, 2], [1, 1, 1])


@pytest.mark.parametrize(
    "train, valid, exc, words",
    [
        (_m([0, 1], [0, 1], [1.0, np.nan]), None, ValueError, "NaN"),
        (_m([0, 1], [0, 1], [1.0, np.inf]), None, ValueError, "infinite"),
        (_m([0, 1], [0, 1], [1.0, -2.0]), None, ValueError, "negative"),
        (sp.csr_matrix((3, 4)), None, ValueError, "no positive"),
        (sp.csr_matrix((0, 0)), None, ValueError, "no positive"),
        (_m([0, 1], [0, 1], [0.0, 0.0]), None, ValueError, "no positive"),
        (GOOD, _m([0], [3], [1], shape=(3, 5)), ValueError, "valid has shape"),
        (GOOD, _m([0, 1], [3, 1], [1, 1]), ValueError, "shares 1"),
        (GOOD, sp.csr_matrix((3, 4)), ValueError, "valid has no positive"),
        (GOOD, _m([0], [3], [np.nan]), ValueError, "valid contains NaN"),
        (GOOD.toarray(), None, TypeError, "scipy sparse"),
        ([[1, 0], [0, 1]], None, TypeError, "scipy sparse"),
        (GOOD, GOOD.toarray(), TypeError, "valid must be"),
    ],
)
def test_fit_refuses_bad_input(train, valid, exc, words):
    with pytest.raises(exc, match=words):
        CML(factors=4, epochs=1, show_progress=False, verbose=False).fit(train, valid)


def test_fit_does_not_modify_the_callers_matrix():
    # regression: the clean-up (drop zeros, sort) used to run in place on a float64 CSR argument
    x = sp.csr_matrix((np.array([1.0, 0.0, 1.0, 1.0]), np.array([3, 1, 0, 2]), np.array([0, 2, 4])), shape=(2, 5))
    data, indices, indptr = x.data.copy(), x.indices.copy(), x.indptr.copy()
    CML(factors=4, epochs=1, show_progress=False, verbose=False).fit(x)
    assert np.array_equal(x.data, data) and np.array_equal(x.indices, indices) and np.array_equal(x.indptr, indptr)


def test_fit_accepts_sparse_formats_and_ignores_weights_and_zeros():
    coo = sp.coo_matrix(([2.0, 5.0, 0.0, 1.0], ([0, 1, 1, 2], [0, 1, 2, 3])), shape=(3, 5))
    a = CML(factors=4, epochs=2, seed=3, show_progress=False, verbose=False).fit(coo)
    b = CML(factors=4, epochs=2, seed=3, show_progress=False, verbose=False).fit(
        sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 1, 2], [0, 1, 3])), shape=(3, 5)))
    assert np.array_equal(a.user_embeddings, b.user_embeddings)
    assert a.user_embeddings.shape == (3, 4) and a.item_embeddings.shape == (5, 4)


def test_fit_on_interactions_keeps_ids_and_plain_refit_clears_them():
    data = Interactions.from_arrays(["ann", "bob", "bob", "cy"], ["x", "y", "z", "x"])
    m = CML(factors=4, epochs=2, show_progress=False, verbose=False).fit(data)
    assert m.user_ids.tolist() == ["ann", "bob", "cy"]
    assert m.item_ids.tolist() == ["x", "y", "z"]
    # regression: ids of an earlier fit used to survive a refit on a plain matrix of another shape
    m.fit(sp.csr_matrix(np.eye(4, 6)))
    assert m.user_ids is None and m.item_ids is None
    assert m.user_embeddings.shape == (4, 4)


def test_constructor_overrides_and_checks():
    base = CMLConfig(factors=12, margin=0.5)
    m = CML(base, margin=1.0, show_progress=False)
    assert m.config == CMLConfig(factors=12, margin=1.0)
    assert base.margin == 0.5
    with pytest.raises(ValueError, match="margin"):
        CML(margin=-1.0)
    with pytest.raises(ValueError, match="num_threads"):
        CML(num_threads=0)
    with pytest.raises(TypeError, match="fctors"):
        CML(fctors=3)
    assert "margin=1.0" in repr(m) and "factors=12" in repr(m)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("factors", 0), ("factors", 2.0), ("factors", True), ("n_negatives", -1), ("batch_size", 0),
        ("negative_group", 0), ("epochs", 0), ("patience", -1), ("patience", 1.5), ("seed", -1),
        ("seed", "0"), ("margin", 0.0), ("margin", float("nan")), ("margin", "1"),
        ("learning_rate", 0), ("learning_rate", float("inf")), ("cov_weight", -0.1),
        ("cov_weight", float("nan")), ("cov_formula", "nope"), ("max_norm", 0.0), ("max_norm", float("nan")),
        ("optimizer", "sgd"), ("sampler", "zipf"), ("sampler_alpha", float("nan")), ("init_std", 0.0),
        ("use_rank_weight", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CMLConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        CMLConfig().replace(**{field: value})


def test_config_dict_round_trip_and_unknown_keys():
    cfg = CMLConfig(factors=7, max_norm=None, init_std=0.3, cov_formula="offdiag", seed=9)
    d = cfg.to_dict()
    assert d["factors"] == 7 and d["max_norm"] is None
    assert CMLConfig.from_dict(d) == cfg
    import json

    assert CMLConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown CMLConfig keys: bogus"):
        CMLConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="factors"):
        CMLConfig.from_dict({**d, "factors": -3})
    with pytest.raises(Exception):
        cfg.factors = 3  # frozen
