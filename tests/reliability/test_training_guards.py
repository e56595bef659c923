"""Training that cannot fail silently: diverged or collapsed tables, users without negatives, and the
checks `metricrec train` makes before training."""

import json
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML
from metricrec.cli.main import main
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import TrainingDivergedError
from metricrec.serialization import atomic_write_json
from metricrec.training.guards import check_tables, trainable_pairs
from metricrec.training.sampling import UniformSampler

FAST = ["--epochs", "2", "--factors", "8", "--batch-size", "500", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("table, words", [
    (torch.full((5, 3), float("nan")), "became NaN or infinite"),
    (torch.tensor([[1.0, 2.0], [float("inf"), 0.0]]), "became NaN or infinite"),
    (torch.zeros(4, 3), "collapsed to zero"),
    (torch.ones(4, 3) * 0.3, "collapsed to one point"),
])
def test_non_finite_or_collapsed_tables_stop_training(table, words):
    with pytest.raises(TrainingDivergedError, match=words) as info:
        check_tables({"user": table}, 7, 0.5)
    assert "epoch 7" in str(info.value) and "lower the learning rate (now 0.5; e.g. 0.05)" in str(info.value)


def test_healthy_tables_pass():
    check_tables({"user": torch.randn(50, 8), "item": torch.randn(1, 8), "none": torch.zeros(0, 8)}, 1, 0.1)


def test_a_huge_learning_rate_is_a_clear_error_not_a_saved_zero_model():
    split = ratio_split(generate(preset="small", seed=0), seed=0)
    with pytest.raises(TrainingDivergedError, match="learning rate"):
        # with the covariance term: without it (CML's default) AdaGrad's absurd steps are clipped into
        # the ball and the tables stay finite and spread, which no guard can tell from training
        CML(factors=8, epochs=2, learning_rate=1e30, cov_weight=1.0, show_progress=False,
            verbose=False).fit(split.train, split.valid)


def _holding(n_items, full_rows, nearly_rows, seed=0):
    """A user x item matrix: random users with 3 items, plus users holding all / all but one item."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(n_items, 3, replace=False) for _ in range(20)]
    rows += [np.arange(n_items)] * full_rows + [np.arange(1, n_items)] * nearly_rows
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return sp.csr_matrix((np.ones(indptr[-1]), np.concatenate(rows), indptr), shape=(len(rows), n_items))


def test_users_holding_every_item_are_left_out_with_a_count():
    m = _holding(30, full_rows=2, nearly_rows=0)
    with pytest.warns(UserWarning, match="2 user\\(s\\) hold every one of the 30 items.*60 pairs are left out"):
        pairs = trainable_pairs(m)
    assert pairs.nnz == m.nnz - 60 and np.diff(pairs.indptr)[-2:].tolist() == [0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainable_pairs(_holding(30, 0, 1)) is not None  # nobody left out: no warning
    model = CML(factors=4, epochs=2, batch_size=32, show_progress=False, verbose=False)
    with pytest.warns(UserWarning, match="hold every one"):
        model.fit(m)
    assert model.user_items.nnz == m.nnz  # still "already liked" for retrieval


def test_users_holding_nearly_every_item_get_the_items_left_as_negatives():
    m = _holding(500, full_rows=0, nearly_rows=3)
    sampler = UniformSampler(m, seed=0)
    sampler.max_rounds = 2  # rejection gives up quickly: the exact draw from the rest takes over
    users = torch.tensor([20, 21, 22, 0, 1] * 40)
    draw = sampler.sample(users, 10, group_size=4)
    nearly = draw.negatives[users >= 20]
    assert (nearly == 0).all()  # item 0 is the only one these users do not hold
    held = torch.from_numpy(m[users.numpy()].toarray()).bool()
    assert not held.gather(1, draw.negatives).any()


def test_report_json_is_valid_json_even_with_nan(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def _split_files(tmp_path, test_rows, valid_rows=None):
    rng = np.random.default_rng(0)
    tr, va, te = [], [], []
    for u in range(30):
        items = rng.choice(40, 8, replace=False)
        tr += [f"{u},{i}" for i in items[:5]]
        va += [f"{u},{i}" for i in items[5:6]]
        te += [f"{u},{i}" for i in items[6:]]
    parts = {"train": tr, "valid": va if valid_rows is None else valid_rows(tr), "test": test_rows(tr, te)}
    for name, rows in parts.items():
        (tmp_path / f"{name}.csv").write_text("user,item\n" + "".join(r + "\n" for r in rows))
    return ["train", "--train", str(tmp_path / "train.csv"), "--valid", str(tmp_path / "valid.csv"),
            "--test", str(tmp_path / "test.csv")]


@pytest.mark.parametrize("case, argv_of, words", [
    ("empty test", lambda t: _split_files(t, lambda tr, te: []) + ["--out", str(t / "run")], "the test part is empty"),
    ("leaking test", lambda t: _split_files(t, lambda tr, te: tr[:4] + te) + ["--out", str(t / "run")],
     "the split leaks: 4 (user, item) pairs are in both the train and the test part"),
    ("leaking valid", lambda t: _split_files(t, lambda tr, te: te, lambda tr: tr[:3]) + ["--out", str(t / "run")],
     "3 (user, item) pairs are in both the train and the valid part"),
    ("empty valid", lambda t: _split_files(t, lambda tr, te: te, lambda tr: []) + ["--out", str(t / "run")],
     "the valid part is empty"),
    ("out is a file", lambda t: ["train", "--synthetic", "small", "--out", str(_touch(t / "f"))], "is a file"),
    ("model folder foreign", lambda t: ["train", "--synthetic", "small", "--out", str(_foreign(t))],
     "is not a metricrec model"),
    ("device", lambda t: ["train", "--synthetic", "small", "--device", "tpu", "--out", str(t / "run")],
     "device must be"),
])
def test_bad_runs_are_refused_before_any_training(case, argv_of, words, tmp_path, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(CML, "fit", no_training)
    assert main(argv_of(tmp_path) + FAST) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out_is_refused_before_training(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert main(["train", "--synthetic", "small", "--out", str(ro / "run"), *FAST]) == 2
    assert "is not a writable folder" in capsys.readouterr().err


def _touch(path):
    path.write_text("x")
    return path


def _foreign(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "notes.txt").write_text("mine")
    return tmp_path / "run"
