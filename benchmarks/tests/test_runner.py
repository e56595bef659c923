"""The peer protocol and the benchmark loop on small synthetic data (run: pytest benchmarks/tests)."""

import numpy as np
import pytest
import torch

from benchmarks.cml_peer import CMLPeer
from benchmarks.peers import PopularityPeer, make_peer
from benchmarks.runner import protocol_eval, run_peer
from metricrec import CML
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.metrics import evaluate

# epochs: the learning-rate schedule spans the config's epochs, so the peer needs the same; eval_every=1:
# fit validates every epoch as the peer loop does
# the peer loop decides the epochs from outside (fit_partial), as with a fixed schedule: not the adaptive budget
CML_SETTING = dict(factors=16, margin=1.0, n_negatives=5, batch_size=500, seed=0, epochs=12, eval_every=1,
                   lr_schedule="linear")


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), (0.6, 0.2, 0.2), seed=0)


def test_cml_peer_epochs_match_fit_with_valid(split):
    """Epoch-by-epoch fit_partial through run_peer selects the same epoch, with the same valid
    scores, as CML.fit with a valid set and the same patience."""
    model = CML(patience=3, num_threads=1, show_progress=False, verbose=False, kernel="torch", **CML_SETTING)
    model.fit(split.train, split.valid)
    fit_valid = [e.valid["recall@50"] for e in model.history.epochs]

    out = run_peer(CMLPeer(num_threads=1, kernel="torch", **CML_SETTING), split, max_epochs=12, patience=3)
    assert [v["recall@50"] for v in out["valid"]] == pytest.approx(fit_valid, abs=1e-6)
    assert out["best_epoch"] == model.history.best_epoch
    best_test = protocol_eval(split)(model.scorer(), "test")
    assert out["test"]["recall@50"] == pytest.approx(best_test["recall@50"], abs=1e-6)


def test_cml_peer_scorer_is_a_copy_and_seconds_are_training_only(split):
    peer = CMLPeer(num_threads=1, kernel="torch", **CML_SETTING)
    seconds = peer.partial_fit_epoch(split.train.matrix)
    assert seconds == peer.model.last_epoch_seconds and seconds > 0
    scorer = peer.scorer()
    users = np.arange(5)
    before = scorer(users).clone()
    peer.partial_fit_epoch(split.train.matrix)
    assert torch.equal(scorer(users), before)  # later training leaves a kept scorer alone
    assert not torch.equal(peer.scorer()(users), before)  # ... and the model did move
    assert before.shape == (5, split.train.shape[1])


def test_cml_peer_params_leave_the_loop_fields_to_the_caller():
    params = CMLPeer(num_threads=1, kernel="torch", **CML_SETTING).params()
    assert params["margin"] == 1.0 and params["kernel"] == "torch"
    assert "epochs" not in params and "patience" not in params


def test_protocol_eval_excludes_train_for_valid_and_train_plus_valid_for_test(split):
    pop = PopularityPeer()
    pop.partial_fit_epoch(split.train.matrix)
    scorer = pop.scorer()
    eval_fn = protocol_eval(split, test_metrics=("recall",))
    seen = split.train.matrix + split.valid.matrix
    valid = evaluate(scorer, split.valid.matrix, split.train.matrix, ks=(50,), metrics=("recall",))
    test = evaluate(scorer, split.test.matrix, seen, ks=(50,), metrics=("recall",))
    assert eval_fn(scorer, "valid")["recall@50"] == pytest.approx(valid["recall@50"], rel=1e-12)
    assert eval_fn(scorer, "test")["recall@50"] == pytest.approx(test["recall@50"], rel=1e-12)
    assert test["recall@50"] != pytest.approx(  # the valid items really are excluded from the test ranking
        evaluate(scorer, split.test.matrix, split.train.matrix, ks=(50,), metrics=("recall",))["recall@50"])


def test_run_peer_popularity_one_epoch(split):
    out = run_peer(make_peer("popularity"), split, max_epochs=1, patience=1)
    assert out["epochs_run"] == 1 and out["best_epoch"] == 1
    assert 0 < out["test"]["recall@50"] <= 1
    assert set(out) >= {"median_s_per_epoch", "train_seconds_to_best", "eval_seconds_total", "peak_rss_mb"}


def test_make_peer_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown method"):
        make_peer("nope")


def test_cml_peer_profiled_epoch_splits_the_epoch_into_phases(split):
    peer = CMLPeer(num_threads=1, kernel="torch", **CML_SETTING)
    with pytest.raises(RuntimeError, match="train one epoch first"):
        peer.profiled_epoch(split.train.matrix)
    peer.partial_fit_epoch(split.train.matrix)
    seconds, phases = peer.profiled_epoch(split.train.matrix)
    assert {"sampling", "step", "optimiser"} <= set(phases)
    assert 0 < sum(phases.values()) <= seconds
    assert peer.model._trainer.phase_seconds is None  # the clock is off again
