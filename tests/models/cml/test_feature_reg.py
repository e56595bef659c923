"""CML+F: the feature term's gradients, its trainer hook, cold-start placement, and CML with item features."""

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML, CMLConfig
from metricrec.models.cml.feature_reg import FeatureRegularizer
from metricrec.data.interactions import Features
from metricrec.training.optim import GradBuffer
from metricrec.metrics import embedding_scorer, evaluate
from metricrec.training.sampling import NegativeDraw
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate

FAST = dict(factors=16, batch_size=256, num_threads=1, show_progress=False, verbose=False)


def _features(n_rows=10, n_cols=6, seed=0, empty=(4,)):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_rows, n_cols)) < 0.4) * rng.uniform(0.5, 2.0, (n_rows, n_cols))
    dense[list(empty)] = 0.0
    dense[[r for r in range(n_rows) if r not in empty and not dense[r].any()], 0] = 1.0
    return Features(sp.csr_matrix(dense.astype(np.float32)), np.array([f"f{k}" for k in range(n_cols)]))


# ---------------------------------------------------------------------- the term and its gradients
def test_feature_term_gradient_matches_autograd_and_f_takes_one_adam_step():
    feats = _features()
    reg = FeatureRegularizer(feats, 4, weight=0.7, hidden=(5,), dropout=0.0, lr=1e-2, max_norm=None, seed=3)
    table = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([0, 2, 3, 7])

    ref = copy.deepcopy(reg.mlp)
    v = table.clone().requires_grad_(True)
    x = torch.from_numpy(feats.matrix.toarray())
    loss = 0.7 * ((ref(x[rows]) - v[rows]) ** 2).sum()
    loss.backward()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ref_opt.step()

    buf = GradBuffer(10, 4)
    value = reg.step(table, rows, buf)
    assert value == pytest.approx(float(loss.detach()), rel=1e-5)
    got_rows, got = buf.pop()
    assert got_rows.tolist() == rows.tolist()
    assert torch.allclose(got, v.grad[rows], atol=1e-5)
    assert torch.equal(v.grad[[1, 4, 5, 6, 8, 9]], torch.zeros(6, 4))  # untouched rows get nothing
    for (name, a), b in zip(reg.mlp.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.equal(table, v.detach())  # the table itself is the optimiser's job


def test_on_batch_uses_distinct_batch_items_with_features_and_training_data():
    feats = _features()  # row 4 has no feature
    counts = np.array([3, 1, 0, 5, 2, 1, 1, 0, 2, 9])  # rows 2 and 7 are cold
    reg = FeatureRegularizer(feats, 4, weight=1.0, hidden=(), dropout=0.0, train_counts=counts, seed=0)
    assert reg.cold_rows.tolist() == [2, 7]
    table = torch.rand(10, 4)
    draw = NegativeDraw(shared=torch.tensor([[9, 4], [2, 9]]), negatives=torch.zeros(4, 2, dtype=torch.long),
                        fix_rows=torch.zeros(0, dtype=torch.long), fix_cols=torch.zeros(0, dtype=torch.long), group_size=2)
    gu, gi = GradBuffer(3, 4), GradBuffer(10, 4)
    reg.on_batch(torch.rand(3, 4), table, torch.tensor([0, 1, 1, 2]), torch.tensor([1, 1, 7, 3]), draw, gu, gi)
    assert gi.touched.nonzero().squeeze(1).tolist() == [1, 3, 9]  # not 4 (no feature), 2 and 7 (cold)
    assert not gu.touched.any()


def test_cold_rows_are_placed_from_f_with_the_calibrated_distance():
    feats = _features(n_rows=30, n_cols=8, empty=(4,))
    counts = np.r_[np.zeros(5), np.arange(1, 26)].astype(int)  # rows 0..3 cold (4 has no feature)
    reg = FeatureRegularizer(feats, 3, weight=1.0, hidden=(4,), dropout=0.0, train_counts=counts, seed=0,
                             max_norm=1.0)
    users = torch.rand(6, 3) * 0.5
    table = torch.rand(30, 3) * 0.5
    before = table.clone()
    reg.on_epoch_end(users, table)
    c = users.mean(0)
    rare = np.flatnonzero(counts > 0)[counts[counts > 0] <= np.quantile(counts[counts > 0], 0.1)]
    assert reg.rare_rows.tolist() == rare.tolist()
    with torch.no_grad():
        f = reg.mlp.eval()(torch.from_numpy(feats.matrix.toarray()))
    s = (before[rare] - c).norm(dim=1).mean() / (f[rare] - c).norm(dim=1).mean()
    assert reg.scale == pytest.approx(float(s), rel=1e-5)
    placed = c + s * (f[:4] - c)
    placed = placed / placed.norm(dim=1, keepdim=True).clamp_min(1.0)
    assert torch.allclose(table[:4], placed, atol=1e-5)
    assert torch.equal(table[4:], before[4:])


# ---------------------------------------------------------------------- CML with item features
@pytest.fixture(scope="module")
def cold_setup():
    """400 users x 200 items in 8 clusters; item features = cluster one-hot + noisy tags.
    20% of the items are held out entirely (every interaction of theirs is a test target)."""
    data = generate(400, 200, 8000, n_clusters=8, seed=0, popularity_exponent=0.5, cluster_affinity=0.9)
    rng = np.random.default_rng(0)
    cold = np.sort(rng.permutation(200)[:40])
    keep = np.ones(200, bool)
    keep[cold] = False
    m = data.matrix.tocoo()
    sel = keep[m.col]
    warm = data.with_matrix(sp.csr_matrix((m.data[sel], (m.row[sel], m.col[sel])), shape=m.shape))
    split = ratio_split(warm, (0.8, 0.1, 0.1), seed=0)
    target = sp.csr_matrix(data.matrix[:, cold])
    model = CML(epochs=25, patience=5, seed=0, feature_weight=1.0, feature_hidden=(32,), **FAST)
    model.fit(split.train, split.valid)  # the Interactions carry the item features
    return data, split, cold, target, model


def test_cold_items_are_ranked_far_above_random(cold_setup):
    data, split, cold, target, model = cold_setup
    assert model.feature_info["n_cold"] == 40
    u, v = torch.from_numpy(model.user_embeddings), torch.from_numpy(model.item_embeddings)
    got = evaluate(embedding_scorer(u, v[torch.from_numpy(cold)]), target, None, ks=(10,), metrics=("recall",))
    # independent references: random ranking, and an oracle that ranks the user's planted cluster first
    random_recall = 10 / 40
    uc, ic = data.meta["user_cluster"], data.meta["item_cluster"][cold]
    tie_break = np.random.default_rng(1).random((len(uc), len(cold))) * 1e-3
    oracle = torch.from_numpy(((uc[:, None] == ic[None, :]) + tie_break).astype(np.float32))
    best = evaluate(lambda users: oracle[torch.from_numpy(users)], target, None, ks=(10,), metrics=("recall",))
    assert got["recall@10"] > 2 * random_recall  # measured 0.60 against 0.25
    assert got["recall@10"] > 0.8 * best["recall@10"]  # the oracle: 0.68


def test_cold_item_vectors_equal_their_feature_placement_and_fold_in(cold_setup):
    data, split, cold, target, model = cold_setup
    placed = model.item_vectors_from_features(data.item_features.take(cold))
    assert np.allclose(model.item_embeddings[cold], placed, atol=1e-6)
    one = model.recalculate_item(data.item_features.matrix[cold[0]])
    assert np.allclose(one, placed[0], atol=1e-6)
    named = {n: 1.0 for n in data.item_features.names[data.item_features.matrix[cold[0]].indices]}
    assert np.allclose(model.recalculate_item(named), placed[0], atol=1e-6)
    assert np.all(np.linalg.norm(placed, axis=1) <= 1.0 + 1e-6)
    raw = model.item_vectors_from_features(data.item_features.take(cold), calibrated=False)
    assert not np.allclose(raw, placed)  # the calibration does move them


def test_recommend_can_return_cold_items_and_save_load_keeps_f(cold_setup, tmp_path):
    data, split, cold, target, model = cold_setup
    ids, _ = model.recommend(np.arange(20), None, N=5, filter_already_liked_items=False, items=cold)
    assert set(ids.ravel().tolist()) <= set(cold.tolist()) and (ids >= 0).all()
    for path in (tmp_path / "dir", tmp_path / "model.npz"):
        model.save(path)
        back = CML.load(path)
        assert back.config == model.config and back.config.feature_hidden == (32,)
        assert np.array_equal(back.item_embeddings, model.item_embeddings)
        again, _ = back.recommend(np.arange(20), None, N=5, filter_already_liked_items=False, items=cold)
        assert np.array_equal(again, ids)
        assert np.array_equal(back.item_feature_names, data.item_features.names)
        assert np.allclose(back.recalculate_item(data.item_features.matrix[cold[3]]),
                           model.recalculate_item(data.item_features.matrix[cold[3]]), atol=1e-7)


def test_fit_with_features_is_deterministic_and_leaves_global_rng_alone(cold_setup):
    data, split, *_ = cold_setup
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    kw = dict(epochs=2, patience=0, feature_weight=1.0, feature_hidden=(8,), feature_dropout=0.5, **FAST)
    a = CML(**kw).fit(split.train, split.valid)
    assert torch.equal(torch.rand(1), expected_next)
    b = CML(**kw).fit(split.train, split.valid)
    assert np.array_equal(a.item_embeddings, b.item_embeddings)


def test_features_off_ignores_carried_features_and_init_from_features_starts_elsewhere(cold_setup):
    data, split, *_ = cold_setup
    kw = dict(epochs=2, patience=0, **FAST)
    plain = CML(**kw).fit(split.train.matrix, split.valid.matrix)
    carried = CML(**kw).fit(split.train, split.valid)  # feature_weight 0: features stay unused
    assert np.array_equal(plain.item_embeddings, carried.item_embeddings) and carried.feature_info is None
    init = CML(feature_weight=1.0, init_from_features=True, **kw).fit(split.train, split.valid)
    no_init = CML(feature_weight=1.0, **kw).fit(split.train, split.valid)
    assert not np.allclose(init.item_embeddings, no_init.item_embeddings)


def test_feature_argument_errors(cold_setup):
    data, split, *_ = cold_setup
    # fit takes the CLI's default weight for features given at 0 (test_feature_defaults.py); fit_partial does not
    with pytest.raises(ValueError, match="feature_weight is 0"):
        CML(epochs=1, **FAST).fit_partial(split.train, item_features=data.item_features)
    with pytest.raises(ValueError, match="needs item features"):
        CML(epochs=1, feature_weight=1.0, **FAST).fit(split.train.matrix)
    with pytest.raises(ValueError, match="has 199 rows, expected 200"):
        CML(epochs=1, feature_weight=1.0, **FAST).fit(split.train, item_features=data.item_features.matrix[:199])
    with pytest.raises(ValueError, match="no item has any feature"):
        CML(epochs=1, feature_weight=1.0, **FAST).fit(split.train, item_features=sp.csr_matrix((200, 3)))
    with pytest.raises(RuntimeError, match="without item features"):
        CML(epochs=1, **FAST).fit(split.train.matrix).recalculate_item(np.ones(3))


def test_config_feature_fields_round_trip_and_validate():
    c = CMLConfig(feature_weight=0.5, feature_hidden=[64, 32], feature_dropout=0.2, feature_lr=0.01,
                  init_from_features=True)
    assert c.feature_hidden == (64, 32)
    assert CMLConfig.from_dict(c.to_dict()) == c
    for bad in (dict(feature_weight=-1.0), dict(feature_hidden=[0]), dict(feature_hidden="256"),
                dict(feature_dropout=1.0), dict(feature_lr=0.0), dict(init_from_features=1)):
        with pytest.raises(ValueError):
            CMLConfig(**bad)
