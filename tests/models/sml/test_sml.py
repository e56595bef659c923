"""SML: the shared behaviour suite, its hand-written gradients against autograd on the paper's loss,
its learned margins (bounds, persistence, best epoch, fold-in) and its reduction to CML."""

import numpy as np
import pytest
import torch

from metricrec.errors import ConfigError
from metricrec.metrics import evaluate_part
from metricrec.models import CML, SML, SMLConfig, load_model
from metricrec.serialization import ModelFormatError
from metricrec.models.sml.step import SMLStep, sml_gradients, sml_loss_reference
from metricrec.training.checkpoint import Checkpointer
from crash_checkpointer import Boom, CrashAfter
from metricrec.training.optim import GradBuffer
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401

# Float64 comparisons of the hand-written gradients with autograd: both compute the same sums of
# O(1) terms (at most a few dozen per entry) in another order, and the step's |x|^2 + |v|^2 - 2 x.v
# loses a few digits to cancellation, so they agree to ~1e-14; a wrong or missing term is O(0.01)
# or more. 1e-9 relative (1e-11 absolute, for entries that should be 0) is far from both.
RTOL, ATOL = 1e-9, 1e-11


def _recall20(model, split):
    return evaluate_part(model.scorer(), split, "test", ks=(20,), metrics=("recall",))["recall@20"]


def _popularity_recall20(split):
    counts = np.asarray(split.train.matrix.sum(0)).ravel().astype(np.float32)
    return evaluate_part(lambda u: torch.from_numpy(np.tile(counts, (len(u), 1))), split, "test", ks=(20,),
                         metrics=("recall",))["recall@20"]


