"""The training loop: early stopping and best-weights restore, callbacks, timing, the table."""

import io
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import metricrec.training.trainer as trainer_mod
from metricrec import CML, CMLConfig
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.models.cml.step import CMLStep
from metricrec.training.history import EpochRecord, History
from metricrec.training.trainer import Trainer


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), seed=0)


def _cml(**kw):
    # the loop's mechanics: validation after every epoch and a constant rate (the defaults validate
    # every 5 epochs and decay the rate to zero)
    return CML(**{"factors": 8, "batch_size": 256, "show_progress": False, "verbose": False, "eval_every": 1,
                  "lr_schedule": "constant", **kw})


class Snapshots:
    """Callback keeping a copy of both tables after every epoch."""

    def __init__(self, stop_at=None):
        self.user, self.item, self.epochs, self.trainers = {}, {}, [], []
        self.stop_at = stop_at

    def __call__(self, record, trainer):
        assert isinstance(record, EpochRecord)
        self.epochs.append(record.epoch)
        self.trainers.append(trainer)
        self.user[record.epoch] = trainer.step.user_emb.detach().cpu().numpy().copy()
        self.item[record.epoch] = trainer.step.item_emb.detach().cpu().numpy().copy()
        return self.stop_at is not None and record.epoch >= self.stop_at


def test_early_stopping_restores_the_best_epochs_weights(split):
    snap = Snapshots()
    # a high learning rate makes valid recall peak early and wander, so patience has to act
    m = _cml(epochs=60, patience=3, learning_rate=0.5, seed=0).fit(split.train, split.valid, callbacks=[snap])
    h = m.history
    r50 = [e.valid["recall@50"] for e in h.epochs]
    assert h.stopped_early
    assert len(h.epochs) < 60
    assert h.best_epoch == int(np.argmax(r50)) + 1  # first of equal maxima
    assert len(h.epochs) == h.best_epoch + 3  # exactly `patience` epochs without improvement
    assert all(r < r50[h.best_epoch - 1] for r in r50[h.best_epoch:])
    assert snap.epochs == list(range(1, len(h.epochs) + 1))
    assert np.array_equal(m.user_embeddings, snap.user[h.best_epoch])
    assert np.array_equal(m.item_embeddings, snap.item[h.best_epoch])
    assert not np.array_equal(m.user_embeddings, snap.user[len(h.epochs)])


def test_patience_zero_runs_every_epoch_and_still_keeps_the_best(split):
    # regression: without patience the last epoch's weights were kept while best_epoch named another
    snap = Snapshots()
    m = _cml(epochs=12, patience=0, learning_rate=0.5, seed=0).fit(split.train, split.valid, callbacks=[snap])
    h = m.history
    r50 = [e.valid["recall@50"] for e in h.epochs]
    assert len(h.epochs) == 12 and not h.stopped_early
    assert h.best_epoch == int(np.argmax(r50)) + 1
    assert np.array_equal(m.user_embeddings, snap.user[h.best_epoch])
    assert np.array_equal(m.item_embeddings, snap.item[h.best_epoch])


def test_callback_returning_true_stops(split):
    snap = Snapshots(stop_at=3)
    m = _cml(epochs=20, patience=0).fit(split.train, callbacks=[snap])
    assert [e.epoch for e in m.history.epochs] == [1, 2, 3]
    assert not m.history.stopped_early
    # without a valid set the last epoch is the one kept
    assert m.history.best_epoch == 3
    assert np.array_equal(m.user_embeddings, snap.user[3])
    assert all(t is snap.trainers[0] for t in snap.trainers) and isinstance(snap.trainers[0], Trainer)
    # returning None or False does not stop
    quiet = _cml(epochs=4).fit(split.train, callbacks=[lambda r, t: None, lambda r, t: False])
    assert len(quiet.history.epochs) == 4


