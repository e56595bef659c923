"""The `metricrec` error boundary: every exception ends as one line with its documented exit status."""

import errno
import os
import signal

import pytest

from metricrec.cli.boundary import EXIT_STATUSES, Terminated, describe_failure, run_guarded
from metricrec.cli.main import build_parser, main
from metricrec.errors import (CheckpointError, ConfigError, DataError, ModelFileError, TrainingDivergedError,
                              TrainingInterrupted, UnknownIdError)


@pytest.mark.parametrize("exc, code, words", [
    (DataError("bad.csv line 3: no item"), 2, "bad.csv line 3"),
    (ConfigError("margin must be a positive number"), 2, "margin must be"),
    (UnknownIdError("unknown user id 'x'"), 2, "unknown user id 'x'"),
    (ModelFileError("m/config.json: not valid JSON"), 3, "trained or saved again"),
    (CheckpointError("run/checkpoint/state.json: not a metricrec checkpoint"), 3, "without --resume"),
    (TrainingDivergedError("training diverged at epoch 2"), 4, "diverged at epoch 2"),
    (MemoryError("Unable to allocate 745. GiB"), 5, "out of memory (Unable to allocate 745. GiB)"),
    (OSError(errno.ENOSPC, "No space left on device", "run/model"), 2, "no space left on the device writing run/model"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "data.csv"), 2, "No such file or directory: data.csv"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "Permission denied: /root/x"),
    (KeyError("no column 'user'"), 2, "no column 'user'"),
    (OverflowError("cannot convert float infinity to integer"), 2, "cannot convert float infinity"),
    (ValueError("line one\nline two"), 2, "line one; line two"),
    (RuntimeError("could not draw negatives"), 1, "internal error: RuntimeError: could not draw negatives"),
    (AttributeError("'list' object has no attribute 'get'"), 1, "rerun with --debug"),
    (TypeError("unsupported operand"), 1, "internal error: TypeError"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (Terminated(), 143, "terminated (SIGTERM)"),
    (TrainingInterrupted("SIGTERM received in epoch 3", signal.SIGTERM), 143, "SIGTERM received in epoch 3"),
    (TrainingInterrupted("SIGINT received after epoch 1", signal.SIGINT), 130, "SIGINT received"),
])
def test_every_failure_is_one_line_with_its_exit_status(exc, code, words, capsys):
    def fail():
        raise exc

    assert run_guarded(fail) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metricrec: ") and words in err
    assert "Traceback" not in err
    assert code in EXIT_STATUSES


def test_an_internal_error_names_the_place_and_debug_prints_the_traceback(capsys):
    from metricrec.models import retrieval

    def fail():
        retrieval.top_n(None, None, 1, distance="euclidean")  # a bug: None where arrays belong

    assert run_guarded(fail) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "(at metricrec/models/retrieval.py:" in err and "--debug" in err
    assert run_guarded(fail, debug=True) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1].startswith("metricrec: internal error")


def test_debug_and_its_alias_traceback_before_or_after_the_subcommand(tmp_path, capsys):
    missing = str(tmp_path / "none.csv")
    for argv in (["--debug", "data", "stats", "--interactions", missing],
                 ["data", "stats", "--interactions", missing, "--traceback"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1].startswith("metricrec: error:")
    assert main(["data", "stats", "--interactions", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_help_lists_the_exit_statuses_and_usage_errors_are_one_line(capsys):
    help_text = build_parser().format_help()
    for code in EXIT_STATUSES:
        assert f"\n  {code:<4} " in help_text
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid int value: 'x'" in err and "metricrec train --help" in err


def test_sigterm_outside_training_is_one_line_and_143(capsys):
    def slow():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    assert run_guarded(slow) == 143
    assert capsys.readouterr().err == "metricrec: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lives only while the command runs


def test_a_closed_output_pipe_stops_quietly_with_141(capsys):
    """`metricrec ... | head`: the write that finds the pipe closed ends the command without a line."""
    import io

    def write_to_closed_pipe():
        raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    assert run_guarded(write_to_closed_pipe, stream=err) == 141
    assert err.getvalue() == ""  # no "metricrec: error: Broken pipe"
