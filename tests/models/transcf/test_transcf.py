"""TransCF: the shared behaviour suite, its hand-written gradients against autograd on the paper's loss
written with loops, its pair scores against a slow loop, persistence of a model whose translations
are derived, fold-in and the refusal of approximate retrieval."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import metricrec.models.transcf  # noqa: F401  (registers TransCF for load_model)
from metricrec.errors import ConfigError
from metricrec.models.base import load_model
from metricrec.models.transcf import TransCF, TransCFConfig
from metricrec.models.transcf.step import (Neighbourhoods, TransCFStep, transcf_gradients, transcf_loss_reference)
from metricrec.serialization import ModelFormatError
from metricrec.training.optim import GradBuffer
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401
from tolerances import SCORE_ATOL

# Float64 comparisons of the hand-written gradients with autograd on the loop reference: both sum
# the same O(1) terms (a few dozen per entry, through neighbourhood means of at most 10 rows) in
# another order, so they agree to ~1e-15; a wrong or missing term is O(0.01) or more. 1e-9 relative
# (1e-11 absolute, for entries that should be 0) is far from both.
RTOL, ATOL = 1e-9, 1e-11


class TestTransCF(RecommenderBehaviour):
    # a random start (not the spectral default, which already ranks this data well before any
    # epoch): "learns the planted structure" is then what the training step did
    def make(self, **kw):
        return TransCF(factors=16, batch_size=500, init="random", learning_rate=0.5, nbr_reg=0.1,
                       show_progress=False, verbose=False, **kw)

    def test_auto_trains_with_the_compiled_kernel_where_numba_is_installed(self, fitted):
        pytest.importorskip("numba")
        assert fitted._trainer.step.backend == "numba"

    def test_retrieval_scores_are_the_pair_scores_of_a_slow_loop(self, fitted):
        user, item = fitted.user_embeddings.astype(np.float64), fitted.item_embeddings.astype(np.float64)
        liked = fitted.user_items
        uids = np.array([0, 3, 7])
        want = np.empty((uids.size, item.shape[0]))
        for row, w in enumerate(uids):
            items = liked[w].indices
            alpha = item[items].mean(0) if items.size else np.zeros(item.shape[1])
            for j in range(item.shape[0]):
                users = liked[:, j].nonzero()[0]
                beta = user[users].mean(0) if users.size else np.zeros(item.shape[1])
                want[row, j] = -np.sum((user[w] + alpha * beta - item[j]) ** 2)
        got = fitted._query_scores(fitted._user_queries(uids))
        np.testing.assert_allclose(got, want, rtol=0, atol=SCORE_ATOL)
        np.testing.assert_allclose(fitted.scorer()(uids).numpy(), want, rtol=0, atol=SCORE_ATOL)
        ids, scores = fitted.recommend(uids, None, N=item.shape[0], filter_already_liked_items=False)
        np.testing.assert_allclose(scores, np.take_along_axis(want, ids.astype(np.int64), 1), rtol=0, atol=SCORE_ATOL)
        # the translations are what the score says: alpha the items' mean, beta the users' mean
        np.testing.assert_allclose(fitted.user_translations[7], item[liked[7].indices].mean(0), atol=1e-6)
        np.testing.assert_allclose(fitted.item_translations[2], user[liked[:, 2].nonzero()[0]].mean(0), atol=1e-6)

    def test_a_saved_model_recomputes_the_same_translations(self, fitted, tmp_path):
        again = load_model(fitted.save(tmp_path / "m"))
        assert type(again) is TransCF
        assert np.array_equal(again.user_translations, fitted.user_translations)
        assert np.array_equal(again.item_translations, fitted.item_translations)
        a, b = again.recommend(np.arange(6), fitted.user_items[:6], N=10), \
            fitted.recommend(np.arange(6), fitted.user_items[:6], N=10)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        # they are built from the saved positives: a file without them is refused
        path = fitted.save(tmp_path / "m2")
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("user_items.")}
        np.savez(path / "weights.npz", **arrays)
        with pytest.raises(ModelFormatError, match="training positives"):
            load_model(path)

    def test_approximate_retrieval_is_refused_with_a_clear_error(self, fitted):
        with pytest.raises(ConfigError, match="TransCF .*exact retrieval"):
            fitted.recommend(0, fitted.user_items[0], N=5, approximate=True)
        with pytest.raises(ConfigError, match="TransCF"):
            fitted.recommend_vectors(fitted._user_queries(np.array([0, 1])), 5, approximate=True)

    def test_fold_in_returns_queries_and_keeps_the_item_side(self, fitted, tmp_path):
        model = load_model(fitted.save(tmp_path / "m"))  # a copy: the class's fitted model stays as it is
        items, beta = model.item_embeddings.copy(), model.item_translations.copy()
        d = items.shape[1]
        liked = model.user_items[4]
        q = model.recalculate_user(liked.indices, epochs=3)
        assert q.shape == (2 * d,)  # [u, alpha_u]
        np.testing.assert_allclose(q[d:], items[liked.indices].mean(0), atol=1e-6)
        ids, _ = model.recommend(4, liked, N=5, recalculate_user=True)
        assert ids.shape == (5,) and not set(ids) & set(liked.indices)
        assert np.array_equal(model.item_embeddings, items) and np.array_equal(model.item_translations, beta)
        # partial_fit_users keeps the users: beta of the items they like now counts them
        n_users = model.user_embeddings.shape[0]
        new = [0, 5, 9]
        rows = model.partial_fit_users([2, n_users], [[3, 4], new], epochs=3)
        assert rows.tolist() == [2, n_users]
        assert np.array_equal(model.item_embeddings, items)
        user = model.user_embeddings
        np.testing.assert_allclose(model.user_translations[n_users], items[new].mean(0), atol=1e-6)
        users_of_5 = model.user_items[:, 5].nonzero()[0]
        assert n_users in users_of_5
        np.testing.assert_allclose(model.item_translations[5], user[users_of_5].mean(0), atol=1e-6)
        got = model.recommend(n_users, model.user_items[n_users], N=5)[0]
        assert not set(got) & set(new)

    def test_the_step_keeps_the_translation_inside_the_ball(self, fitted):
        # alpha and beta are means of rows in the unit ball, so ||alpha * beta|| <= 1 (the paper's bound on r)
        alpha, beta = fitted.user_translations, fitted.item_translations
        assert np.linalg.norm(alpha, axis=1).max() <= 1 + 1e-6 and np.abs(beta).max() <= 1 + 1e-6


# ---------------------------------------------------------------------- gradients against autograd
def _problem(seed=0, grouped=True):
    """6 users x 10 items, user 5 and item 9 with no positives; 8 positive pairs (users and items
    repeat), 4 negatives each among items 6-9 (item 9, without users, among them), drawn as a shared
    draw in groups of 3 (the last padded) with three entries redrawn for their row (items 0, 9, 8:
    0 is also a positive, 8 also shared) -- or, ``grouped=False``, the same negatives as independent
    draws."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_users, n_items, d = 6, 10, 3
    dense = (rng.random((n_users, n_items)) < 0.4).astype(float)
    dense[5], dense[:, 9] = 0.0, 0.0
    dense[0, 0] = dense[1, 1] = 1.0
    liked = sp.csr_matrix(dense)
    ue = 0.5 * torch.randn(n_users, d, generator=gen, dtype=torch.float64)
    ie = 0.5 * torch.randn(n_items, d, generator=gen, dtype=torch.float64)
    coo = liked.tocoo()
    pick = [0, 2, 4, 6, 7, 9, 11, 13]  # seed 0: users 0-3; item 3 (of users 0, 1) is never drawn
    users = torch.tensor(coo.row[pick], dtype=torch.long)
    positives = torch.tensor(coo.col[pick], dtype=torch.long)
    shared = torch.randint(6, n_items, (3, 4), generator=gen)
    negatives = shared.repeat_interleave(3, 0)[:8].clone()
    fix_rows, fix_cols = torch.tensor([1, 4, 7]), torch.tensor([2, 0, 3])
    negatives[fix_rows, fix_cols] = torch.tensor([0, 9, 8])
    if grouped:
        draw = NegativeDraw(shared, negatives, fix_rows, fix_cols, 3)
    else:
        empty = torch.empty(0, dtype=torch.long)
        draw = NegativeDraw(negatives, negatives, empty, empty, 1)
    return liked, ue, ie, users, positives, draw


