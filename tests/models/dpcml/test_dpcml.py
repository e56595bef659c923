"""DPCML: the shared behaviour suite, its hand-written gradients against autograd on the paper's loss,
its reduction to CML, the ball on each of a user's vectors, min-distance retrieval (exact, through an
index with C queries per user, similar users), fold-in and persistence of the C * d user rows."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.errors import ConfigError
from metricrec.metrics import evaluate_part
from metricrec.models.base import load_model
from metricrec.models.cml.model import CML
from metricrec.models.cml.step_torch import cml_step
from metricrec.models.dpcml import DPCML, DPCMLConfig
from metricrec.models.dpcml.step import DPCMLStep, diversity, dpcml_gradients, dpcml_loss_reference
from metricrec.serialization import ModelFormatError
from metricrec.training import optim
from metricrec.training.optim import GradBuffer, RowAdagrad, clip_rows
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401

# Float64 comparisons of the hand-written gradients with autograd on the reference: both sum the same
# O(1) terms (a few dozen per entry at most) in another order, and the step's |g|^2 + |v|^2 - 2 g.v
# loses a few digits to cancellation, so they agree to ~1e-15 (measured: <= 2e-15); a wrong or
# missing term (a sign, a factor 2, the wrong one of a user's vectors) is O(0.01) or more. 1e-9
# relative and 1e-11 absolute (entries that should be 0) are far from both.
RTOL, ATOL = 1e-9, 1e-11


class TestDPCML(RecommenderBehaviour):
    # a random start (not the spectral default, which ranks this data well before any epoch), so that
    # "learns the planted structure" is what the step did; three vectors per user
    def make(self, **kw):
        return DPCML(factors=16, batch_size=500, init="random", learning_rate=0.5, n_vectors=3, show_progress=False,
                     verbose=False, **kw)

    def test_every_vector_of_a_user_stays_in_the_ball(self, fitted):
        vecs = fitted.user_vectors
        assert vecs.shape == (fitted.user_embeddings.shape[0], 3, 16)
        norms = np.linalg.norm(vecs, axis=2)
        assert norms.max() <= 1.0 + 1e-6
        # whole-row clipping would have left every row at norm <= 1, i.e. its vectors far inside
        assert (norms > 0.999).mean() > 0.2 and np.linalg.norm(fitted.user_embeddings, axis=1).max() > 1.2
        assert np.linalg.norm(fitted.item_embeddings, axis=1).max() <= 1.0 + 1e-6

    def test_scores_are_the_distance_to_the_nearest_vector(self, fitted):
        vecs, items = fitted.user_vectors.astype(np.float64), fitted.item_embeddings.astype(np.float64)
        n_items = items.shape[0]
        for u in (0, 5, 17):
            slow = np.array([min(np.sum((vecs[u, c] - items[j]) ** 2) for c in range(3)) for j in range(n_items)])
            ids, scores = fitted.recommend(u, None, N=n_items, filter_already_liked_items=False)
            np.testing.assert_allclose(scores, -np.sqrt(slow[ids]), rtol=1e-6, atol=1e-6)
            assert np.all(np.diff(slow[ids]) >= -1e-9)  # ranked by the distance
            np.testing.assert_allclose(fitted.scorer()(np.array([u])).numpy()[0], -slow, rtol=1e-5, atol=1e-5)
        # the C vectors are used: users' nearest vectors differ across items
        nearest = np.argmin(((vecs[:, :, None, :] - items[None, None]) ** 2).sum(-1), axis=1)
        assert np.mean([len(set(row)) > 1 for row in nearest]) > 0.5

    def test_similar_users_is_the_distance_between_the_nearest_vectors(self, fitted):
        vecs = fitted.user_vectors.astype(np.float64)
        ids, scores = fitted.similar_users(4, N=6, filter_users=[9])
        slow = np.array([min(np.sum((vecs[4, a] - vecs[w, b]) ** 2) for a in range(3) for b in range(3))
                         for w in range(vecs.shape[0])])
        slow[9] = np.inf
        assert ids[0] == 4 and scores[0] == 0.0 and 9 not in ids
        np.testing.assert_allclose(scores, -np.sqrt(slow[ids]), rtol=1e-6, atol=1e-6)
        assert list(ids) == list(np.argsort(slow, kind="stable")[:6])
        only, _ = fitted.similar_users([1, 2], N=3, users=[2, 3, 8])
        assert only.shape == (2, 3) and set(only[1]) == {2, 3, 8} and only[1][0] == 2

    def test_an_exact_index_through_c_queries_gives_exact_lists(self, fitted):
        faiss_ann = pytest.importorskip("metricrec.serving.ann")
        pytest.importorskip("faiss")
        train = fitted.user_items
        users = np.arange(train.shape[0])
        exact = fitted.recommend(users, train, N=10, filter_items=[3, 4])
        fitted.attach_index(faiss_ann.AnnIndex.build(fitted.item_embeddings, "flat"))
        try:
            approx = fitted.recommend(users, train, N=10, filter_items=[3, 4], approximate=True)
            assert np.array_equal(approx[0], exact[0])
            np.testing.assert_array_equal(approx[1], exact[1])
            # an allow list is ranked exactly; similar_items stays plain Euclidean over the items
            only = fitted.recommend(0, None, N=3, filter_already_liked_items=False, items=[1, 2, 3], approximate=True)
            assert sorted(only[0]) == [1, 2, 3]
            assert fitted.similar_items(3, N=4, approximate=True)[0][0] == 3
            fitted.attach_index(faiss_ann.AnnIndex.build(fitted.item_embeddings, "hnsw", m=8, ef_search=16))
            hnsw, _ = fitted.recommend(users, train, N=10, approximate=True)
            plain, _ = fitted.recommend(users, train, N=10)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw, plain)])
            assert recall > 0.95, recall
        finally:
            fitted.attach_index(None)

    def test_rows_the_index_leaves_short_are_ranked_exactly(self, fitted):
        class Stingy:  # an index that finds two items per query, whatever is asked
            def search(self, q, k):
                ids = np.full((q.shape[0], k), -1, dtype=np.int64)
                ids[:, :2] = [0, 1]
                return np.zeros(ids.shape, np.float32), ids

        train = fitted.user_items
        fitted.attach_index(Stingy())
        try:
            approx = fitted.recommend(np.arange(20), train[:20], N=5, approximate=True)
        finally:
            fitted.attach_index(None)
        exact = fitted.recommend(np.arange(20), train[:20], N=5)
        assert np.array_equal(approx[0], exact[0])

    def test_fold_in_trains_c_vectors_per_new_user_against_frozen_items(self, fitted, tmp_path):
        model = load_model(fitted.save(tmp_path / "m"))  # a copy: the class's model stays as it is
        items = model.item_embeddings.copy()
        rows = sp.csr_matrix(([1.0] * 5, ([0, 0, 0, 1, 1], [0, 5, 9, 3, 4])), shape=(2, items.shape[0]))
        start = model._fold_in_start(rows, model._item)
        assert start.shape == (2, 48)
        got = model.fold_in_rows(rows, epochs=3)
        assert got.shape == (2, 48) and not torch.equal(got, start)
        assert np.linalg.norm(got.numpy().reshape(2, 3, 16), axis=2).max() <= 1.0 + 1e-6
        assert np.array_equal(model.item_embeddings, items)
        assert model.recalculate_user([0, 5, 9], epochs=3).shape == (48,)
        ids, _ = model.recommend([0, 1], rows, N=5, recalculate_user=True)
        assert ids.shape == (2, 5) and not set(ids[0]) & {0, 5, 9}
        n_users = model.user_embeddings.shape[0]
        new_id = int(model.user_ids.max()) + 1
        index = model.partial_fit_users([model.user_ids[2], new_id], [list(model.item_ids[[0, 5, 9]]),
                                                                       list(model.item_ids[[3, 4]])], epochs=3)
        assert index.tolist() == [2, n_users] and model.user_embeddings.shape == (n_users + 1, 48)
        assert not np.array_equal(model.user_embeddings[2], fitted.user_embeddings[2])
        again = load_model(model.save(tmp_path / "grown"))
        assert np.array_equal(again.user_embeddings, model.user_embeddings)

    def test_a_user_table_of_the_wrong_width_is_refused(self, fitted, tmp_path):
        path = fitted.save(tmp_path / "m")
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["user_embeddings"] = arrays["user_embeddings"][:, :16]  # one vector per user: CML's shape
        np.savez(path / "weights.npz", **arrays)
        with pytest.raises(ModelFormatError, match="'user_embeddings' has shape .* expected"):
            load_model(path)

    def test_the_index_command_measures_recall_with_c_queries_per_user(self, fitted, tmp_path, capsys):
        pytest.importorskip("faiss")
        from metricrec.cli.main import main

        path = fitted.save(tmp_path / "m")
        assert main(["index", "--model", str(path), "--kind", "flat", "--sample-users", "20"]) == 0
        out = capsys.readouterr().out
        assert "on 20 users (60 queries): 1.0000" in out
        assert load_model(path).ann_index is not None

    def test_auto_trains_dpcml2_with_the_compiled_kernel_and_dpcml1_with_torch(self, fitted, data_split):
        pytest.importorskip("numba")
        assert fitted._trainer.step.backend == ("numba" if fitted.config.negatives == "hardest" else "torch")
        mean = self.make(epochs=1, negatives="all", use_rank_weight=False).fit(data_split.train)
        assert mean._trainer.step.backend == "torch"  # DPCML1 has the torch step only


# ---------------------------------------------------------------------- gradients against autograd
def _problem(c_n=3, d=4, seed=0):
    """7 positive pairs in groups of 3 (the last padded) sharing U = 4 negatives, three entries redrawn
    for their row; users and items repeat, item 6 is a positive and a shared negative, item 11 shared
    and redrawn. Users 0 and 2 have their vectors bunched (diversity below the band of
    :data:`_BAND`), users 1 and 3 spread (above), user 4 inside."""
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items = 5, 14
    ue = 0.5 * torch.randn(n_users, c_n * d, generator=gen, dtype=torch.float64)
    if c_n > 1:
        vecs = ue.view(n_users, c_n, d)
        centre = vecs.mean(1, keepdim=True)
        for u, scale in ((0, 0.2), (2, 0.3), (1, 2.0), (3, 1.8), (4, 0.6)):
            vecs[u] = centre[u] + scale * (vecs[u] - centre[u])
    ie = 0.5 * torch.randn(n_items, d, generator=gen, dtype=torch.float64)
    users = torch.tensor([0, 1, 1, 2, 3, 4, 0])
    positives = torch.tensor([5, 6, 7, 5, 8, 9, 10])
    shared = torch.tensor([[0, 1, 2, 3], [1, 4, 6, 11], [2, 3, 0, 4]])
    negatives = shared.repeat_interleave(3, 0)[:7].clone()
    fix_rows, fix_cols = torch.tensor([1, 4, 6]), torch.tensor([2, 0, 3])
    negatives[fix_rows, fix_cols] = torch.tensor([12, 13, 11])
    # the redrawn item of row 1 sits next to one of its user's vectors: "hardest" picks a redrawn entry
    ie[12] = ue[1, -d:] + 0.01 * torch.randn(d, generator=gen, dtype=torch.float64)
    return ue, ie, users, positives, NegativeDraw(shared, negatives, fix_rows, fix_cols, 3)


_BAND = dict(diversity_min=0.25, diversity_max=1.5)


def _dense(buf, n, width):
    rows, grads = buf.pop()
    out = torch.zeros(n, width, dtype=grads.dtype)
    out[rows] = grads
    return rows, out


@pytest.mark.parametrize("c_n", [1, 3])
@pytest.mark.parametrize("hardest, rank", [(True, True), (True, False), (False, False)])
def test_dpcml_gradients_match_autograd_on_the_reference_loss(c_n, hardest, rank):
    ue, ie, users, positives, draw = _problem(c_n)
    kw = dict(n_vectors=c_n, margin=0.5, hardest=hardest, use_rank_weight=rank, diversity_weight=0.7, **_BAND)
    bufs = [GradBuffer(5, c_n * 4, dtype=torch.float64), GradBuffer(14, 4, dtype=torch.float64)]
    parts = dpcml_gradients(ue, ie, users, positives, draw, *bufs, **kw)
    leaves = [t.clone().requires_grad_() for t in (ue, ie)]
    ref = dpcml_loss_reference(*leaves, users, positives, draw.negatives, **kw)
    ref.backward()
    assert sum(parts.values()) == pytest.approx(ref.item(), rel=RTOL)

    # the problem exercises both sides of the hinge, vectors other than the positive's nearest, and
    # all three states of the regulariser (below, inside, above the band)
    g = ue.view(5, c_n, 4)
    d_pos = ((g[users] - ie[positives][:, None]) ** 2).sum(-1)
    d_neg = ((g[users][:, :, None] - ie[draw.negatives][:, None]) ** 2).sum(-1)
    viol = 0.5 + d_pos.min(1).values[:, None] - d_neg.min(1).values
    assert 0 < (viol > 0).double().mean() < 1
    if c_n > 1:
        assert (d_neg.argmin(1) != d_pos.argmin(1)[:, None]).any() and len(set(d_pos.argmin(1).tolist())) > 1
        delta = diversity(g)
        assert (delta < 0.25).sum() == 2 and (delta > 1.5).sum() == 2
        assert parts["diversity_loss"] > 0
    else:
        assert parts["diversity_loss"] == 0.0
    if hardest:
        assert d_neg.min(1).values[1].argmin() == 2  # row 1's hardest is its redrawn entry

    for buf, leaf in zip(bufs, leaves):
        rows, got = _dense(buf, leaf.shape[0], leaf.shape[1])
        torch.testing.assert_close(got, leaf.grad, rtol=RTOL, atol=ATOL)
        untouched = torch.ones(leaf.shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.all(leaf.grad[untouched] == 0)


def test_the_diversity_term_by_hand():
    # one user, C = 2 vectors g1 = (0, 0), g2 = (0.2, 0): delta = 1 / (2 C (C - 1)) * 2 * 0.04 = 0.02,
    # below delta_1 = 0.05: psi = 0.03; with eta = 2 and one pair (|B| = 1) the term is 0.06, and
    # d delta / d g_c = 2 (g_c - mean) / (C - 1), so the gradients are -eta (2 (g_c - mean)) =
    # (0.4, 0) and (-0.4, 0): a descent step moves the two vectors apart. The positive item sits on
    # g1 and the negative far away: no hinge is active.
    ue = torch.tensor([[0.0, 0.0, 0.2, 0.0]], dtype=torch.float64)
    ie = torch.tensor([[0.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[1]])
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(neg, neg, empty, empty, 1)
    bu, bi = GradBuffer(1, 4, dtype=torch.float64), GradBuffer(2, 2, dtype=torch.float64)
    parts = dpcml_gradients(ue, ie, torch.tensor([0]), torch.tensor([0]), draw, bu, bi, n_vectors=2, margin=1.0,
                            diversity_weight=2.0, diversity_min=0.05, diversity_max=0.25)
    assert parts == pytest.approx({"metric_loss": 0.0, "diversity_loss": 0.06}, abs=1e-12)
    rows, grads = bu.pop()
    assert rows.tolist() == [0]
    torch.testing.assert_close(grads, torch.tensor([[0.4, 0.0, -0.4, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert bi.pop()[0].numel() == 0
    assert diversity(ue.view(1, 2, 2)).item() == pytest.approx(0.02)


@pytest.mark.parametrize("rank", [True, False])
def test_one_vector_and_no_regulariser_is_cmls_step(rank):
    """C = 1: the same loss and the same gradients as CML's torch step (closest of U, rank weight or not)."""
    ue, ie, users, positives, draw = _problem(c_n=1)
    got = [GradBuffer(5, 4, dtype=torch.float64), GradBuffer(14, 4, dtype=torch.float64)]
    want = [GradBuffer(5, 4, dtype=torch.float64), GradBuffer(14, 4, dtype=torch.float64)]
    parts = dpcml_gradients(ue, ie, users, positives, draw, *got, n_vectors=1, margin=1.5, use_rank_weight=rank,
                            diversity_weight=3.0, **_BAND)
    stats = cml_step(ue, ie, users, positives, draw, *want, margin=1.5, use_rank_weight=rank)
    assert parts["metric_loss"] == pytest.approx(stats.metric_loss, rel=RTOL) and parts["diversity_loss"] == 0.0
    for a, b, n in zip(got, want, (5, 14)):
        torch.testing.assert_close(_dense(a, n, 4)[1], _dense(b, n, 4)[1], rtol=RTOL, atol=ATOL)


