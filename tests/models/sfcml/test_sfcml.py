"""SFCML: the shared behaviour suite, its closed-form gradients against autograd on the paper's loss
written as the plain double sum over all (positive, negative) pairs, its equality with the authors'
score form on the unit sphere, and what "sampling-free" and "every item row" mean in training."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.errors import ConfigError
from metricrec.models import load_model
from metricrec.models.sfcml import SFCML, SFCMLConfig
from metricrec.models.sfcml.step import (SFCMLStep, item_moments, sfcml_gradients, sfcml_loss_reference,
                                         user_weights)
from metricrec.training.optim import GradBuffer
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401

# Float64 comparisons of the closed form with autograd on the double sum. Both compute sums of O(1)
# terms (distances in [0, 4] squared, at most a few hundred of them per entry); the closed form
# takes the sums over all items as moments and subtracts the positives' share, which loses a few
# digits to cancellation (each entry of the moments is up to ~n * 16 while the results are O(1)..O(n)),
# so the two agree to ~1e-13 relative here; a wrong or missing term is O(0.01) or more. 1e-9 relative
# (1e-10 absolute, for entries that should be near 0) is far from both.
RTOL, ATOL = 1e-9, 1e-10


class TestSFCML(RecommenderBehaviour):
    # a random start (not the spectral default, which already ranks this data well before any
    # epoch): "learns the planted structure" is then what the training step did
    def make(self, **kw):
        return SFCML(factors=16, batch_size=500, init="random", learning_rate=0.3, show_progress=False,
                     verbose=False, **kw)

    def test_auto_trains_with_the_compiled_kernel_where_numba_is_installed(self, fitted):
        pytest.importorskip("numba")
        assert fitted._trainer.step.backend == "numba"

    def test_fold_in_leaves_the_items_as_trained(self, fitted, tmp_path):
        model = load_model(fitted.save(tmp_path / "m"))  # a copy: the class's fitted model stays as it is
        items = model.item_embeddings.copy()
        liked = [list(model.item_ids[[0, 5, 9]]), list(model.item_ids[[3, 4]])]
        rows = model.partial_fit_users([model.user_ids[2], int(model.user_ids.max()) + 1], liked, epochs=3)
        assert rows.tolist() == [2, fitted.user_embeddings.shape[0]]
        assert np.array_equal(model.item_embeddings, items)
        assert not np.array_equal(model.user_embeddings[2], fitted.user_embeddings[2])


# ---------------------------------------------------------------------- the loss and its gradients
def _problem(seed=0, n_users=6, n_items=11, d=3, scale=0.5):
    """A small float64 problem: users with 1 to 5 positives (user 5 has one), item 0 nobody's
    positive, item 1 everybody's but user 5's; and a batch in which users repeat and user 4 is
    absent (its positives are not part of the batch's sums)."""
    gen = torch.Generator().manual_seed(seed)
    ue = scale * torch.randn(n_users, d, generator=gen, dtype=torch.float64)
    ie = scale * torch.randn(n_items, d, generator=gen, dtype=torch.float64)
    rows = {0: [1, 2, 3], 1: [1, 4, 5, 6, 7], 2: [1, 8], 3: [1, 2, 9, 10], 4: [1, 3, 6], 5: [10]}
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    train = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_users, n_items))
    batch = [(0, 1), (0, 3), (1, 4), (1, 7), (2, 8), (3, 1), (3, 9), (3, 10), (5, 10), (1, 1)]
    users = torch.tensor([u for u, _ in batch])
    positives = torch.tensor([i for _, i in batch])
    return ue, ie, train, users, positives


def _dense(buf, n, d):
    rows, grads = buf.pop()
    out = torch.zeros(n, d, dtype=grads.dtype)
    out[rows] = grads
    return rows, out


@pytest.mark.parametrize("weighting", ["user", "pair"])
@pytest.mark.parametrize("scale", [0.5, 0.1])
def test_sfcml_gradients_match_autograd_on_the_double_sum(weighting, scale):
    ue, ie, train, users, positives = _problem(scale=scale)
    w = user_weights(train, weighting)
    bufs = GradBuffer(*ue.shape, dtype=torch.float64), GradBuffer(*ie.shape, dtype=torch.float64)
    parts = sfcml_gradients(ue, ie, users, positives, train, w, *bufs, margin=0.7)

    leaves = [t.clone().requires_grad_() for t in (ue, ie)]
    ref = sfcml_loss_reference(*leaves, users, positives, train, w, margin=0.7)
    ref.backward()
    assert sum(parts.values()) == pytest.approx(ref.item(), rel=RTOL)
    assert parts["pair_loss"] > 0 and parts["spread_loss"] > 0

    user_rows, got_u = _dense(bufs[0], *ue.shape)
    torch.testing.assert_close(got_u, leaves[0].grad, rtol=RTOL, atol=ATOL)
    assert sorted(user_rows.tolist()) == sorted(users.unique().tolist())  # the batch's users only
    assert torch.all(leaves[0].grad[4] == 0)  # user 4 is not in the batch
    item_rows, got_i = _dense(bufs[1], *ie.shape)
    torch.testing.assert_close(got_i, leaves[1].grad, rtol=RTOL, atol=ATOL)
    assert item_rows.numel() == ie.shape[0]  # every item is somebody's negative: every row is touched


