"""The learning-rate schedule: warm-up, decay to zero over the run, and the trainer following it."""

import math

import numpy as np
import pytest

from metricrec import CML, CMLConfig
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ConfigError
from metricrec.training.schedule import LRSchedule


def test_linear_warms_up_then_decays_to_zero():
    s = LRSchedule("linear", total_steps=100, warmup_steps=10)
    f = [s.factor(t) for t in range(100)]
    assert f[0] == pytest.approx(0.1 * (1 - 0.5 / 100))
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # rising through the warm-up
    assert all(a > b for a, b in zip(f[10:-1], f[11:]))  # then falling
    assert f[-1] == pytest.approx(0.5 / 100) and f[-1] > 0  # the last step still moves
    assert s.factor(10_000) == f[-1]  # past the end: the last step's rate


def test_cosine_and_constant():
    c = LRSchedule("cosine", total_steps=10)
    assert c.factor(0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)))
    assert c.factor(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.55)))
    k = LRSchedule("constant", total_steps=10, warmup_steps=4)
    assert [k.factor(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_for_run_counts_epochs_in_steps():
    s = LRSchedule.for_run("linear", epochs=5, steps_per_epoch=8, warmup_epochs=0.5)
    assert (s.total, s.warmup) == (40, 4)
    assert LRSchedule.for_run("linear", epochs=3, steps_per_epoch=0, warmup_epochs=2).total == 3


def test_invalid():
    with pytest.raises(ValueError, match="schedule"):
        LRSchedule("step", 10)
    with pytest.raises(ValueError):
        LRSchedule("linear", 0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        CMLConfig(lr_schedule="exp")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        CMLConfig(warmup_epochs=-1)


def test_the_trainer_sets_the_scheduled_rate_at_every_step():
    split = ratio_split(generate(preset="small", seed=0), seed=0)
    seen = []
    m = CML(factors=8, batch_size=256, epochs=3, lr_schedule="linear", warmup_epochs=1, learning_rate=0.4,
            show_progress=False, verbose=False)
    m.fit(split.train, callbacks=[lambda r, t: seen.append(t._opt[0].lr)])
    trainer = m._trainer
    per_epoch = trainer.steps_per_epoch
    assert per_epoch == -(-trainer.n_pairs // 256)
    last_steps = [per_epoch * e - 1 for e in (1, 2, 3)]  # the rate of each epoch's last step
    assert seen == pytest.approx([0.4 * trainer.schedule.factor(t) for t in last_steps])
    assert seen[-1] == pytest.approx(0.4 * 0.5 / (3 * per_epoch))


def test_fit_partial_continues_the_schedule_like_fit():
    split = ratio_split(generate(preset="small", seed=0), seed=0)
    kw = dict(factors=8, batch_size=256, epochs=4, patience=0, show_progress=False, verbose=False, kernel="torch")
    whole = CML(**kw).fit(split.train)
    parts = CML(**kw)
    for _ in range(4):
        parts.fit_partial(split.train, epochs=1)
    np.testing.assert_allclose(parts.user_embeddings, whole.user_embeddings, atol=1e-5)
    np.testing.assert_allclose(parts.item_embeddings, whole.item_embeddings, atol=1e-5)