def test_one_vector_trains_as_cml(data_split):
    """C = 1, no regulariser, CML's defaults otherwise (spectral start, rank weight, adaptive schedule):
    DPCML's start is CML's bit for bit and the two train the same model up to float32 rounding: the
    steps sum the same float32 terms in another order (~1e-6 after these 8 epochs, at most ~40 updates
    per row); 1e-4 leaves room for another CPU's kernels while a real difference in the maths moves
    rows by ~0.1."""
    common = dict(factors=16, batch_size=500, epochs=8, eval_every=4, show_progress=False, verbose=False)
    cml = CML(kernel="torch", **common).fit(data_split.train, data_split.valid)
    one = DPCML(n_vectors=1, diversity_weight=0.0, **common)
    one._init_tables(*data_split.train.shape, train=data_split.train.matrix)
    start = CML(**common)
    start._init_tables(*data_split.train.shape, train=data_split.train.matrix)
    assert torch.equal(one._user, start._user) and torch.equal(one._item, start._item)
    one.fit(data_split.train, data_split.valid)
    assert [e.parts["metric_loss"] for e in one.history.epochs] == pytest.approx(
        [e.parts["metric_loss"] for e in cml.history.epochs], rel=1e-4)
    np.testing.assert_allclose(one.user_embeddings, cml.user_embeddings, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one.item_embeddings, cml.item_embeddings, rtol=0, atol=1e-4)