class TestSML(RecommenderBehaviour):
    # a random start (not SML's spectral default, which already ranks this data well before any
    # epoch): "learns the planted structure" is then what the training step did
    def make(self, **kw):
        return SML(factors=16, batch_size=500, init="random", learning_rate=0.5, show_progress=False, verbose=False,
                   **kw)

    def test_margins_are_learned_within_their_bounds(self, fitted):
        l = fitted.config.margin_max
        for margins, n in ((fitted.user_margins, fitted.user_embeddings.shape[0]),
                           (fitted.item_margins, fitted.item_embeddings.shape[0])):
            assert margins.shape == (n,) and margins.dtype == np.float32
            assert np.all(np.isfinite(margins)) and margins.min() >= 0.0 and margins.max() <= l
        # learned per user, not left at their common start: the hinges pull the often-violated
        # users' margins down from l
        assert fitted.user_margins.std() > 0.01 and fitted.user_margins.mean() < 0.9 * l
        # an average item margin settles where a fraction margin_reg / item_weight of its hinges are
        # active: at the defaults (0.15 / 0.1 > 1) the regulariser outweighs the item hinge and the
        # item margins stay at l (only an item far more popular than the rest could move)
        assert fitted.config.margin_reg > fitted.config.item_weight
        assert np.mean(fitted.item_margins == np.float32(l)) > 0.9 and fitted.item_margins.std() < 0.01

    def test_item_margins_are_learned_when_the_item_hinge_outweighs_the_regulariser(self, data_split):
        model = self.make(epochs=15, margin_reg=0.05).fit(data_split.train, data_split.valid)
        l = model.config.margin_max
        assert model.item_margins.std() > 0.01 and model.item_margins.min() < 0.9 * l

    def test_margins_round_trip_exactly_through_load_model(self, fitted, tmp_path):
        again = load_model(fitted.save(tmp_path / "m"))
        assert type(again) is SML
        assert np.array_equal(again.user_margins, fitted.user_margins)
        assert np.array_equal(again.item_margins, fitted.item_margins)
        single = load_model(fitted.save(tmp_path / "one.npz"))
        assert np.array_equal(single.item_margins, fitted.item_margins)

    @pytest.mark.parametrize("name, change, words", [
        ("user_margins", lambda a: a + 2.0, "finite margins in \\[0, 1\\]"),
        ("item_margins", lambda a: -a - 0.1, "finite margins in \\[0, 1\\]"),
        ("item_margins", lambda a: np.where(np.arange(a.size) == 3, np.nan, a), "finite margins"),
        ("user_margins", lambda a: a[:-1], "'user_margins' has shape .* expected"),
        ("item_margins", lambda a: a.reshape(-1, 1), "'item_margins' has shape .* expected"),
        ("item_margins", None, "'item_margins' is missing"),
    ])
    def test_corrupted_margins_are_one_clear_error(self, fitted, tmp_path, name, change, words):
        path = fitted.save(tmp_path / "m")
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if change is None:
            del arrays[name]
        else:
            arrays[name] = change(arrays[name]).astype(np.float32)
        np.savez(path / "weights.npz", **arrays)
        with pytest.raises(ModelFormatError, match=words) as info:
            load_model(path)
        assert str(path) in str(info.value)

    def test_fold_in_leaves_the_item_side_and_known_users_as_trained(self, fitted, tmp_path):
        model = load_model(fitted.save(tmp_path / "m"))  # a copy: the class's fitted model stays as it is
        items, item_margins = model.item_embeddings.copy(), model.item_margins.copy()
        user_margins = model.user_margins.copy()
        n_users = user_margins.shape[0]
        liked = [list(model.item_ids[[0, 5, 9]]), list(model.item_ids[[3, 4]])]
        new_id = int(model.user_ids.max()) + 1
        rows = model.partial_fit_users([model.user_ids[2], new_id], liked, epochs=3)
        assert rows.tolist() == [2, n_users]
        assert np.array_equal(model.item_embeddings, items) and np.array_equal(model.item_margins, item_margins)
        # a refolded user keeps its trained margin, a new one starts where every margin starts
        assert np.array_equal(model.user_margins[:n_users], user_margins)
        assert model.user_margins[n_users] == np.float32(model.config.initial_margin)
        assert not np.array_equal(model.user_embeddings[2], fitted.user_embeddings[2])

    def test_the_best_epoch_restores_the_margins_with_the_tables(self, data_split):
        seen = []

        def keep(record, trainer):
            step = trainer.step
            seen.append((step.user_emb.clone(), step.user_margin.clone(), step.item_margin.clone()))

        # SML's spectral start ranks this data best early: the valid recall peaks before the last epoch
        # (a fixed linear decay: the adaptive budget of the defaults may stop before the sixth epoch)
        model = SML(factors=16, batch_size=500, epochs=6, lr_schedule="linear", eval_every=1, patience=0,
                    show_progress=False, verbose=False).fit(data_split.train, data_split.valid, callbacks=[keep])
        best = model.history.best_epoch
        assert len(seen) == 6 and best < 6, best
        user, user_margin, item_margin = seen[best - 1]
        assert torch.equal(torch.from_numpy(model.user_embeddings), user)
        assert torch.equal(torch.from_numpy(model.user_margins), user_margin)
        assert torch.equal(torch.from_numpy(model.item_margins), item_margin)
        assert not torch.equal(seen[-1][1], user_margin)  # the margins did move after the best epoch

    def test_auto_trains_with_the_compiled_kernel_where_numba_is_installed(self, fitted):
        pytest.importorskip("numba")
        assert fitted._trainer.step.backend == "numba"


