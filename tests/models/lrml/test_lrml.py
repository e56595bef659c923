"""LRML: the shared behaviour suite, its step's gradients against autograd on the paper's loss written
with loops, its pair scores against a slow loop, the memory (persistence, best epoch, checkpoints,
fold-in) and the refusal of approximate retrieval."""

import numpy as np
import pytest
import torch

import metricrec.models.lrml  # noqa: F401  (registers LRML for load_model)
from crash_checkpointer import Boom, CrashAfter
from metricrec.errors import ConfigError
from metricrec.models.base import load_model
from metricrec.models.lrml import LRML, LRMLConfig
from metricrec.models.lrml.step import LRMLStep, lrml_batch_loss, lrml_loss_reference, lrml_scores
from metricrec.serialization import ModelFormatError
from metricrec.training.checkpoint import Checkpointer
from metricrec.training.optim import GradBuffer
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401
from tolerances import SCORE_ATOL

# Float64 comparisons of the step's autograd gradients with autograd on the loop reference: the same
# terms (softmax over 4 slots, sums of a few dozen O(1) products) in another order agree to ~1e-15;
# a wrong or missing term is O(0.01) or more. 1e-9 relative (1e-11 absolute, for entries that should
# be 0) is far from both.
RTOL, ATOL = 1e-9, 1e-11


class TestLRML(RecommenderBehaviour):
    # a random start (not the spectral default, which already ranks this data well before any
    # epoch): "learns the planted structure" is then what the training step did
    def make(self, **kw):
        return LRML(factors=16, batch_size=500, init="random", learning_rate=0.5, memory_slots=8,
                    show_progress=False, verbose=False, **kw)

    def test_retrieval_scores_are_the_pair_scores_of_a_slow_loop(self, fitted):
        user, item = fitted.user_embeddings.astype(np.float64), fitted.item_embeddings.astype(np.float64)
        keys, memory = fitted.memory_keys.astype(np.float64), fitted.memory_values.astype(np.float64)
        uids = np.array([0, 3, 7])
        want = np.empty((uids.size, item.shape[0]))
        for row, w in enumerate(uids):
            for j in range(item.shape[0]):
                logits = keys @ (user[w] * item[j])
                a = np.exp(logits - logits.max())
                r = (a / a.sum()) @ memory
                want[row, j] = -np.sum((user[w] + r - item[j]) ** 2)
        np.testing.assert_allclose(fitted._query_scores(user[uids].astype(np.float32)), want, rtol=0, atol=SCORE_ATOL)
        np.testing.assert_allclose(fitted.scorer()(uids).numpy(), want, rtol=0, atol=SCORE_ATOL)
        ids, scores = fitted.recommend(uids, None, N=item.shape[0], filter_already_liked_items=False)
        np.testing.assert_allclose(scores, np.take_along_axis(want, ids.astype(np.int64), 1), rtol=0, atol=SCORE_ATOL)
        # the memory was trained: the relation is not one vector for every pair
        assert np.ptp(want - (-((user[uids, None] - item[None]) ** 2).sum(2)), axis=1).min() > 1e-3

    def test_the_memory_round_trips_exactly_through_load_model(self, fitted, tmp_path):
        again = load_model(fitted.save(tmp_path / "m"))
        assert type(again) is LRML
        assert np.array_equal(again.memory_keys, fitted.memory_keys)
        assert np.array_equal(again.memory_values, fitted.memory_values)
        a, b = again.recommend(np.arange(6), None, N=10, filter_already_liked_items=False), \
            fitted.recommend(np.arange(6), None, N=10, filter_already_liked_items=False)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

    @pytest.mark.parametrize("name, change, words", [
        ("memory_keys", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a), "NaN or infinite"),
        ("memory_values", lambda a: a[:-1], "'memory_values' has shape .* expected"),
        ("memory_keys", None, "'memory_keys' is missing"),
    ])
    def test_a_corrupted_memory_is_one_clear_error(self, fitted, tmp_path, name, change, words):
        path = fitted.save(tmp_path / "m")
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if change is None:
            del arrays[name]
        else:
            arrays[name] = change(arrays[name]).astype(np.float32)
        np.savez(path / "weights.npz", **arrays)
        with pytest.raises(ModelFormatError, match=words):
            load_model(path)

    def test_approximate_retrieval_is_refused_with_a_clear_error(self, fitted):
        with pytest.raises(ConfigError, match="LRML .*exact retrieval"):
            fitted.recommend(0, fitted.user_items[0], N=5, approximate=True)

    def test_fold_in_leaves_the_items_and_the_memory_as_trained(self, fitted, tmp_path):
        model = load_model(fitted.save(tmp_path / "m"))  # a copy: the class's fitted model stays as it is
        items, keys, memory = model.item_embeddings.copy(), model.memory_keys.copy(), model.memory_values.copy()
        n_users = model.user_embeddings.shape[0]
        liked = [[0, 5, 9], [3, 4]]
        rows = model.partial_fit_users([2, n_users], liked, epochs=3)
        assert rows.tolist() == [2, n_users]
        assert np.array_equal(model.item_embeddings, items)
        assert np.array_equal(model.memory_keys, keys) and np.array_equal(model.memory_values, memory)
        assert not np.array_equal(model.user_embeddings[2], fitted.user_embeddings[2])
        ids, _ = model.recommend(n_users, model.user_items[n_users], N=5)
        assert not set(ids) & {3, 4}
        q = model.recalculate_user([1, 2, 3], epochs=2)
        assert q.shape == (items.shape[1],)