def _dense(buf, n, width):
    rows, grads = buf.pop()
    out = torch.zeros(n, width, dtype=grads.dtype, device=grads.device)
    out[rows] = grads
    return out


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("dist_reg, nbr_reg", [(0.0, 0.0), (0.3, 0.7)])
def test_transcf_gradients_match_autograd_on_the_loop_reference(dist_reg, nbr_reg, grouped):
    liked, ue, ie, users, positives, draw = _problem(grouped=grouped)
    kw = dict(margin=1.5, dist_reg=dist_reg, nbr_reg=nbr_reg)
    bufs = GradBuffer(6, 3, dtype=torch.float64), GradBuffer(10, 3, dtype=torch.float64)
    parts = transcf_gradients(ue, ie, Neighbourhoods(liked, "cpu", torch.float64), users, positives, draw,
                              *bufs, **kw)
    leaves = [t.clone().requires_grad_() for t in (ue, ie)]
    ref = transcf_loss_reference(*leaves, liked, users, positives, draw.negatives, **kw)
    ref.backward()
    assert sum(parts.values()) == pytest.approx(ref.item(), rel=RTOL)
    zero = dict(margin=1.5, dist_reg=0.0, nbr_reg=0.0)
    hinge = transcf_loss_reference(ue, ie, liked, users, positives, draw.negatives, **zero)
    assert parts["hinge_loss"] == pytest.approx(hinge.item(), rel=RTOL)
    for buf, leaf in zip(bufs, leaves):
        torch.testing.assert_close(_dense(buf, *leaf.shape), leaf.grad, rtol=RTOL, atol=ATOL)
    # the problem has active and inactive hinges, some of them on redrawn entries
    hinges = _violations(ue, ie, liked, users, positives, draw.negatives, 1.5)
    assert 0 < (hinges > 0).double().mean() < 1
    assert (hinges[draw.fix_rows, draw.fix_cols] > 0).any() or not grouped
    # through the neighbourhoods a gradient reaches rows the batch never drew (item 3 through its
    # users' alpha, the users of the drawn items through beta): alpha and beta are functions of the tables
    drawn_items = set(positives.tolist()) | set(draw.negatives.reshape(-1).tolist())
    item_rows = set((leaves[1].grad != 0).any(1).nonzero().squeeze(1).tolist())
    user_rows = set((leaves[0].grad != 0).any(1).nonzero().squeeze(1).tolist())
    assert item_rows - drawn_items and user_rows - set(users.tolist())