def test_the_per_pair_loss_is_the_squared_distance_to_the_negatives_mean_plus_their_variance():
    # l(u,i) = 1/|N_u| sum_j (m + d(u,i) - d(u,j))^2 = (m + d(u,i) - mu_u)^2 + var_u, the split the
    # step reports as pair_loss and spread_loss
    ue, ie, train, users, positives = _problem()
    w = user_weights(train, "pair")
    parts = sfcml_gradients(ue, ie, users, positives, train, w, GradBuffer(*ue.shape, dtype=torch.float64),
                            None, margin=0.7)
    dense = train.toarray() > 0
    pair = spread = 0.0
    for u, i in zip(users.tolist(), positives.tolist()):
        d = ((ue[u] - ie) ** 2).sum(1).numpy()[~dense[u]]
        pair += (0.7 + float(((ue[u] - ie[i]) ** 2).sum()) - d.mean()) ** 2
        spread += d.var()
    assert parts == pytest.approx({"pair_loss": pair, "spread_loss": spread}, rel=1e-12)


def test_an_epoch_of_the_user_weighting_is_the_papers_risk_in_the_authors_score_form():
    """On the unit sphere (the authors' tables), d(u,j) - d(u,i) = 2 u.(v_i - v_j), and the paper's
    per-user risk is the mean over P_u x N_u of (m - 2 u.(v_i - v_j))^2 (LibCML's score form). One
    pass over every training pair with the "user" weighting is pbar times its sum over users."""
    ue, ie, train, _, _ = _problem(seed=3)
    ue, ie = ue / ue.norm(dim=1, keepdim=True), ie / ie.norm(dim=1, keepdim=True)
    r, c = train.nonzero()
    users, positives = torch.from_numpy(r).long(), torch.from_numpy(c).long()
    m = 1.5
    parts = sfcml_gradients(ue, ie, users, positives, train, user_weights(train, "user"),
                            GradBuffer(*ue.shape, dtype=torch.float64), None, margin=m)
    dense = train.toarray() > 0
    risk = 0.0
    for u in range(ue.shape[0]):
        score = 2.0 * (ie @ ue[u]).numpy()
        pos, neg = score[dense[u]], score[~dense[u]]
        risk += ((m - (pos[:, None] - neg[None, :])) ** 2).mean()
    pbar = train.nnz / train.shape[0]
    assert sum(parts.values()) == pytest.approx(pbar * risk, rel=1e-12)


def test_the_step_ignores_the_sampled_negatives():
    ue, ie, train, users, positives = _problem()
    out = []
    for negatives in (torch.zeros(users.numel(), 1, dtype=torch.long), torch.full((users.numel(), 3), 9)):
        empty = torch.empty(0, dtype=torch.long)
        draw = NegativeDraw(negatives[:1], negatives, empty, empty, users.numel())
        step = SFCMLStep(SFCMLConfig(factors=3, margin=0.7), ue, ie, train, "torch")
        bufs = GradBuffer(*ue.shape, dtype=torch.float64), GradBuffer(*ie.shape, dtype=torch.float64)
        total, parts = step.batch(users, positives, draw, *bufs)
        assert total == pytest.approx(sum(parts.values()))
        out.append([total, *(b.pop()[1] for b in bufs)])
    assert out[0][0] == out[1][0]
    assert torch.equal(out[0][1], out[1][1]) and torch.equal(out[0][2], out[1][2])


def test_a_fold_in_step_computes_no_item_gradient_and_the_moments_once():
    ue, ie, train, users, positives = _problem()
    step = SFCMLStep(SFCMLConfig(factors=3), ue, ie, train, "torch", train_items=False)
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(positives[:1, None], positives[:, None], empty, empty, users.numel())
    item_buf = GradBuffer(*ie.shape, dtype=torch.float64)
    step.batch(users, positives, draw, GradBuffer(*ue.shape, dtype=torch.float64), item_buf)
    moments = step._frozen_moments
    step.batch(users, positives, draw, GradBuffer(*ue.shape, dtype=torch.float64), item_buf)
    assert step._frozen_moments is moments
    assert not item_buf.touched.any()
    torch.testing.assert_close(moments.M, ie.T @ ie, rtol=1e-12, atol=0)