# ---------------------------------------------------------------------- gradients against autograd
def _problem(seed=0):
    """5 users x 10 items, d = 3, 4 memory slots; 7 positive pairs (users repeat, item 5 twice), 3
    negatives each (some repeat across rows, item 0 is a positive of row 5 and a negative elsewhere);
    the last row's only negative, item 9, is so far away that its hinges are all inactive."""
    gen = torch.Generator().manual_seed(seed)
    ue = 0.5 * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ie = 0.5 * torch.randn(10, 3, generator=gen, dtype=torch.float64)
    ie[9] = 3.0
    keys = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    memory = 0.5 * torch.randn(4, 3, generator=gen, dtype=torch.float64)
    users, positives = torch.tensor([0, 1, 1, 2, 3, 4, 2]), torch.tensor([5, 6, 7, 5, 8, 0, 1])
    negatives = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 2, 3], [4, 0, 1], [2, 3, 4], [1, 6, 2], [9, 9, 9]])
    return ue, ie, keys, memory, users, positives, negatives


def _dense(buf, n, width):
    rows, grads = buf.pop()
    out = torch.zeros(n, width, dtype=grads.dtype)
    out[rows] = grads
    return rows, out


@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("negative_relation", ["own", "positive"])
def test_lrml_step_gradients_match_autograd_on_the_loop_reference(metric, negative_relation):
    ue, ie, keys, memory, users, positives, negatives = _problem()
    cfg = LRMLConfig(factors=3, memory_slots=4, margin=1.0, metric=metric, negative_relation=negative_relation)
    step = LRMLStep(cfg, ue, ie, keys.clone(), memory.clone(), "torch")
    seen = {}
    step._step_memory = lambda g_keys, g_memory: seen.update(keys=g_keys, memory=g_memory)
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(negatives[::3], negatives, empty, empty, 3)  # only .negatives is read
    bufs = GradBuffer(5, 3, dtype=torch.float64), GradBuffer(10, 3, dtype=torch.float64)
    total, parts = step.batch(users, positives, draw, *bufs)

    leaves = [t.clone().requires_grad_() for t in (ue, ie, keys, memory)]
    ref = lrml_loss_reference(*leaves, users, positives, negatives, margin=1.0, metric=metric,
                              negative_relation=negative_relation)
    ref.backward()
    assert total == pytest.approx(ref.item(), rel=RTOL) and parts == {"hinge_loss": total}
    for buf, leaf in zip(bufs, leaves[:2]):
        rows, got = _dense(buf, *leaf.shape)
        torch.testing.assert_close(got, leaf.grad, rtol=RTOL, atol=ATOL)
        untouched = torch.ones(leaf.shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.all(leaf.grad[untouched] == 0)  # only rows with a gradient are handed on
    torch.testing.assert_close(seen["keys"], leaves[2].grad, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(seen["memory"], leaves[3].grad, rtol=RTOL, atol=ATOL)
    # the problem has active and inactive hinges, and a row with none active: the filters are exercised
    _, viol = lrml_batch_loss(ue[users], ie[positives], ie[negatives], keys, memory, margin=1.0, metric=metric,
                              negative_relation=negative_relation)
    assert 0 < (viol > 0).double().mean() < 1 and not (viol[-1] > 0).any()
    assert torch.all(leaves[1].grad[9] == 0)


def test_the_step_updates_the_memory_with_adagrad_and_a_fold_in_step_does_not():
    ue, ie, keys, memory, users, positives, negatives = _problem(1)
    ue, ie, keys, memory = ue.float(), ie.float(), keys.float(), memory.float()
    empty = torch.empty(0, dtype=torch.long)
    draw = NegativeDraw(negatives[::3], negatives, empty, empty, 3)
    cfg = LRMLConfig(factors=3, memory_slots=4, margin=2.0, memory_lr=0.1)
    leaves = [keys.clone().requires_grad_(), memory.clone().requires_grad_()]
    lrml_loss_reference(ue, ie, *leaves, users, positives, negatives, margin=2.0).backward()
    step = LRMLStep(cfg, ue, ie, keys.clone(), memory.clone(), "torch")
    step.batch(users, positives, draw, GradBuffer(5, 3), GradBuffer(10, 3))
    for before, after, leaf in ((keys, step.keys, leaves[0]), (memory, step.memory, leaves[1])):
        g = leaf.grad
        want = before - 0.1 * g / torch.sqrt(0.1 + g * g + 1e-10)  # AdaGrad from the 0.1 accumulator
        torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-6)
    frozen = LRMLStep(cfg, ue, ie, keys.clone(), memory.clone(), "torch", train_memory=False)
    frozen.batch(users, positives, draw, GradBuffer(5, 3), GradBuffer(10, 3))
    assert torch.equal(frozen.keys, keys) and torch.equal(frozen.memory, memory)


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_scores_in_blocks_are_the_scores_of_a_slow_loop(metric):
    ue, ie, keys, memory, *_ = _problem(2)
    want = torch.empty(5, 10, dtype=torch.float64)
    for w in range(5):
        for j in range(10):
            r = torch.softmax(keys @ (ue[w] * ie[j]), 0) @ memory
            diff = ue[w] + r - ie[j]
            want[w, j] = -((diff ** 2).sum() if metric == "l2" else diff.abs().sum())
    for block in (1, 10**9):  # one user per block, all at once
        got = lrml_scores(ue, ie, keys, memory, metric, block_bytes=block)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_l1_model_trains_and_ranks_its_own_scores(data_split):
    model = LRML(factors=8, batch_size=500, epochs=2, memory_slots=4, metric="l1", show_progress=False,
                 verbose=False).fit(data_split.train)
    ids, scores = model.recommend(np.arange(4), None, N=6, filter_already_liked_items=False)
    full = model.scorer()(np.arange(4)).numpy()
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids.astype(np.int64), 1), rtol=0, atol=1e-5)


