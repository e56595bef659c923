"""Checkpoints: a training stopped at any batch boundary and resumed ends bitwise where a training that
was never stopped ends (CPU, same thread count); checkpoints are refused when damaged or foreign, and
a kill at any step of a checkpoint write leaves the previous checkpoint or the new one."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import metricrec._atomic as at
from metricrec import CML
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import CheckpointError
from metricrec.training.checkpoint import Checkpointer, read_checkpoint, write_checkpoint

from crash_checkpointer import Boom, CrashAfter
from test_save_atomicity import KILLED, Faults, Injected, _Os


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), seed=0)


VARIANTS = {
    "adagrad, mid-epoch checkpoints": ({}, 1e-9, 13),
    "adam with early stopping, epoch-end checkpoints": ({"optimizer": "adam", "learning_rate": 0.05, "patience": 2,
                                                        "epochs": 12, "lr_schedule": "constant"}, None, 30),
    # the adaptive budget moves its horizon at epoch 4 and validates every tail epoch: the crash in epoch 8
    # comes after that, so the resumed run must carry the moved schedule and the best epoch's per-user values
    "adaptive budget, epoch-end checkpoints": ({"epochs": 30, "horizon_epochs": 6, "eval_every": 2, "init": "random",
                                                "learning_rate": 0.05}, None, 66),
    "CML+F, mid-epoch checkpoints": ({"feature_weight": 1.0, "feature_hidden": (16,)}, 1e-9, 11),
}


def _kw(extra):
    return {"factors": 8, "batch_size": 200, "epochs": 6, "patience": 0, "show_progress": False, "verbose": False,
            **extra}


def _fit(split, extra, callbacks=()):
    fit_kw = {"item_features": split.train.item_features} if extra.get("feature_weight") else {}
    return CML(**_kw(extra)).fit(split.train, split.valid, callbacks=list(callbacks), **fit_kw)


def _same(a, b):
    assert np.array_equal(a.user_embeddings, b.user_embeddings)
    assert np.array_equal(a.item_embeddings, b.item_embeddings)
    assert [(e.epoch, e.loss, e.parts, e.valid) for e in a.history.epochs] == \
        [(e.epoch, e.loss, e.parts, e.valid) for e in b.history.epochs]
    assert (a.history.best_epoch, a.history.stopped_early) == (b.history.best_epoch, b.history.stopped_early)
    assert a.history.budget == b.history.budget
    if a._item_mlp is not None:
        for (k, v), (k2, w) in zip(a._item_mlp.state_dict().items(), b._item_mlp.state_dict().items()):
            assert k == k2 and torch.equal(v, w)
        assert torch.equal(a._item_placement[0], b._item_placement[0]) and a._item_placement[1] == b._item_placement[1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_after_a_crash_is_bitwise_the_uninterrupted_run(split, tmp_path, variant):
    extra, every, crash_at = VARIANTS[variant]
    reference = _fit(split, extra)
    with pytest.raises(Boom):
        _fit(split, extra, [CrashAfter(tmp_path / "ck", crash_at, every_minutes=every)])
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert (state["position"] is not None) == (every is not None)  # mid-epoch vs epoch-end checkpoint
    resumed = Checkpointer(tmp_path / "ck", resume=True)
    again = _fit(split, extra, [resumed])
    assert resumed.resumed_from["epoch"] == state["epochs_done"] >= 1
    _same(reference, again)
    if extra.get("patience"):
        assert reference.history.stopped_early
    if extra.get("horizon_epochs"):  # stopped by the budget's rule after the crash point
        h = reference.history
        assert h.stopped_early and len(h.epochs) > 8 and h.budget["extensions"] + h.budget["shortenings"] == [4]


def test_resuming_a_finished_checkpoint_trains_nothing_and_gives_the_same_model(split, tmp_path):
    reference = _fit(split, {}, [Checkpointer(tmp_path / "ck")])
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["stopped"] is True
    again = _fit(split, {}, [Checkpointer(tmp_path / "ck", resume=True)])
    _same(reference, again)


def test_on_write_is_called_after_every_checkpoint_with_the_count(split, tmp_path):
    seen = []
    hook = Checkpointer(tmp_path / "ck", on_write=lambda n: seen.append((n, (tmp_path / "ck").is_dir())))
    _fit(split, {"epochs": 3}, [hook])
    assert seen == [(1, True), (2, True), (3, True)] and hook.writes == 3  # one per epoch, each already on disk
    off = []
    _fit(split, {"epochs": 2}, [Checkpointer(tmp_path / "off", enabled=False, on_write=off.append)])
    assert off == [] and not (tmp_path / "off").exists()


def _damaged(tmp_path, split, damage):
    _fit(split, {"epochs": 1}, [Checkpointer(tmp_path / "ck")])
    damage(tmp_path / "ck")
    return tmp_path / "ck"


def _edit_json(folder, edit):
    doc = json.loads((folder / "state.json").read_text())
    edit(doc)
    (folder / "state.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("damage, extra, words", [
    (lambda f: None, {"factors": 6}, "other settings"),
    (lambda f: None, {"seed": 3}, "other settings"),
    (lambda f: (f / "state.npz").unlink(), {}, "state.npz: missing"),
    (lambda f: (f / "state.json").write_text("[]"), {}, "not a metricrec checkpoint"),
    (lambda f: (f / "state.json").write_text("{"), {}, "not valid JSON"),
    (lambda f: _edit_json(f, lambda d: d.update(format_version=9)), {}, "format_version 9"),
    (lambda f: _edit_json(f, lambda d: d.update(train={**d["train"], "nnz": 1})), {}, "other training data"),
    (lambda f: _edit_json(f, lambda d: d.pop("generators")), {}, "incomplete checkpoint"),
    (lambda f: _edit_json(f, lambda d: d["step"]["$tuple"][0].update(shape=[10**12, 8])), {}, "declares"),
    (lambda f: (f / "state.npz").write_bytes((f / "state.npz").read_bytes()[:500]), {}, "cannot read weights"),
])
def test_damaged_or_foreign_checkpoints_are_refused(split, tmp_path, damage, extra, words):
    folder = _damaged(tmp_path, split, damage)
    with pytest.raises(CheckpointError, match=words):
        _fit(split, {"epochs": 1, **extra}, [Checkpointer(folder, resume=True)])


# ---------------------------------------------------------------------- kill at any point of a write
def _state(marker):
    return {"marker": marker, "format": "test"}, {"a0": np.full((50, 4), float(marker), np.float32),
                                                  "a1": np.arange(marker * 7)}


def _whole(folder):
    """The marker of the checkpoint in ``folder`` after checking both files come from the same write."""
    from metricrec._array_files import read_npz

    doc = json.loads((folder / "state.json").read_text())
    with open(folder / "state.npz", "rb") as fh:
        arrays = read_npz(fh, folder)
    marker = doc["marker"]
    assert np.all(arrays["a0"] == marker) and arrays["a1"].size == marker * 7
    assert json.loads((folder / "args.json").read_text()) == {"marker": marker}
    return marker


def _count_steps(tmp_path, monkeypatch):
    faults = Faults(0, "before", "raise")
    with monkeypatch.context() as m:
        m.setattr(at, "os", _Os(faults))
        write_checkpoint(tmp_path / "count", *_state(2), {"args.json": {"marker": 2}})
    return faults.n


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_fault_at_any_step_of_a_checkpoint_write_leaves_a_whole_checkpoint(tmp_path, monkeypatch, how):
    n_steps = _count_steps(tmp_path, monkeypatch)
    assert n_steps >= 5
    folder = tmp_path / "ck"
    steps = range(1, n_steps + 1) if how == "raise" else range(1, n_steps + 1, 2)
    for step in steps:
        for when in ("before", "after"):
            shutil.rmtree(folder, ignore_errors=True)
            write_checkpoint(folder, *_state(1), {"args.json": {"marker": 1}})
            faults = Faults(step, when, how)
            if how == "raise":
                with monkeypatch.context() as m:
                    m.setattr(at, "os", _Os(faults))
                    with pytest.raises(Injected):
                        write_checkpoint(folder, *_state(2), {"args.json": {"marker": 2}})
            else:
                pid = os.fork()
                if pid == 0:
                    at.os = _Os(faults)
                    try:
                        write_checkpoint(folder, *_state(2), {"args.json": {"marker": 2}})
                    finally:
                        os._exit(0)
                assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) in (0, KILLED)
            assert _whole(at.recovery_source(folder) or folder) in (1, 2), (step, when)
            write_checkpoint(folder, *_state(3), {"args.json": {"marker": 3}})  # the next write cleans up
            assert _whole(folder) == 3
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ck")) == []
