"""The adaptive training budget: its schedule, its paired noise, its rule, and the trainer following it."""

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec import CML, CMLConfig
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ConfigError
from metricrec.metrics import embedding_scorer, evaluate
from metricrec.training.budget import EXTEND, GO, SHORTEN, STOP, AdaptiveSchedule, decide, paired_gain
from metricrec.training.schedule import LRSchedule


def test_decays_linearly_to_the_floor_then_stays_there():
    s = AdaptiveSchedule(steps_per_epoch=10, horizon_epochs=5, warmup_epochs=0, floor=0.1, max_epochs=20)
    f = [s.factor(t) for t in range(80)]
    assert f[0] == pytest.approx(1 - 0.9 * 0.5 / 50)
    assert f[25] == pytest.approx(1 - 0.9 * 25.5 / 50)
    assert all(a > b for a, b in zip(f[:49], f[1:50]))
    assert f[49] == pytest.approx(0.1 + 0.9 * 0.5 / 50) and f[50:] == pytest.approx([0.1] * 30)
    # with floor 0 and no extension it is the linear schedule of the same run
    z = AdaptiveSchedule(10, 5, 1.0, 0.0, 5)
    ref = LRSchedule.for_run("linear", 5, 10, 1.0)
    assert [z.factor(t) for t in range(50)] == pytest.approx([ref.factor(t) for t in range(50)], rel=1e-12)


def test_extending_keeps_the_rate_continuous_and_moves_the_end():
    s = AdaptiveSchedule(steps_per_epoch=10, horizon_epochs=20, warmup_epochs=1, floor=0.05, max_epochs=35)
    before = [s.factor(t) for t in range(150)]
    assert s.extend(15, 10) == 30 and s.end_epoch == 30 and s.extensions == [15]
    after = [s.factor(t) for t in range(400)]
    assert after[:150] == pytest.approx(before, rel=1e-12)  # the past is unchanged
    at = 1 - 0.95 * 150 / 200  # the multiplier reached at the end of epoch 15
    # from there a straight line to the floor at epoch 30 (steps read at their midpoints)
    assert after[150] == pytest.approx(at + (0.05 - at) * 0.5 / 150)
    assert after[299] == pytest.approx(0.05 + (at - 0.05) * 0.5 / 150)
    assert after[300:] == pytest.approx([0.05] * 100)
    assert s.extend(25, 10) == 35  # capped at max_epochs
    assert s.extend(30, 10) == 35 and s.extensions == [15, 25]  # nothing left to extend


def test_shortening_anneals_the_rest_over_the_next_interval():
    s = AdaptiveSchedule(steps_per_epoch=10, horizon_epochs=20, warmup_epochs=0, floor=0.05, max_epochs=60)
    assert s.shorten(10, 5) == 15 and s.shortenings == [10]
    at = 1 - 0.95 * 100 / 200
    assert s.factor(100) == pytest.approx(at + (0.05 - at) * 0.5 / 50) and s.factor(150) == pytest.approx(0.05)
    assert s.shorten(12, 5) == 15 and s.shortenings == [10]  # never later than it is
    assert s.state()["shortenings"] == [10]


def test_state_round_trips():
    s = AdaptiveSchedule(7, 20, 1.0, 0.05, 60)
    s.extend(15, 10)
    t = AdaptiveSchedule(7, 20, 1.0, 0.05, 60)
    t.load_state(s.state())
    assert [t.factor(k) for k in range(0, 400, 3)] == [s.factor(k) for k in range(0, 400, 3)]
    assert t.end_epoch == 30 and t.extensions == [15]


def test_paired_gain_by_hand():
    before = np.array([0.5, 0.0, 1.0, 0.25])
    now = np.array([0.75, 0.0, 1.0, 0.5])
    diff = np.array([0.25, 0.0, 0.0, 0.25])
    mean, se = paired_gain(now, before)
    assert mean == pytest.approx(0.125)
    assert se == pytest.approx(np.sqrt(((diff - 0.125) ** 2).sum() / 3) / 2)
    assert paired_gain(now, None) == (pytest.approx(0.5625), 0.0)
    assert paired_gain(np.array([1.0]), np.array([0.5])) == (0.5, 0.0)