def test_the_best_epoch_restores_the_memory_with_the_tables(data_split):
    seen = []

    def keep(record, trainer):
        step = trainer.step
        seen.append((step.user_emb.clone(), step.keys.clone(), step.memory.clone()))

    # the spectral start ranks this data best early: the valid recall peaks before the last epoch
    model = LRML(factors=16, batch_size=500, epochs=6, eval_every=1, patience=0, learning_rate=0.5,
                 memory_lr=0.5, show_progress=False, verbose=False).fit(data_split.train, data_split.valid,
                                                                       callbacks=[keep])
    best = model.history.best_epoch
    assert len(seen) == 6 and best < 6, best
    user, keys, memory = seen[best - 1]
    assert torch.equal(torch.from_numpy(model.user_embeddings), user)
    assert torch.equal(torch.from_numpy(model.memory_keys), keys)
    assert torch.equal(torch.from_numpy(model.memory_values), memory)
    assert not torch.equal(seen[-1][2], memory)  # the memory did move after the best epoch


def test_a_run_resumed_mid_epoch_is_bitwise_the_uninterrupted_one_memory_included(data_split, tmp_path):
    # bitwise: the same kernels with the same thread count in one process; the memory and its
    # AdaGrad accumulators are part of the checkpoint, or the resumed memory would take other steps
    kw = dict(factors=8, batch_size=200, epochs=3, eval_every=1, patience=0, memory_slots=4, show_progress=False,
              verbose=False)
    reference = LRML(**kw).fit(data_split.train, data_split.valid)
    with pytest.raises(Boom):
        LRML(**kw).fit(data_split.train, data_split.valid,
                       callbacks=[CrashAfter(tmp_path / "ck", 13, every_minutes=1e-9)])
    resumed = Checkpointer(tmp_path / "ck", resume=True)
    again = LRML(**kw).fit(data_split.train, data_split.valid, callbacks=[resumed])
    assert resumed.resumed_from["epoch"] >= 1
    for name in ("user_embeddings", "item_embeddings", "memory_keys", "memory_values"):
        assert np.array_equal(getattr(again, name), getattr(reference, name)), name