def test_a_strong_regulariser_holds_the_users_diversity_in_its_band(data_split):
    model = DPCML(factors=16, batch_size=500, epochs=6, n_vectors=3, diversity_weight=20.0, diversity_min=0.1,
                  diversity_max=0.2, init_spread=0.0, show_progress=False, verbose=False).fit(data_split.train)
    delta = model.user_diversity()
    assert np.median(delta) == pytest.approx(0.15, abs=0.06) and np.quantile(delta, 0.9) < 0.3
    # without it the vectors drift apart even from identical starts: the nearest of tied vectors (the
    # first) takes every gradient until it has moved, and the others then win the items it left
    free = DPCML(factors=16, batch_size=500, epochs=6, n_vectors=3, diversity_weight=0.0, init_spread=0.0,
                 show_progress=False, verbose=False).fit(data_split.train)
    assert np.median(free.user_diversity()) > 2 * np.median(delta)


def test_the_start_spreads_the_vectors_of_a_user_from_cmls_start(data_split):
    model = DPCML(factors=16, n_vectors=4, init_spread=0.1, show_progress=False, verbose=False)
    model._init_tables(*data_split.train.shape, train=data_split.train.matrix)
    cml = CML(factors=16, show_progress=False, verbose=False)
    cml._init_tables(*data_split.train.shape, train=data_split.train.matrix)
    vecs = model.user_vectors
    assert np.array_equal(vecs[:, 0], cml.user_embeddings) and np.array_equal(model.item_embeddings,
                                                                               cml.item_embeddings)
    step = np.linalg.norm(vecs[:, 1:] - vecs[:, :1], axis=2)
    assert 0.05 < np.median(step) < 0.12 and np.linalg.norm(vecs, axis=2).max() <= 1.0