# ---------------------------------------------------------------------- gradients against autograd
def _problem(seed=0):
    """7 positive pairs in groups of 3 (the last group padded) sharing U = 4 negatives, three entries
    redrawn for their row; users and items repeat, item 6 is a positive (row 1) and a shared negative
    (rows 3-5), items 0-4 are shared by two groups and item 11 is both shared and redrawn."""
    gen = torch.Generator().manual_seed(seed)
    d, n_users, n_items = 3, 5, 14
    ue = 0.5 * torch.randn(n_users, d, generator=gen, dtype=torch.float64)
    ie = 0.5 * torch.randn(n_items, d, generator=gen, dtype=torch.float64)
    um = 0.1 + 0.8 * torch.rand(n_users, generator=gen, dtype=torch.float64)
    im = 0.1 + 0.8 * torch.rand(n_items, generator=gen, dtype=torch.float64)
    users = torch.tensor([0, 1, 1, 2, 3, 4, 0])
    positives = torch.tensor([5, 6, 7, 5, 8, 9, 10])
    shared = torch.tensor([[0, 1, 2, 3], [1, 4, 6, 11], [2, 3, 0, 4]])
    negatives = shared.repeat_interleave(3, 0)[:7].clone()
    fix_rows, fix_cols = torch.tensor([1, 4, 6]), torch.tensor([2, 0, 3])
    negatives[fix_rows, fix_cols] = torch.tensor([12, 13, 11])
    # the redrawn item of row 1 is the closest to its user, that of row 4 the closest to its
    # positive: "hardest" then picks a redrawn entry on each side
    ie[12] = ue[1] + 0.01 * torch.randn(d, generator=gen, dtype=torch.float64)
    ie[13] = ie[9] + 0.01 * torch.randn(d, generator=gen, dtype=torch.float64)
    draw = NegativeDraw(shared, negatives, fix_rows, fix_cols, 3)
    return ue, ie, um, im, users, positives, draw


def _dense(buf, n, width):
    rows, grads = buf.pop()
    out = torch.zeros(n, width, dtype=grads.dtype)
    out[rows] = grads
    return rows, out