@pytest.mark.parametrize("field, value", [("margin", 0.0), ("margin", float("nan")), ("memory_slots", 0),
                                          ("memory_slots", 10**6), ("metric", "cosine"),
                                          ("negative_relation", "none"), ("memory_lr", -1.0), ("memory_init_std", 0.0)])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        LRMLConfig(**{field: value})


# ---------------------------------------------------------------------- CUDA (skipped without a device)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_lrml_step_on_cuda_equals_the_cpu_one(metric):
    ue, ie, keys, memory, users, positives, negatives = _problem()
    cfg = LRMLConfig(factors=3, memory_slots=4, margin=1.0, metric=metric)
    out = {}
    for device in ("cpu", "cuda"):
        step = LRMLStep(cfg, ue.to(device), ie.to(device), keys.clone().to(device), memory.clone().to(device), "torch")
        empty = torch.empty(0, dtype=torch.long, device=device)
        neg = negatives.to(device)
        draw = NegativeDraw(neg[::3], neg, empty, empty, 3)
        bufs = [GradBuffer(n, 3, dtype=torch.float64, device=device) for n in (5, 10)]
        total, _ = step.batch(users.to(device), positives.to(device), draw, *bufs)
        out[device] = total, [tuple(x.cpu() for x in b.pop()) for b in bufs], step.keys.cpu(), step.memory.cpu()
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=RTOL)
    for (rows_c, g_c), (rows_g, g_g) in zip(out["cpu"][1], out["cuda"][1]):
        assert torch.equal(rows_c, rows_g)
        torch.testing.assert_close(g_g, g_c, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["cuda"][2], out["cpu"][2], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["cuda"][3], out["cpu"][3], rtol=1e-9, atol=1e-12)


@cuda
def test_lrml_trains_on_cuda_and_loads_on_the_cpu(data_split, tmp_path):
    model = LRML(factors=16, batch_size=500, epochs=3, memory_slots=8, device="cuda", show_progress=False,
                 verbose=False).fit(data_split.train, data_split.valid)
    assert model._keys.device.type == "cuda" and model._memory.device.type == "cuda"
    ids, scores = model.recommend(np.arange(5), data_split.train.matrix[:5], N=10)
    again = load_model(model.save(tmp_path / "m"))
    assert again.device.type == "cpu" and np.array_equal(again.memory_values, model.memory_values)
    np.testing.assert_allclose(again.scorer()(np.arange(5)).numpy(), model.scorer()(np.arange(5)).cpu().numpy(),
                               rtol=0, atol=SCORE_ATOL)
    _, cpu_scores = again.recommend(np.arange(5), data_split.train.matrix[:5], N=10)
    np.testing.assert_allclose(cpu_scores, scores, rtol=0, atol=SCORE_ATOL)