def test_the_rule():
    s = AdaptiveSchedule(10, 20, 1.0, 0.05, 60)
    kw = dict(eval_every=5, z=2.0)
    assert decide(s, 10, True, 0.05, 0.001, **kw) == GO  # a big gain, but not the last check before the end
    assert decide(s, 15, True, 0.01, 0.004, **kw) == EXTEND  # last check, gain beyond 2 errors
    assert decide(s, 15, True, 0.007, 0.004, **kw) == GO  # within noise: the decay ends as planned
    assert decide(s, 15, False, 0.0, 0.004, **kw) == GO
    assert decide(s, 10, True, 0.007, 0.004, **kw) == SHORTEN  # a plateau mid-decay: anneal now
    assert decide(s, 5, False, -0.01, 0.004, **kw) == SHORTEN  # validation falling
    assert decide(s, 20, True, 0.05, 0.001, **kw) == GO  # the end of the decay: on to the tail
    assert decide(s, 21, True, 0.0001, 0.004, **kw) == GO  # the tail goes on while it improves at all
    assert decide(s, 22, False, -0.001, 0.004, **kw) == STOP
    assert decide(s, 60, True, 0.1, 0.0, **kw) == STOP  # the cap
    capped = AdaptiveSchedule(10, 20, 1.0, 0.05, 20)
    assert decide(capped, 15, True, 0.05, 0.0, **kw) == GO  # no room to extend


def test_config_checks():
    c = CMLConfig()
    assert (c.lr_schedule, c.epochs, c.resolved_horizon()) == ("adaptive", 60, 20)
    assert CMLConfig(epochs=3).resolved_horizon() == 3  # --epochs N is always the most the run takes
    assert CMLConfig(horizon_epochs=None, epochs=7).resolved_horizon() == 7
    for bad, match in ((dict(horizon_epochs=0), "horizon_epochs"), (dict(lr_floor=1.0), "lr_floor"),
                       (dict(lr_floor=-0.1), "lr_floor"), (dict(budget_z=-1.0), "budget_z")):
        with pytest.raises(ConfigError, match=match):
            CMLConfig(**bad)


def test_evaluate_per_user_values_average_to_the_metric():
    rng = np.random.default_rng(0)
    target = sp.random(40, 30, density=0.1, random_state=1, format="csr")
    target.data[:] = 1
    u, v = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    per_user: dict = {}
    res = evaluate(embedding_scorer(u, v), target, ks=(5, 10), metrics=("recall", "ndcg"), per_user=per_user)
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    np.testing.assert_array_equal(per_user["users"], users)
    for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
        assert per_user[key].mean() == pytest.approx(res[key], rel=1e-12)
    # one user by hand: recall@10 is the share of its targets among its 10 nearest items (the scorer
    # ranks by -|u - v|^2; random float vectors have no ties within rounding)
    k = int(users[3])
    top = np.argsort(((u[k] - v) ** 2).sum(1), kind="stable")[:10]
    assert per_user["recall@10"][3] == pytest.approx(np.isin(top, target[k].indices).sum() / target[k].nnz)


@pytest.fixture(scope="module")
def small_split():
    return ratio_split(generate(preset="small", seed=0), seed=0)


def test_an_adaptive_run_ends_after_its_best_epoch(small_split):
    m = CML(factors=16, epochs=30, horizon_epochs=10, eval_every=2, show_progress=False, verbose=False,
            kernel="torch")
    m.fit(small_split.train, small_split.valid)
    h = m.history
    last = h.epochs[-1].epoch
    assert h.budget is not None and h.budget["max_epochs"] == 30
    # the small set plateaus within a few epochs (its valid Recall@50 peaks near epoch 6 and falls
    # after): the run stops by the rule, at the first epoch of the tail that did not improve
    assert last < 30 and h.best_epoch < last and h.stopped_early
    assert last > h.budget["end_epoch"]
    valid = {e.epoch: e.valid["recall@50"] for e in h.epochs if e.valid}
    assert valid[last] <= valid[h.best_epoch] and max(valid.values()) == valid[h.best_epoch]
    # every epoch of the tail was validated
    assert all(e.valid for e in h.epochs if e.epoch > h.budget["end_epoch"])
    # the history round-trips with the budget's record
    assert type(h).from_dict(h.to_dict()).budget == h.budget


def test_without_a_valid_set_the_adaptive_run_is_its_first_horizon(small_split):
    m = CML(factors=8, epochs=4, show_progress=False, verbose=False, kernel="torch").fit(small_split.train)
    assert len(m.history.epochs) == 4 and m.history.budget["end_epoch"] == 4