# ---------------------------------------------------------------------- the ball on each vector
def test_clip_rows_with_a_block_clips_each_vector_alone():
    rows = torch.tensor([[3.0, 4.0, 0.3, 0.4], [0.0, 0.5, 0.0, 2.0]])
    out = clip_rows(rows.clone(), 1.0, block=2)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8, 0.3, 0.4], [0.0, 0.5, 0.0, 1.0]]))
    assert torch.equal(clip_rows(rows.clone(), 1.0, block=4), clip_rows(rows.clone(), 1.0))
    with pytest.raises(ValueError, match="divide"):
        clip_rows(rows.clone(), 1.0, block=3)


@pytest.mark.parametrize("block", [None, 3])
def test_fused_adagrad_clips_blocks_as_the_torch_step(monkeypatch, block):
    torch.manual_seed(0)
    w0 = clip_rows(torch.randn(40, 6) * 0.5, 1.0, block)
    a, b = w0.clone(), w0.clone()
    opt_a, opt_b = RowAdagrad(a, 0.3), RowAdagrad(b, 0.3)
    buf_a, buf_b = GradBuffer(40, 6), GradBuffer(40, 6)
    for step in range(5):
        rows = torch.randint(0, 40, (30 if step % 2 else 5,))
        g = torch.randn(rows.numel(), 6) * 2
        buf_a.add(rows, g)
        buf_b.add(rows, g)
        opt_a.step_buffer(buf_a, max_norm=1.0, block=block)  # fused (numba) when installed
        with monkeypatch.context() as mp:
            mp.setattr(optim, "_fused", False)
            opt_b.step_buffer(buf_b, max_norm=1.0, block=block)  # torch (dense or sparse path)
        assert torch.allclose(a, b, atol=1e-6)
    width = 6 if block is None else block
    assert a.view(40, -1, width).norm(dim=2).max() <= 1.0 + 1e-6
    if block:
        assert a.norm(dim=1).max() > 1.05  # the rows as wholes are not clipped


