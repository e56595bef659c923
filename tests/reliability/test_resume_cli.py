"""The resume demonstration: `metricrec train` killed with SIGKILL in the middle of an epoch (after its
second checkpoint), then `metricrec train --resume RUN_DIR`, ends with bitwise the same model, per-epoch
losses and valid metrics, and test metrics as the same run never interrupted (CPU, one thread). SIGTERM
and SIGINT stop at a batch boundary with a checkpoint and the best-so-far model, exit 143 / 130 with
one line, and the run resumes to the same end. A run killed before its first checkpoint restarts
from its run.json alone, a finished run is only reported, and changed data is refused by name."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metricrec.serialization import load_model_files

ARGS = ["train", "--synthetic", "small", "--epochs", "6", "--factors", "8", "--batch-size", "100",
        "--threads", "1", "--no-progress", "--patience", "0", "--seed", "5", "--eval-every", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*argv):
    return [sys.executable, "-m", "metricrec", *argv]


def _start(out, *extra, args=ARGS):
    return subprocess.Popen(_cli(*args, "--out", str(out), *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _epochs_done(out):
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return -1


def _signal_after(proc, out, sig, epochs, timeout=300):
    """Send ``sig`` once the run's checkpoint says ``epochs`` epochs are done (the run is in the next)."""
    t0 = time.monotonic()
    while _epochs_done(out) < epochs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the run wrote no checkpoint in time"
        time.sleep(0.002)
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