def _violations(ue, ie, liked, users, positives, negatives, margin):
    """(B, U) ``margin + d(u,i) - d(u,k)`` by loops (numpy)."""
    r = sp.csr_matrix(liked)
    u, v = ue.numpy(), ie.numpy()
    alpha = np.stack([v[r[w].indices].mean(0) if r[w].nnz else np.zeros(v.shape[1]) for w in range(r.shape[0])])
    beta = np.stack([u[r[:, j].nonzero()[0]].mean(0) if r[:, j].nnz else np.zeros(v.shape[1])
                     for j in range(r.shape[1])])

    def dist(w, j):
        return np.sum((u[w] + alpha[w] * beta[j] - v[j]) ** 2)

    return torch.tensor([[margin + dist(w, i) - dist(w, k) for k in negs.tolist()]
                         for w, i, negs in zip(users.tolist(), positives.tolist(), negatives)])


def test_a_fold_in_step_trains_the_users_against_fixed_items_and_beta():
    liked, ue, ie, users, positives, draw = _problem(1)
    beta = Neighbourhoods(liked, "cpu", torch.float64).item_means(0.5 * torch.ones_like(ue))  # any fixed rows
    kw = dict(margin=1.5, dist_reg=0.3, nbr_reg=0.7)
    buf = GradBuffer(6, 3, dtype=torch.float64)
    parts = transcf_gradients(ue, ie, Neighbourhoods(liked, "cpu", torch.float64), users, positives, draw,
                              buf, None, beta=beta, **kw)
    leaf = ue.clone().requires_grad_()
    ref = transcf_loss_reference(leaf, ie, liked, users, positives, draw.negatives, beta=beta, **kw)
    ref.backward()
    assert sum(parts.values()) == pytest.approx(ref.item(), rel=RTOL)
    torch.testing.assert_close(_dense(buf, 6, 3), leaf.grad, rtol=RTOL, atol=ATOL)