def test_the_step_refuses_a_user_table_of_the_wrong_width():
    with pytest.raises(ValueError, match="columns"):
        DPCMLStep(DPCMLConfig(factors=4, n_vectors=3), torch.zeros(5, 8), torch.zeros(6, 4), "torch")


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value", [("n_vectors", 0), ("n_vectors", 2.0), ("n_vectors", 65), ("margin", 0.0),
                                          ("margin", float("nan")), ("negatives", "closest"),
                                          ("use_rank_weight", 1), ("diversity_weight", -0.1),
                                          ("diversity_min", -1.0), ("diversity_max", float("inf")),
                                          ("init_spread", -0.1)])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        DPCMLConfig(**{field: value})


def test_config_refuses_combinations_it_cannot_train():
    with pytest.raises(ConfigError, match="diversity_min must be <= diversity_max"):
        DPCMLConfig(diversity_min=0.5, diversity_max=0.4)
    with pytest.raises(ConfigError, match="negatives='hardest'"):
        DPCMLConfig(negatives="all")
    assert DPCMLConfig(negatives="all", use_rank_weight=False).negatives == "all"
    with pytest.raises(ConfigError, match="n_vectors x factors"):
        DPCMLConfig(factors=2**14, n_vectors=5)


def test_recommendations_beat_popularity_with_uniform_negatives(data_split):
    model = DPCML(factors=16, batch_size=500, init="random", learning_rate=0.5, n_vectors=2, negatives="all",
                  use_rank_weight=False, n_negatives=1, epochs=10, show_progress=False,
                  verbose=False).fit(data_split.train)
    ours = evaluate_part(model.scorer(), data_split, "test", ks=(20,), metrics=("recall",))["recall@20"]
    counts = np.asarray(data_split.train.matrix.sum(0)).ravel().astype(np.float32)
    popular = evaluate_part(lambda u: torch.from_numpy(np.tile(counts, (len(u), 1))), data_split, "test",
                            ks=(20,), metrics=("recall",))["recall@20"]
    assert ours > 1.5 * popular, (ours, popular)