@pytest.mark.parametrize("hardest", [False, True])
def test_sml_gradients_match_autograd_on_the_reference_loss(hardest):
    ue, ie, um, im, users, positives, draw = _problem()
    lam, gamma = 0.7, 0.05
    bufs = [GradBuffer(ue.shape[0], 3, dtype=torch.float64), GradBuffer(ie.shape[0], 3, dtype=torch.float64),
            GradBuffer(ue.shape[0], 1, dtype=torch.float64), GradBuffer(ie.shape[0], 1, dtype=torch.float64)]
    parts = sml_gradients(ue, ie, um, im, users, positives, draw, *bufs, item_weight=lam, margin_reg=gamma,
                          hardest=hardest)

    leaves = [t.clone().requires_grad_() for t in (ue, ie, um, im)]
    ref = sml_loss_reference(*leaves, users, positives, draw.negatives, item_weight=lam, margin_reg=gamma,
                             hardest=hardest)
    ref.backward()
    assert sum(parts.values()) == pytest.approx(ref.item(), rel=RTOL)

    # the problem exercises both sides of every hinge and, for "hardest", the redrawn entries
    u, p, v = ue[users], ie[positives], ie[draw.negatives]
    d_ui = ((u - p) ** 2).sum(-1, keepdim=True)
    d_uk, d_ik = ((u[:, None] - v) ** 2).sum(-1), ((p[:, None] - v) ** 2).sum(-1)
    viol_u, viol_i = d_ui - d_uk + um[users, None], d_ui - d_ik + im[positives, None]
    for viol in (viol_u, viol_i):
        assert 0 < (viol > 0).double().mean() < 1
    if hardest:
        assert d_uk[1].argmin() == 2 and d_ik[4].argmin() == 0  # fix entries (1, 2) and (4, 0)
        assert viol_u[1, 2] > 0 and viol_i[4, 0] > 0
    # the separate values: the user-centric hinges, lambda times the item-centric ones, the regulariser
    keep_u = viol_u.clamp(min=0)
    keep_i = viol_i.clamp(min=0)
    if hardest:
        keep_u, keep_i = keep_u.gather(1, d_uk.argmin(1, keepdim=True)), keep_i.gather(1, d_ik.argmin(1, keepdim=True))
    else:
        keep_u, keep_i = keep_u / 4, keep_i / 4
    assert parts["user_loss"] == pytest.approx(keep_u.sum().item(), rel=RTOL)
    assert parts["item_loss"] == pytest.approx(lam * keep_i.sum().item(), rel=RTOL)
    reg = um[users.unique()].mean() + im[positives.unique()].mean()
    assert parts["margin_loss"] == pytest.approx(-gamma * 7 * reg.item(), rel=RTOL)

    for buf, leaf in zip(bufs, leaves):
        width = leaf.shape[1] if leaf.dim() == 2 else 1
        rows, got = _dense(buf, leaf.shape[0], width)
        want = leaf.grad.reshape(leaf.shape[0], width)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
        # every row the buffer left untouched has no gradient in autograd either
        untouched = torch.ones(leaf.shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.all(want[untouched] == 0)


def test_sml_one_pair_by_hand():
    # u = (0, 0), positive p = (1, 0), negative v = (0, 1); m_u = 0.5, n_i = 1.5, lambda 0.5, gamma 0.1:
    # d(u,p) = 1, d(u,v) = 1, d(p,v) = 2, so L_U = [1 - 1 + 0.5]_+ = 0.5, L_I = [1 - 2 + 1.5]_+ = 0.5,
    # L = 0.5 + 0.5 * 0.5 - 0.1 * 1 * (0.5 + 1.5) = 0.55;
    # dL/du = 2(v - p) + 0.5 * 2(u - p) = (-3, 2); dL/dp = 2(p - u) + 0.5 * 2(v - p) = (2, 1);
    # dL/dv = -2(v - u) - 0.5 * 2(v - p) = (1, -3); dL/dm_u = 1 - 0.1 = 0.9; dL/dn_i = 0.5 - 0.1 = 0.4
    ue = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    ie = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    um, im = torch.tensor([0.5], dtype=torch.float64), torch.tensor([1.5, 0.2], dtype=torch.float64)
    neg = torch.tensor([[1]])
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(neg, neg, empty, empty, 1)
    bufs = [GradBuffer(1, 2, dtype=torch.float64), GradBuffer(2, 2, dtype=torch.float64),
            GradBuffer(1, 1, dtype=torch.float64), GradBuffer(2, 1, dtype=torch.float64)]
    for hardest in (False, True):  # one negative: the mean and the hardest are the same hinge
        parts = sml_gradients(ue, ie, um, im, torch.tensor([0]), torch.tensor([0]), draw, *bufs,
                              item_weight=0.5, margin_reg=0.1, hardest=hardest)
        assert parts == pytest.approx({"user_loss": 0.5, "item_loss": 0.25, "margin_loss": -0.2}, abs=1e-12)
        want = ([[-3.0, 2.0]], [[2.0, 1.0], [1.0, -3.0]], [[0.9]], [[0.4]])  # rows [0], [0, 1], [0], [0]
        for buf, rows, value in zip(bufs, ([0], [0, 1], [0], [0]), want):
            got_rows, got = buf.pop()
            assert got_rows.tolist() == rows
            torch.testing.assert_close(got, torch.tensor(value, dtype=torch.float64), rtol=0, atol=1e-12)


def test_the_step_clamps_the_margins_to_their_bounds():
    # a margin rate so large that one AdaGrad step overshoots: a user or item with active hinges
    # (positive gradient) ends at 0, one whose hinges are all inactive (the regulariser's negative
    # gradient alone) at l; margins the batch does not touch stay where they were
    ue, ie, um, im, users, positives, draw = _problem()
    ue, ie, um, im = ue.float(), ie.float(), um.float(), im.float()
    cfg = SMLConfig(factors=3, margin_max=0.9, margin_lr=10.0, item_weight=0.7, margin_reg=0.5)
    before_u, before_i = um.clone(), im.clone()
    step = SMLStep(cfg, ue, ie, um, im, "torch")
    gu, gi = GradBuffer(5, 3), GradBuffer(14, 3)
    total, parts = step.batch(users, positives, draw, gu, gi)
    assert total == pytest.approx(sum(parts.values()))
    for margin, before, touched in ((um, before_u, users.unique()), (im, before_i, positives.unique())):
        at = margin[touched]
        low, high = at == 0, at == np.float32(0.9)
        assert torch.all(low | high) and low.any() and high.any(), at
        others = torch.ones_like(margin, dtype=torch.bool)
        others[touched] = False
        assert torch.equal(margin[others], before[others])


def test_a_fold_in_step_trains_no_item_margin():
    ue, ie, um, im, users, positives, draw = _problem()
    ue, ie, um, im = ue.float(), ie.float(), um.float(), im.float()
    before_u, before_i = um.clone(), im.clone()
    step = SMLStep(SMLConfig(factors=3, margin_lr=10.0), ue, ie, um, im, "torch", train_item_margins=False)
    step.batch(users, positives, draw, GradBuffer(5, 3), GradBuffer(14, 3))
    assert torch.equal(im, before_i)  # the item side stays as trained
    assert not torch.equal(um[users.unique()], before_u[users.unique()])  # the (new) users' margins train


@pytest.mark.parametrize("field, value", [("margin_max", 0.0), ("margin_max", float("nan")), ("margin_init", 1.5),
                                          ("margin_init", -0.1), ("item_weight", -1.0), ("margin_reg", -0.1),
                                          ("margin_lr", 0.0), ("negatives", "closest")])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SMLConfig(**{field: value})


def test_margins_at_a_bound_that_float32_rounds_up_still_load(data_split, tmp_path):
    # float32(0.1) is above the float64 0.1: margins held at their bound (the regulariser pushes the
    # item margins there) must not be refused by the loader's range check
    model = SML(factors=8, batch_size=500, epochs=1, margin_max=0.1, item_weight=0.0, show_progress=False,
                verbose=False).fit(data_split.train)
    assert model.item_margins.max() == np.float32(0.1) and float(np.float32(0.1)) > 0.1
    again = load_model(model.save(tmp_path / "m"))
    assert np.array_equal(again.item_margins, model.item_margins)


def test_margin_init_sets_where_the_margins_start(data_split):
    model = SML(factors=8, batch_size=500, margin_init=0.25, epochs=1, show_progress=False, verbose=False)
    model._init_tables(*data_split.train.shape)
    assert np.all(model.user_margins == np.float32(0.25)) and np.all(model.item_margins == np.float32(0.25))


# ---------------------------------------------------------------------- SML without its item side is CML
def test_without_the_item_side_and_with_pinned_margins_sml_trains_as_cml(data_split):
    """item_weight = 0, hardest negatives and a regulariser strong enough to hold every margin at l:
    SML's loss is then CML's plain triplet hinge (no rank weight) with margin l, on the closest of the
    same sampled negatives -- the same gradients, the same updates, the same model.

    The two steps compute the same float32 sums in another order, so the tables drift apart by
    rounding only: ~4e-6 after these 15 epochs (60 updates per row at most); 1e-4 leaves room for
    another CPU's kernels while a real difference in the maths moves rows by ~0.1."""
    common = dict(factors=16, batch_size=500, epochs=15, init="random", learning_rate=0.3, lr_schedule="linear",
                  warmup_epochs=1.0, max_norm=1.0, n_negatives=10, negative_group=16, show_progress=False,
                  verbose=False)
    cml = CML(margin=1.0, use_rank_weight=False, kernel="torch", **common).fit(data_split.train)
    sml = SML(margin_max=1.0, item_weight=0.0, negatives="hardest", margin_reg=1e3, **common).fit(data_split.train)
    assert np.all(sml.user_margins == 1.0) and np.all(sml.item_margins == 1.0)
    assert [e.parts["user_loss"] for e in sml.history.epochs] == pytest.approx(
        [e.parts["metric_loss"] for e in cml.history.epochs], rel=1e-4)
    np.testing.assert_allclose(sml.user_embeddings, cml.user_embeddings, rtol=0, atol=1e-4)
    np.testing.assert_allclose(sml.item_embeddings, cml.item_embeddings, rtol=0, atol=1e-4)
    # and what both learned is the planted structure, from a random start
    ours, popular = _recall20(sml, data_split), _popularity_recall20(data_split)
    assert ours > 1.5 * popular, (ours, popular)
    assert ours == pytest.approx(_recall20(cml, data_split), abs=0.01)


def test_learned_margins_without_the_item_side_still_learn_the_clusters(data_split):
    """The CML-like setting with the margins free (the default regulariser): per-user margins, CML's
    closest-of-U hinge; from a random start it finds the planted clusters."""
    model = SML(factors=16, batch_size=500, epochs=15, init="random", learning_rate=0.5, item_weight=0.0,
                negatives="hardest", show_progress=False, verbose=False).fit(data_split.train, data_split.valid)
    assert np.all(model.item_margins == np.float32(model.config.margin_max))  # no item hinge: only L_AM pushes
    assert model.user_margins.min() < model.config.margin_max  # the user hinges pulled margins down
    ours, popular = _recall20(model, data_split), _popularity_recall20(data_split)
    assert ours > 1.5 * popular, (ours, popular)


# ---------------------------------------------------------------------- checkpoints
def test_a_run_resumed_mid_epoch_is_bitwise_the_uninterrupted_one_margins_included(data_split, tmp_path):
    # bitwise: the same kernels with the same thread count in one process; the margins and their
    # AdaGrad accumulators are part of the checkpoint, or the resumed margins would take other steps
    kw = dict(factors=8, batch_size=200, epochs=4, eval_every=1, patience=0, show_progress=False, verbose=False)
    reference = SML(**kw).fit(data_split.train, data_split.valid)
    with pytest.raises(Boom):
        SML(**kw).fit(data_split.train, data_split.valid, callbacks=[CrashAfter(tmp_path / "ck", 13, every_minutes=1e-9)])
    resumed = Checkpointer(tmp_path / "ck", resume=True)
    again = SML(**kw).fit(data_split.train, data_split.valid, callbacks=[resumed])
    assert resumed.resumed_from["epoch"] >= 1
    for name in ("user_embeddings", "item_embeddings", "user_margins", "item_margins"):
        assert np.array_equal(getattr(again, name), getattr(reference, name)), name
    assert [(e.loss, e.parts) for e in again.history.epochs] == [(e.loss, e.parts) for e in reference.history.epochs]


# ---------------------------------------------------------------------- the compiled CPU kernel
@pytest.mark.parametrize("hardest", [False, True])
def test_sml_numba_kernel_fills_the_buffers_as_the_torch_step(hardest):
    # float32 on both sides: the same sums of O(1) terms in another order (the torch step's batched
    # |x|^2 + |v|^2 - 2 x.v against the kernel's direct differences), so they agree to float32
    # rounding, ~1e-6 of the values; 1e-5 relative and absolute is well above that and far below a
    # wrong or missing term (O(0.01) or more)
    pytest.importorskip("numba")
    from metricrec.models.sml.step_numba import sml_gradients_numba

    problem = _problem()
    ue, ie, um, im = (t.float() for t in problem[:4])
    users, positives, draw = problem[4:]
    out = []
    for fn in (sml_gradients, sml_gradients_numba):
        bufs = [GradBuffer(n, w) for n, w in ((5, 3), (14, 3), (5, 1), (14, 1))]
        parts = fn(ue, ie, um, im, users, positives, draw, *bufs, item_weight=0.7, margin_reg=0.05, hardest=hardest)
        out.append((parts, [b.pop() for b in bufs]))
    (p_t, b_t), (p_n, b_n) = out
    for key in p_t:
        assert p_n[key] == pytest.approx(p_t[key], rel=1e-5, abs=1e-6)
    for (rows_t, g_t), (rows_n, g_n) in zip(b_t, b_n):
        assert torch.equal(rows_t, rows_n)  # the same rows touched
        torch.testing.assert_close(g_n, g_t, rtol=1e-5, atol=1e-5)


def test_sml_numba_kernel_does_not_depend_on_the_thread_count():
    # each row's terms are summed in pair order by the one part that owns it: bitwise the same sums
    numba = pytest.importorskip("numba")
    from metricrec.models.sml.step_numba import sml_gradients_numba

    gen = torch.Generator().manual_seed(3)
    ue, ie = torch.randn(40, 8, generator=gen) / 3, torch.randn(60, 8, generator=gen) / 3
    um, im = torch.full((40,), 0.5), torch.full((60,), 0.5)
    users, positives = torch.randint(0, 40, (200,), generator=gen), torch.randint(0, 60, (200,), generator=gen)
    neg = torch.randint(0, 60, (200, 5), generator=gen)
    draw = NegativeDraw(neg, neg, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 1)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            bufs = [GradBuffer(n, w) for n, w in ((40, 8), (60, 8), (40, 1), (60, 1))]
            sml_gradients_numba(ue, ie, um, im, users, positives, draw, *bufs, item_weight=0.3, margin_reg=0.05)
            results.append([b.pop() for b in bufs])
    finally:
        numba.set_num_threads(before)
    for (r0, g0), (r1, g1) in zip(results[0], results[-1]):
        assert torch.equal(r0, r1) and torch.equal(g0, g1)


def test_auto_picks_among_the_models_own_backends():
    # a model with a torch step only must not train under the numba backend's thread policy (torch
    # on one thread while numba's pool would have run the kernel)
    from metricrec.training.backends import resolve_backend

    assert resolve_backend("auto", "cpu", ("torch",)) == "torch"
    assert resolve_backend("auto", "cpu", SML.backends) in SML.backends


# ---------------------------------------------------------------------- CUDA (skipped without a device)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("hardest", [False, True])
def test_sml_gradients_on_cuda_equal_the_cpu_ones(hardest):
    ue, ie, um, im, users, positives, draw = _problem()
    out = {}
    for device in ("cpu", "cuda"):
        move = [t.to(device) for t in (ue, ie, um, im, users, positives)]
        d = NegativeDraw(*(t.to(device) for t in (draw.shared, draw.negatives, draw.fix_rows, draw.fix_cols)),
                         draw.group_size)
        bufs = [GradBuffer(n, w, dtype=torch.float64, device=device) for n, w in ((5, 3), (14, 3), (5, 1), (14, 1))]
        parts = sml_gradients(*move[:4], *move[4:], d, *bufs, item_weight=0.7, margin_reg=0.05, hardest=hardest)
        out[device] = parts, [tuple(x.cpu() for x in b.pop()) for b in bufs]
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=RTOL)
    for (rows_c, g_c), (rows_g, g_g) in zip(out["cpu"][1], out["cuda"][1]):
        assert torch.equal(rows_c, rows_g)
        torch.testing.assert_close(g_g, g_c, rtol=RTOL, atol=ATOL)


@cuda
def test_sml_trains_on_cuda_and_loads_on_the_cpu(data_split, tmp_path):
    model = SML(factors=16, batch_size=500, epochs=3, device="cuda", show_progress=False,
                verbose=False).fit(data_split.train, data_split.valid)
    assert model._user_margin.device.type == "cuda" and model._item_margin.device.type == "cuda"
    assert model.user_margins.min() >= 0 and model.user_margins.max() <= np.float32(model.config.margin_max)
    again = load_model(model.save(tmp_path / "m"))
    assert again.device.type == "cpu" and np.array_equal(again.user_margins, model.user_margins)
    assert np.array_equal(again.item_embeddings, model.item_embeddings)
