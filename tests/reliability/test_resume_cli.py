"""The resume demonstration: `metricrec train` killed with SIGKILL in the middle of an epoch (after its
second checkpoint), then `metricrec train --resume RUN_DIR`, ends with bitwise the same model, per-epoch
losses and valid metrics, and test metrics as the same run never interrupted (CPU, one thread). SIGTERM
and SIGINT stop at a batch boundary with a checkpoint and the best-so-far model, exit 143 / 130 with
one line, and the run resumes to the same end."""

import json
import os
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


def _start(out, *extra):
    return subprocess.Popen(_cli(*ARGS, "--out", str(out), *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