# ---------------------------------------------------------------------- CUDA (skipped without a device)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("hardest, rank", [(True, True), (False, False)])
def test_dpcml_gradients_on_cuda_equal_the_cpu_ones(hardest, rank):
    ue, ie, users, positives, draw = _problem(3)
    kw = dict(n_vectors=3, margin=0.5, hardest=hardest, use_rank_weight=rank, diversity_weight=0.7, **_BAND)
    out = {}
    for device in ("cpu", "cuda"):
        d = NegativeDraw(*(t.to(device) for t in (draw.shared, draw.negatives, draw.fix_rows, draw.fix_cols)),
                         draw.group_size)
        bufs = [GradBuffer(5, 12, dtype=torch.float64, device=device), GradBuffer(14, 4, dtype=torch.float64,
                                                                                  device=device)]
        parts = dpcml_gradients(ue.to(device), ie.to(device), users.to(device), positives.to(device), d, *bufs, **kw)
        out[device] = parts, [tuple(x.cpu() for x in b.pop()) for b in bufs]
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=RTOL)
    for (rows_c, g_c), (rows_g, g_g) in zip(out["cpu"][1], out["cuda"][1]):
        assert torch.equal(rows_c, rows_g)
        torch.testing.assert_close(g_g, g_c, rtol=RTOL, atol=ATOL)