def _has_fingerprint(out):
    try:
        return json.loads((out / "run.json").read_text())["data"]["train_fingerprint"] is not None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _kill_before_the_first_checkpoint(out, args=ARGS, timeout=300, with_data=False):
    """Start a run and SIGKILL it once its run.json exists (``with_data``: once it also holds the data's
    fingerprint). ``--checkpoint-every 60`` (minutes) puts its only checkpoint at the end of its last
    epoch, so the kill always comes first (checked)."""
    proc = _start(out, "--checkpoint-every", "60", args=args)
    t0 = time.monotonic()
    while not (out / "run.json").is_file() or (with_data and not _has_fingerprint(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the run wrote no run.json in time"
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=timeout)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint").exists() and not (out / "model").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "started"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(_cli(*ARGS, "--out", str(out)), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (out / "checkpoint").exists()  # a finished run removes its checkpoint
    return out


def _assert_same_run(a, b):
    wa, _ = load_model_files(a / "model")
    wb, _ = load_model_files(b / "model")
    assert sorted(wa) == sorted(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)  # bitwise
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    assert ra["test"] == rb["test"] and ra["best_epoch"] == rb["best_epoch"]
    strip = ("seconds", "eval_seconds")
    assert [{k: v for k, v in e.items() if k not in strip} for e in ra["epochs"]] == \
        [{k: v for k, v in e.items() if k not in strip} for e in rb["epochs"]]


def _resume(out):
    done = subprocess.run(_cli("train", "--resume", str(out)), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "RESUME:" in done.stderr and not (out / "checkpoint").exists()
    return done


def test_sigkill_in_the_middle_of_an_epoch_then_resume_is_bitwise_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _signal_after(proc, out, signal.SIGKILL, 2)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists() and 2 <= _epochs_done(out) < 6
    _resume(out)
    _assert_same_run(reference, out)
    assert json.loads((out / "report.json").read_text())["resumed_from"]["epoch"] >= 2


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_the_best_model_then_resume(reference, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start(out, "--checkpoint-every", "0.0001")  # mid-epoch checkpoints as well
    _, err = _signal_after(proc, out, sig, 1)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"metricrec: {signal.Signals(sig).name} received in epoch") and "Traceback" not in err
    assert "best-so-far model (epoch" in last and f"metricrec train --resume {out}" in last
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] and report["test"] is None and report["best_epoch"] >= 1
    assert (out / "model" / "config.json").is_file() and (out / "checkpoint" / "state.json").is_file()
    if sig == signal.SIGTERM:
        assert json.loads((out / "checkpoint" / "state.json").read_text())["position"] is not None
        _resume(out)
        _assert_same_run(reference, out)


def test_sigkill_before_the_first_checkpoint_then_resume_restarts_it_to_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    _kill_before_the_first_checkpoint(out)
    done = _resume(out)  # no argument retyped: they come from run.json
    assert f"RESUME: {out} has no checkpoint (killed before the first one); restarting from scratch with its " \
           "recorded arguments" in done.stderr.splitlines()
    # Bitwise, as the resume tests above: one thread, the same kernel and seed repeat the same float
    # operations in the same order, and the restart must reproduce them (a tolerance would hide a restart
    # that lost a recorded argument, e.g. the seed). --checkpoint-every changes no number (SIGTERM test).
    _assert_same_run(reference, out)
    assert json.loads((out / "report.json").read_text())["resumed_from"] is None
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_sigkill_one_second_after_the_start_then_resume_is_the_uninterrupted_run(reference, tmp_path):
    """The issue's case: SIGKILL 1 s after `metricrec train` starts. The run records its arguments before
    importing torch or reading the data (0.4 s after the start on a 2-core machine), so the folder is
    there; --resume alone restarts it and ends where the uninterrupted run ends (bitwise: one thread)."""
    out = tmp_path / "run"
    proc = _start(out, "--checkpoint-every", "60")
    time.sleep(1.0)
    proc.kill()
    proc.communicate(timeout=60)
    assert (out / "run.json").is_file(), "no run record 1 s after the start"
    assert not (out / "checkpoint").exists() and not (out / "model").exists()
    done = _resume(out)
    assert "restarting from scratch with its recorded arguments" in done.stderr
    _assert_same_run(reference, out)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["data"]["train_fingerprint"] is not None


def test_a_run_refused_for_its_data_leaves_no_folder(tmp_path):
    out = tmp_path / "deep" / "run"
    done = subprocess.run(_cli("train", "--interactions", str(tmp_path / "missing.csv"), "--out", str(out)),
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and "missing.csv" in done.stderr
    assert not (tmp_path / "deep").exists()  # the first record and the folders it made are gone


def _files(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_trains_nothing(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)  # copy2: contents and mtimes kept
    before = _files(out)
    done = subprocess.run(_cli("train", "--resume", str(out)), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    test = json.loads((out / "report.json").read_text())["test"]
    assert done.stderr.strip().splitlines()[-1] == (
        f"RESUME: {out} is finished: model {out / 'model'} (test recall@50 {test['recall@50']:.4f}, ndcg@50 "
        f"{test['ndcg@50']:.4f}; see {out / 'report.json'}); nothing to resume")
    assert "DATA:" not in done.stderr and done.stdout == ""  # no data loaded, no epoch table
    assert _files(out) == before  # model, report and run.json untouched


def _csv(path, extra_user=False):
    from metricrec.data.synthetic import generate

    data = generate(60, 40, 1200, n_clusters=3, seed=0, with_item_features=False)
    rows, cols, _ = data.to_coo_arrays()
    lines = ["user,item"] + [f"u{data.user_ids[r]},i{data.item_ids[c]}" for r, c in zip(rows, cols)]
    lines += [f"newcomer,i{data.item_ids[c]}" for c in range(10)] if extra_user else []
    path.write_text("\n".join(lines) + "\n")
    return len(set(data.user_ids[rows]))


@pytest.mark.parametrize("checkpointed", [False, True])
def test_resume_on_changed_data_is_one_line_naming_the_change(tmp_path, checkpointed):
    csv, out = tmp_path / "ratings.csv", tmp_path / "run"
    n_users = _csv(csv)
    args = ["train", "--interactions", str(csv), "--user-col", "user", "--item-col", "item", "--epochs", "3",
            "--factors", "8", "--batch-size", "100", "--threads", "1", "--no-progress"]
    if checkpointed:  # the fingerprint check comes before the checkpoint's own (exit 3, naming no change)
        _signal_after(_start(out, args=args), out, signal.SIGKILL, 1)
    else:
        _kill_before_the_first_checkpoint(out, args, with_data=True)  # killed before its data was read: no change
    _csv(csv, extra_user=True)
    done = subprocess.run(_cli("train", "--resume", str(out)), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"metricrec: error: --resume {out}: the data (file {csv}, training part) changed since the "
                           f"run started: users: {n_users} when the run started, {n_users + 1} now; training pairs: ")
    assert "Traceback" not in done.stderr and "restarting" not in done.stderr
    assert (out / "checkpoint").exists() == checkpointed and not (out / "model").exists()


def test_a_run_folder_of_an_older_version_resumes_from_its_checkpoint_arguments(tmp_path, capsys):
    from unittest import mock

    from metricrec.cli.main import main

    out = tmp_path / "run"
    with mock.patch("metricrec.cli.train_exec.finish_checkpoint"):  # keep the final checkpoint, as a kill would
        assert main(["train", "--synthetic", "small", "--epochs", "2", "--factors", "8", "--threads", "1",
                     "--no-progress", "--out", str(out)]) == 0
    for name in ("run.json", "report.json", "data.json"):  # what a run of an older version, killed, left
        (out / name).unlink()
    shutil.rmtree(out / "model")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert f"RESUME: {out} from its checkpoint: 2 epoch(s) done" in capsys.readouterr().err
    assert (out / "model" / "config.json").is_file() and not (out / "checkpoint").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