def test_item_moments_are_the_sums_over_the_table():
    ie = torch.randn(7, 4, dtype=torch.float64)
    mo = item_moments(ie)
    q = (ie * ie).sum(1)
    for got, want in ((mo.S, ie.sum(0)), (mo.Q1, q.sum()), (mo.Q2, (q * q).sum()), (mo.R, (q[:, None] * ie).sum(0)),
                      (mo.M, sum(torch.outer(v, v) for v in ie)), (mo.q, q)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert mo.n == 7


def test_user_weights():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1.0]]))
    # pbar = 6 / 2 users with positives = 3: w_u = 3 / |P_u|; 0 for the user without any
    assert user_weights(train, "user").tolist() == [1.5, 0.0, 0.75]
    assert user_weights(train, "pair").tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------- training
def test_training_is_sampling_free_whatever_the_negatives_drawn(data_split):
    # the trainer still draws U negatives a pair (its own seeded generator); the step uses none, so
    # U changes nothing at all
    kw = dict(factors=8, batch_size=500, epochs=2, show_progress=False, verbose=False)
    one = SFCML(n_negatives=1, **kw).fit(data_split.train)
    many = SFCML(n_negatives=7, negative_group=1, **kw).fit(data_split.train)
    assert np.array_equal(one.item_embeddings, many.item_embeddings)
    assert np.array_equal(one.user_embeddings, many.user_embeddings)


def test_every_item_row_moves_in_every_batch(data_split):
    # the all-negatives term reaches every item: one batch updates the whole item table, even the
    # items nobody holds in the batch
    model = SFCML(factors=8, batch_size=50, epochs=1, init="random", show_progress=False, verbose=False)
    model.fit_partial(data_split.train)
    before = model.item_embeddings.copy()
    step, trainer = model._trainer.step, model._trainer
    users, items = trainer.pairs(torch.arange(50))
    ug, ig = trainer._grads
    step.batch(users, items, None, ug, ig)
    assert bool(ig.touched.all())
    trainer._opt[1].step_buffer(ig, max_norm=1.0)
    moved = np.abs(model.item_embeddings - before).max(1) > 0
    assert moved.all()
    assert np.linalg.norm(model.item_embeddings, axis=1).max() <= 1.0 + 1e-6  # and stays in the ball


@pytest.mark.parametrize("field, value", [("margin", 0.0), ("margin", -1.0), ("margin", float("nan")),
                                          ("margin", True), ("margin", "1"), ("weighting", "items")])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SFCMLConfig(**{field: value})


def test_defaults_are_cmls_space_with_batches_of_a_quarter_of_the_pairs():
    cfg = SFCMLConfig()
    assert (cfg.init, cfg.max_norm, cfg.valid_users, cfg.eval_every) == ("spectral", 1.0, 1000, 5)
    assert (cfg.margin, cfg.weighting, cfg.learning_rate, cfg.factors) == (1.5, "user", 0.3, 256)
    assert SFCML().distance == "euclidean" and SFCML.model_name == "SFCML"
    assert cfg.resolved_batch_size(32_858, 2_625) == 8_214  # ml-100k: 4 batches an epoch
    assert cfg.resolved_batch_size(2_000) == 1_000
    assert cfg.resolved_batch_size(10**7, 10_000) == 50_000
    assert cfg.replace(batch_size=77).resolved_batch_size(32_858) == 77


# ---------------------------------------------------------------------- CUDA (skipped without a device)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("weighting", ["user", "pair"])
def test_sfcml_gradients_on_cuda_equal_the_cpu_ones(weighting):
    ue, ie, train, users, positives = _problem()
    out = {}
    for device in ("cpu", "cuda"):
        bufs = [GradBuffer(*t.shape, dtype=torch.float64, device=device) for t in (ue, ie)]
        parts = sfcml_gradients(ue.to(device), ie.to(device), users.to(device), positives.to(device), train,
                                user_weights(train, weighting).to(device), *bufs, margin=0.7)
        out[device] = parts, [tuple(x.cpu() for x in b.pop()) for b in bufs]
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=RTOL)
    for (rows_c, g_c), (rows_g, g_g) in zip(out["cpu"][1], out["cuda"][1]):
        assert torch.equal(rows_c, rows_g)
        torch.testing.assert_close(g_g, g_c, rtol=RTOL, atol=ATOL)


@cuda
def test_sfcml_trains_on_cuda_and_loads_on_the_cpu(data_split, tmp_path):
    model = SFCML(factors=16, batch_size=500, epochs=3, device="cuda", show_progress=False,
                  verbose=False).fit(data_split.train, data_split.valid)
    again = load_model(model.save(tmp_path / "m"))
    assert again.device.type == "cpu" and np.array_equal(again.item_embeddings, model.item_embeddings)