@cuda
def test_dpcml_trains_on_cuda_and_loads_on_the_cpu(data_split, tmp_path):
    model = DPCML(factors=16, batch_size=500, epochs=3, n_vectors=3, device="cuda", show_progress=False,
                  verbose=False).fit(data_split.train, data_split.valid)
    assert model._user.device.type == "cuda" and model.user_embeddings.shape[1] == 48
    assert np.linalg.norm(model.user_vectors, axis=2).max() <= 1.0 + 1e-6
    scores = model.scorer()(np.arange(4))
    assert scores.device.type == "cuda" and scores.shape == (4, model.item_embeddings.shape[0])
    train = data_split.train.matrix
    ids, vals = model.recommend(np.arange(10), train[:10], N=5)
    again = load_model(model.save(tmp_path / "m"))
    assert again.device.type == "cpu" and np.array_equal(again.user_embeddings, model.user_embeddings)
    ids2, vals2 = again.recommend(np.arange(10), train[:10], N=5)
    assert np.array_equal(ids, ids2) and np.array_equal(vals, vals2)
    np.testing.assert_allclose(again.scorer()(np.arange(4)).numpy(), scores.cpu().numpy(), rtol=1e-5, atol=1e-5)
    assert model.fold_in_rows(train[:3], epochs=2).device.type == "cuda"


# ---------------------------------------------------------------------- the compiled CPU kernel (DPCML2)
@pytest.mark.parametrize("rank", [True, False])
def test_dpcml_numba_kernel_fills_the_buffers_as_the_torch_step(rank):
    # float32 on both sides: the torch step's batched |g|^2 + |v|^2 - 2 g.v against the kernel's direct
    # differences agree to float32 rounding of O(1) numbers (~1e-6); 1e-5 is well above that and far
    # below a wrong or missing term (O(0.01) or more). The problem has no near-ties between a row's
    # negatives or vectors, so both pick the same nearest ones.
    pytest.importorskip("numba")
    from metricrec.models.dpcml.step_numba import dpcml_hardest_numba

    ue, ie, users, positives, draw = _problem()
    ue, ie = ue.float(), ie.float()
    out = []
    for numba_path in (False, True):
        bufs = [GradBuffer(5, 12), GradBuffer(14, 4)]
        if numba_path:
            value = dpcml_hardest_numba(ue, ie, users, positives, draw, *bufs, n_vectors=3, margin=1.0,
                                        use_rank_weight=rank)
        else:
            value = dpcml_gradients(ue, ie, users, positives, draw, *bufs, n_vectors=3, margin=1.0, hardest=True,
                                    use_rank_weight=rank)["metric_loss"]
        out.append((value, [b.pop() for b in bufs]))
    (v_t, b_t), (v_n, b_n) = out
    assert v_t > 0 and v_n == pytest.approx(v_t, rel=1e-5)
    for (rows_t, g_t), (rows_n, g_n) in zip(b_t, b_n):
        assert torch.equal(rows_t, rows_n)
        torch.testing.assert_close(g_n, g_t, rtol=1e-5, atol=1e-5)


def test_dpcml_numba_kernel_does_not_depend_on_the_thread_count():
    # each row's terms are summed in pair order by the one part that owns it: bitwise the same sums
    numba = pytest.importorskip("numba")
    from metricrec.models.dpcml.step_numba import dpcml_hardest_numba

    gen = torch.Generator().manual_seed(5)
    ue, ie = torch.randn(40, 3 * 8, generator=gen) / 4, torch.randn(60, 8, generator=gen) / 4
    users, positives = torch.randint(0, 40, (300,), generator=gen), torch.randint(0, 60, (300,), generator=gen)
    neg = torch.randint(0, 60, (300, 5), generator=gen)
    draw = NegativeDraw(neg, neg, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 1)
    results, before = [], numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            bufs = [GradBuffer(40, 24), GradBuffer(60, 8)]
            dpcml_hardest_numba(ue, ie, users, positives, draw, *bufs, n_vectors=3, margin=1.0)
            results.append([b.pop() for b in bufs])
    finally:
        numba.set_num_threads(before)
    for (r0, g0), (r1, g1) in zip(results[0], results[-1]):
        assert torch.equal(r0, r1) and torch.equal(g0, g1)