def test_training_seconds_exclude_evaluation(split, monkeypatch):
    real = trainer_mod.evaluate
    delay = 1.5  # far above an epoch on 1,700 pairs even on a loaded machine

    def slow_evaluate(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate", slow_evaluate)
    h = _cml(epochs=2, patience=0).fit(split.train, split.valid).history
    for e in h.epochs:
        assert e.eval_seconds >= delay
        assert 0 < e.seconds < delay  # an epoch on 1,700 pairs takes milliseconds
    assert h.train_seconds == pytest.approx(sum(e.seconds for e in h.epochs))
    assert h.seconds_to_best == pytest.approx(sum(e.seconds for e in h.epochs[: h.best_epoch]))


def test_without_valid_no_metrics_and_loss_falls(split):
    h = _cml(epochs=8, learning_rate=0.1, init="random", cov_weight=1.0).fit(split.train).history
    assert len(h.epochs) == 8 and h.best_epoch == 8 and not h.stopped_early
    assert all(e.valid == {} and e.eval_seconds == 0.0 for e in h.epochs)
    assert h.epochs[-1].loss < 0.8 * h.epochs[0].loss
    for e in h.epochs:
        assert e.loss == pytest.approx(e.parts["metric_loss"] + 1.0 * e.parts["cov_loss"])


def test_trainer_prints_one_row_per_epoch(split):
    cfg = CMLConfig(factors=4, epochs=3, batch_size=512, patience=0, eval_every=1)
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = split.train.shape
    user = torch.randn(n_users, 4, generator=gen) * 0.3
    item = torch.randn(n_items, 4, generator=gen) * 0.3
    buf = io.StringIO()
    step = CMLStep(cfg, user, item, "torch")
    h = Trainer(step, split.train.matrix, split.valid.matrix, config=cfg, progress=False, verbose=True,
                stream=buf).fit()
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["epoch", "loss", "R@50", "R@100", "seconds"]
    assert len(lines) == 4
    for line, rec in zip(lines[1:], h.epochs):
        cells = line.split()
        assert int(cells[0]) == rec.epoch
        assert float(cells[1]) == pytest.approx(rec.loss, abs=1e-4)
        assert float(cells[2]) == pytest.approx(rec.valid["recall@50"], abs=1e-4)
        assert float(cells[3]) == pytest.approx(rec.valid["recall@100"], abs=1e-4)
    # the tables were trained in place
    assert Trainer(step, split.train.matrix, config=cfg, progress=False, verbose=False).fit().best_epoch == 3
    silent = io.StringIO()
    Trainer(step, split.train.matrix, config=cfg, progress=False, verbose=False, stream=silent).fit()
    assert silent.getvalue() == ""


def test_trainer_refuses_an_empty_matrix():
    cfg = CMLConfig(factors=2, epochs=1)
    with pytest.raises(ValueError, match="no positive pairs"):
        Trainer(CMLStep(cfg, torch.zeros(3, 2), torch.zeros(4, 2), "torch"), sp.csr_matrix((3, 4)), config=cfg,
                progress=False, verbose=False).fit()


def test_diverging_loss_is_reported(split):
    # an absurd learning rate without the ball sends the vectors to infinity
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        _cml(epochs=30, learning_rate=1e30, max_norm=None, optimizer="adam").fit(split.train)


def test_history_to_dict():
    h = History([EpochRecord(1, 3.0, 0.5, parts={"metric_loss": 2.0, "cov_loss": 1.0}),
                 EpochRecord(2, 2.0, 0.25, 0.1, {"recall@50": 0.3}, {"metric_loss": 1.5, "cov_loss": 0.5})],
                best_epoch=1, stopped_early=True)
    d = h.to_dict()
    assert d["best_epoch"] == 1 and d["stopped_early"] is True
    assert d["train_seconds"] == 0.75 and d["seconds_to_best"] == 0.5
    assert d["epochs"][1] == {"epoch": 2, "loss": 2.0, "metric_loss": 1.5, "cov_loss": 0.5, "seconds": 0.25,
                              "eval_seconds": 0.1, "valid": {"recall@50": 0.3}}


def test_default_batch_size_rule():
    cfg = CMLConfig()
    assert cfg.batch_size is None
    assert cfg.resolved_batch_size(32_858) == 4_107  # ml-100k train: an eighth of the pairs
    assert cfg.resolved_batch_size(597_881) == 50_000  # capped
    assert cfg.resolved_batch_size(2_000) == 1_000  # floor
    assert CMLConfig(batch_size=300).resolved_batch_size(10**6) == 300
    with pytest.raises(ValueError, match="batch_size"):
        CMLConfig(batch_size=0)


def test_history_round_trips_through_its_dict():
    h = History([EpochRecord(1, 3.0, 0.5, parts={"metric_loss": 2.0}),
                 EpochRecord(2, 2.0, 0.25, 0.1, {"recall@50": 0.3}, {"metric_loss": 1.5})], best_epoch=2)
    again = History.from_dict(h.to_dict())
    assert again == h


class CountingStep:
    """A model-free step: moves every touched row by a constant and counts what it was given."""

    name, backend = "count", "torch"

    def __init__(self, n_users, n_items):
        self.user_emb, self.item_emb = torch.zeros(n_users, 2), torch.zeros(n_items, 2)
        self.pairs, self.epochs_ended = 0, 0

    def batch(self, users, items, draw, user_grad, item_grad):
        self.pairs += users.numel()
        assert draw.negatives.shape[1] == 3  # n_negatives from the config
        user_grad.add(users, torch.ones(users.numel(), 2))
        item_grad.add(items, torch.ones(items.numel(), 2))
        return float(users.numel()), {"pairs": float(users.numel())}

    def epoch_end(self):
        self.epochs_ended += 1

    def state(self):
        return self.user_emb.clone(), self.item_emb.clone()

    def restore(self, state):
        self.user_emb.copy_(state[0])
        self.item_emb.copy_(state[1])

    def scorer(self):
        return lambda users: torch.zeros(len(users), self.item_emb.shape[0])


def test_the_trainer_drives_any_step_without_knowing_the_model(split):
    from metricrec.training.config import TrainingConfig

    train = split.train.matrix
    step = CountingStep(*train.shape)
    cfg = TrainingConfig(epochs=3, batch_size=100, n_negatives=3, learning_rate=0.1)
    h = Trainer(step, train, config=cfg, progress=False, verbose=False).fit()
    assert step.pairs == 3 * train.nnz and step.epochs_ended == 3
    assert [e.parts["pairs"] for e in h.epochs] == [float(train.nnz)] * 3
    assert h.best_epoch == 3
    touched_users = np.flatnonzero(np.diff(train.indptr))
    assert (step.user_emb[touched_users] < 0).all()  # every user with a pair moved against its gradient


def test_validation_ranks_a_fixed_sample_of_users_and_can_skip_epochs(split):
    from metricrec.metrics import evaluate

    calls = []
    m = _cml(epochs=4, patience=0, valid_users=50, valid_pairs=None, eval_every=2)  # 50 users, not grown
    m.fit(split.train, split.valid, callbacks=[lambda r, t: calls.append((r.epoch, bool(r.valid), t.valid_users))])
    assert [c[:2] for c in calls] == [(1, False), (2, True), (3, False), (4, True)]
    sample = calls[0][2]
    assert sample.size == 50 and all(np.array_equal(c[2], sample) for c in calls)
    assert (np.diff(split.valid.matrix.indptr)[sample] > 0).all()  # only users with a validation item
    # the number recorded is Recall@50 over exactly those users
    best = m.history.epochs[m.history.best_epoch - 1]
    again = evaluate(m.scorer(), split.valid.matrix, split.train.matrix, ks=(50,), metrics=("recall",), users=sample)
    assert best.valid["recall@50"] == pytest.approx(again["recall@50"]) and best.valid["n_users"] == 50
    assert m.history.best_epoch in (2, 4)


def test_patience_counts_epochs_when_validation_skips_some(split):
    m = _cml(epochs=60, patience=4, eval_every=2, learning_rate=0.5).fit(split.train, split.valid)
    h = m.history
    if h.stopped_early:
        assert len(h.epochs) - h.best_epoch == 4


def test_the_batch_cap_grows_with_large_tables():
    cfg = CMLConfig()
    assert cfg.resolved_batch_size(11_948_660, 138_493 + 26_744) == 826_185  # ML-20M shape: 5 x rows
    assert cfg.resolved_batch_size(597_881, 6_040 + 3_706) == 50_000  # ML-1M shape: unchanged
    assert cfg.resolved_batch_size(123_000, 5_551 + 16_980) == 15_375  # citeulike-a: an eighth


def test_the_validation_sample_grows_to_hold_valid_pairs():
    from metricrec.errors import ConfigError
    from metricrec.training.config import TrainingConfig
    from metricrec.training.trainer import _valid_sample
    rows = np.repeat(np.arange(3000), 2)[:5000]  # 2,500 users with 2 validation pairs each
    valid = sp.csr_matrix((np.ones(5000), (rows, np.arange(5000) % 7)), shape=(4000, 7))
    assert _valid_sample(valid, TrainingConfig(valid_users=100)).size == 100
    grown = _valid_sample(valid, TrainingConfig(valid_users=100, valid_pairs=1000))
    assert grown.size == 500 and np.diff(valid.indptr)[grown].sum() == 1000  # 1,000 pairs / 2 per user
    assert _valid_sample(valid, TrainingConfig(valid_users=100, valid_pairs=10_000)) is None  # all 2,500 users
    assert _valid_sample(valid, TrainingConfig(valid_users=None, valid_pairs=1000)) is None
    with pytest.raises(ConfigError, match="valid_pairs"):
        TrainingConfig(valid_pairs=0)
