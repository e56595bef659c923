import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.data.interactions import Interactions
from metricrec.data.synthetic import PRESETS, generate


def _rows(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def _in_cluster_fraction(d: Interactions) -> float:
    m = d.matrix
    return float(np.mean(d.meta["user_cluster"][_rows(m)] == d.meta["item_cluster"][m.indices]))


def _top_share(m: sp.csr_matrix, frac: float = 0.1) -> float:
    pop = np.sort(np.asarray(m.sum(axis=0)).ravel())[::-1]
    return float(pop[: int(len(pop) * frac)].sum() / pop.sum())


def test_small_preset_shape_count_and_no_duplicates():
    d = generate(preset="small")
    assert isinstance(d, Interactions)
    assert d.shape == (300, 200)
    assert d.nnz == 3_000 and d.meta["shortfall"] == 0
    m = d.matrix
    assert m.has_canonical_format
    np.testing.assert_array_equal(m.data, 1.0)
    keys = _rows(m) * m.shape[1] + m.indices
    assert len(np.unique(keys)) == m.nnz  # no duplicate (user, item) pair
    counts = np.diff(m.indptr)
    assert counts.min() >= 5 and counts.max() <= 100  # min per user, at most half the catalogue
    np.testing.assert_array_equal(counts, d.meta["user_target"])
    np.testing.assert_array_equal(d.user_ids, np.arange(300))
    assert d.meta["user_cluster"].shape == (300,) and d.meta["item_cluster"].shape == (200,)


def test_ml1m_preset_matches_movielens_shape():
    d = generate(preset="ml-1m", with_item_features=False)
    assert d.shape == (6_040, 3_706)
    assert abs(d.nnz - 1_000_209) <= 10_002  # within 1% (exact by construction)
    assert d.nnz == 1_000_209
    assert np.diff(d.matrix.indptr).min() >= 20
    assert _top_share(d.matrix) > 0.40  # heavy-tailed popularity
    assert d.item_features is None


def test_explicit_sizes_override_preset_and_are_required_without_one():
    d = generate(250, preset="small")
    assert d.shape == (250, 200) and d.nnz == 3_000
    with pytest.raises(ValueError, match="n_items is required"):
        generate(n_users=10, n_interactions=100)


def test_deterministic_given_seed():
    a, b, c = generate(preset="small", seed=3), generate(preset="small", seed=3), generate(preset="small", seed=4)
    assert (a.matrix != b.matrix).nnz == 0
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert (a.item_features.matrix != b.item_features.matrix).nnz == 0
    np.testing.assert_array_equal(a.meta["user_cluster"], b.meta["user_cluster"])
    assert (a.matrix != c.matrix).nnz > 0


def test_popularity_is_heavy_tailed_and_exponent_zero_is_flat():
    heavy = generate(preset="small", seed=1)
    flat = generate(preset="small", seed=1, popularity_exponent=0.0)
    assert _top_share(heavy.matrix) > 0.40
    assert _top_share(flat.matrix) < 0.20  # uniform draws: top 10% hold little more than 10%
    # the planted weights drive the counts: the 10 heaviest items are far above the median item
    pop = np.asarray(heavy.matrix.sum(axis=0)).ravel()
    top = np.argsort(-heavy.meta["item_weight"])[:10]
    assert pop[top].mean() > 5 * np.median(pop)


def test_users_interact_mostly_within_their_cluster():
    # clusters of 200 items and ~10 items per user, so quotas are never capped
    kw = dict(n_users=500, n_items=1_000, n_interactions=5_000, n_clusters=5, seed=2)
    for a in (0.0, 0.6, 0.9):
        d = generate(cluster_affinity=a, **kw)
        m, uc, ic, w = d.matrix, d.meta["user_cluster"], d.meta["item_cluster"], d.meta["item_weight"]
        share = np.bincount(ic, weights=w) / w.sum()  # planted popularity mass of each cluster
        # upper bound: own-cluster quota + own cluster's share of the catalogue draws (before de-dup)
        upper = np.mean(a + (1 - a) * share[uc[_rows(m)]])
        measured = _in_cluster_fraction(d)
        assert a - 0.02 < measured < upper + 0.02, (a, measured, upper)
        if a == 0.0:
            assert abs(measured - upper) < 0.03  # no quota: in-cluster only by popularity share
    one = generate(cluster_affinity=1.0, **kw)
    m, uc, ic = one.matrix, one.meta["user_cluster"], one.meta["item_cluster"]
    inside = uc[_rows(m)] == ic[m.indices]
    uncapped = one.meta["user_target"][_rows(m)] <= 100  # own quota capped at half a cluster
    assert inside[uncapped].all() and uncapped.mean() > 0.9
    assert inside.mean() > 0.99
    balanced = np.bincount(one.meta["item_cluster"])
    assert balanced.min() == balanced.max() == 200


def test_timestamps_distinct_per_user_and_realistic():
    d = generate(preset="small")
    ts, rows = d.timestamps, _rows(d.matrix)
    assert ts.dtype == np.int64 and ts.shape == (d.nnz,)
    assert len(np.unique(rows * 10**10 + (ts - ts.min()))) == d.nnz  # no two of a user's equal
    assert ts.min() >= 946_684_800 and ts.max() < 946_684_800 + 4 * 365 * 86_400


def test_item_features_one_hot_cluster_plus_own_cluster_tags():
    d = generate(n_users=400, n_items=600, n_interactions=4_000, n_clusters=6, tag_noise=0.2, seed=5)
    f = d.item_features
    ic = d.meta["item_cluster"]
    assert f.matrix.shape == (600, 6 + 6 * 5)
    np.testing.assert_array_equal(f.matrix[:, :6].toarray().argmax(axis=1), ic)
    assert f.matrix[:, :6].sum() == 600
    assert f.names[0] == "cluster=0" and f.names[6] == "tag=0"
    tags = f.matrix[:, 6:].tocoo()
    own = np.mean(tags.col // 5 == ic[tags.row])
    assert 0.75 < own < 0.92  # 1 - noise + noise / K = 0.833


def test_planted_structure_is_learnable():
    d = generate(preset="small", seed=7)
    m = d.matrix.tocoo()
    rng = np.random.default_rng(0)
    held = rng.random(m.nnz) < 0.3
    shape = d.shape
    train = sp.csr_matrix((m.data[~held], (m.row[~held], m.col[~held])), shape=shape)
    test = sp.csr_matrix((m.data[held], (m.row[held], m.col[held])), shape=shape).toarray() > 0
    uc = d.meta["user_cluster"]
    k = int(uc.max()) + 1
    member = sp.csr_matrix((np.ones(shape[0]), (uc, np.arange(shape[0]))), shape=(k, shape[0]))
    cluster_pop = (member @ train).toarray()[uc]  # (n_users, n_items): popularity in own cluster
    global_pop = np.broadcast_to(np.asarray(train.sum(axis=0)), shape)

    def recall_at_10(scores: np.ndarray) -> float:
        s = np.where(train.toarray() > 0, -np.inf, scores + rng.random(shape) * 1e-3)
        top = np.argsort(-s, axis=1)[:, :10]
        hits = np.take_along_axis(test, top, axis=1).sum(axis=1)
        n = test.sum(axis=1)
        return float(np.mean(hits[n > 0] / n[n > 0]))

    r_cluster, r_global = recall_at_10(cluster_pop), recall_at_10(global_pop)
    assert r_cluster > 1.3 * r_global, (r_cluster, r_global)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="ml-2m"), "unknown preset"),
        (dict(preset="small", cluster_affinity=1.5), "cluster_affinity"),
        (dict(preset="small", n_clusters=0), "n_clusters"),
        (dict(preset="small", popularity_exponent=-1.0), "popularity_exponent"),
        (dict(preset="small", n_interactions=100), "n_interactions=100 is outside"),
        (dict(n_users=10, n_items=20, n_interactions=0), "n_interactions must be a positive"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)


def test_presets_table_is_the_documented_shapes():
    assert PRESETS["ml-1m"][:3] == (6_040, 3_706, 1_000_209)
    assert PRESETS["ml-20m"][:2] == (138_493, 26_744)
    assert abs(PRESETS["ml-20m"][2] - 20_000_000) < 0.01 * 20_000_000