def test_one_pair_by_hand():
    # one user with item 0 (so alpha_u = v_0 = (1, 0), beta_0 = u = (0, 0.5)), negative item 1
    # without users (beta_1 = 0): r_u0 = alpha * beta_0 = (0, 0), r_u1 = 0.
    # d(u,0) = |(0, .5) - (1, 0)|^2 = 1.25, d(u,1) = |(0, .5) - (0, 1)|^2 = 0.25; margin 0.5:
    # hinge = 0.5 + 1.25 - 0.25 = 1.5 (active), no regularisers. x = u - v0 = (-1, .5), y = u - v1 = (0, -.5);
    # dL/du = 2x - 2y = (-2, 2); dL/dalpha = 2x*beta_0 - 2y*beta_1 = (0, .5), reaching v_0 (u's only item);
    # dL/dv0 = -2x + dalpha = (2, -1) + (0, .5) = (2, -.5); dL/dv1 = 2y = (0, -1);
    # dL/dbeta_0 = 2x*alpha = (-2, 0), reaching u (0's only user): dL/du total (-4, 2); dL/dbeta_1 = -2y*alpha = 0
    ue = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    ie = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    liked = sp.csr_matrix(np.array([[1.0, 0.0]]))
    bufs = GradBuffer(1, 2, dtype=torch.float64), GradBuffer(2, 2, dtype=torch.float64)
    neg, empty = torch.tensor([[1]]), torch.empty(0, dtype=torch.long)
    parts = transcf_gradients(ue, ie, Neighbourhoods(liked, "cpu", torch.float64), torch.tensor([0]),
                              torch.tensor([0]), NegativeDraw(neg, neg, empty, empty, 1), *bufs, margin=0.5,
                              dist_reg=0.0, nbr_reg=0.0)
    assert parts == pytest.approx({"hinge_loss": 1.5, "dist_loss": 0.0, "nbr_loss": 0.0}, abs=1e-12)
    torch.testing.assert_close(_dense(bufs[0], 1, 2), torch.tensor([[-4.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(_dense(bufs[1], 2, 2), torch.tensor([[2.0, -0.5], [0.0, -1.0]], dtype=torch.float64))


def test_the_step_scorer_is_the_models_scorer(data_split):
    model = TransCF(factors=8, batch_size=500, epochs=2, show_progress=False, verbose=False).fit(data_split.train)
    step = TransCFStep(model.config, model._user, model._item, model.user_items, "torch")
    users = np.arange(10)
    torch.testing.assert_close(step.scorer()(users), model.scorer()(users), rtol=0, atol=1e-6)
    draw_neg = torch.tensor([[1, 2]] * 3)
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(draw_neg[:1], draw_neg, empty, empty, 3)
    total, parts = step.batch(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), draw, GradBuffer(*model._user.shape),
                              GradBuffer(*model._item.shape))
    assert total == pytest.approx(sum(parts.values())) and set(parts) == {"hinge_loss", "dist_loss", "nbr_loss"}


@pytest.mark.parametrize("field, value", [("margin", 0.0), ("margin", float("nan")), ("dist_reg", -0.1),
                                          ("nbr_reg", float("inf")), ("nbr_reg", "1")])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TransCFConfig(**{field: value})


# ---------------------------------------------------------------------- CUDA (skipped without a device)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("grouped", [True, False])
def test_transcf_gradients_on_cuda_equal_the_cpu_ones(grouped):
    liked, ue, ie, users, positives, draw = _problem(grouped=grouped)
    out = {}
    for device in ("cpu", "cuda"):
        d = NegativeDraw(*(t.to(device) for t in (draw.shared, draw.negatives, draw.fix_rows, draw.fix_cols)),
                         draw.group_size)
        bufs = [GradBuffer(n, 3, dtype=torch.float64, device=device) for n in (6, 10)]
        parts = transcf_gradients(ue.to(device), ie.to(device), Neighbourhoods(liked, device, torch.float64),
                                  users.to(device), positives.to(device), d, *bufs, margin=1.5, dist_reg=0.3,
                                  nbr_reg=0.7)
        out[device] = parts, [_dense(b, n, 3).cpu() for b, n in zip(bufs, (6, 10))]
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=RTOL)
    for got, want in zip(out["cuda"][1], out["cpu"][1]):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@cuda
def test_transcf_trains_on_cuda_and_loads_on_the_cpu(data_split, tmp_path):
    model = TransCF(factors=16, batch_size=500, epochs=3, device="cuda", show_progress=False,
                    verbose=False).fit(data_split.train, data_split.valid)
    assert model._translations()[1].device.type == "cuda"
    ids, scores = model.recommend(np.arange(5), data_split.train.matrix[:5], N=10)
    again = load_model(model.save(tmp_path / "m"))
    assert again.device.type == "cpu"
    np.testing.assert_allclose(again.item_translations, model.item_translations, rtol=0, atol=1e-6)
    np.testing.assert_allclose(again.scorer()(np.arange(5)).numpy(), model.scorer()(np.arange(5)).cpu().numpy(),
                               rtol=0, atol=SCORE_ATOL)
    cpu_ids, cpu_scores = again.recommend(np.arange(5), data_split.train.matrix[:5], N=10)
    np.testing.assert_allclose(cpu_scores, scores, rtol=0, atol=SCORE_ATOL)
    q = model.fold_in(data_split.train.matrix[:2], epochs=2)
    assert q.shape == (2, 32)
