"""What makes `metricrec train` safe to run and to stop: checks before training, checkpoints,
``--resume``, and SIGINT/SIGTERM handling.

- Before any training (:func:`check_before_training`): the device exists, the training and test parts
  are not empty, a valid part is empty only when asked for (``--ratios X,0,Y``, or split files that
  ``metricrec data split --ratios X,0,Y`` wrote), no (user, item) pair is in two parts, and ``--out``
  is a folder that can be written (not a file, not read-only).
- During training a checkpoint is written to ``RUN_DIR/checkpoint`` after every epoch
  (``--checkpoint-every MINUTES``: at the first batch boundary or epoch end after that long; ``off``:
  never), with the run's own arguments (``args.json``); see :mod:`metricrec.training.checkpoint`.
- From its start (flags checked, data loaded) a run's folder holds ``run.json``: its arguments, the
  fingerprint of its training data and its status (:mod:`metricrec.cli.run_folder`).
- ``metricrec train --resume RUN_DIR`` reads those arguments and checks the data against the
  fingerprint; then a finished run is only reported, a run with a checkpoint goes on from the batch
  where it was taken, and a run killed before its first checkpoint starts again from scratch. On CPU
  with the same thread count either ends with the same model and metrics as a run that was never
  stopped (bitwise).
- SIGINT or SIGTERM stops at the next batch boundary: a checkpoint is written, the best-so-far model
  saved (with ``data.json`` and a ``report.json`` marked ``interrupted``), and the command exits 130
  or 143 with one line saying what was saved and how to go on. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .._file_kind import not_a_folder
from ..errors import CheckpointError, ConfigError, DataError, TrainingInterrupted
from ..training.json_files import read_json

if TYPE_CHECKING:  # the training side is imported where a run trains: parsing `train` needs no torch
    from ..data.splits import Split
    from ..models.base import EmbeddingRecommender
    from ..training.checkpoint import Checkpointer
from .run_folder import RUN_FILE, check_out_record, check_run_data, finished_line, mark_run, read_run, start_run
from .sources import note

__all__ = ["add_run_arguments", "resumed_args", "check_resumed_data", "check_before_training", "fit_resumable",
           "finish_checkpoint"]

#: Flags that may differ from their defaults next to ``--resume`` (they change nothing computed).
_RESUME_MAY_SET = {"resume", "no_progress", "debug", "func", "command", "dist_timeout", "config"}
#: Saved argument keys that are paths (made absolute: a resumed run may start in another folder).
_PATH_KEYS = ("interactions", "train", "valid", "test", "data_dir", "out")
_defaults: dict[str, Any] = {}


def _every(text: str) -> str | float:
    value = text.strip().lower()
    if value in ("epoch", "off"):
        return value
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0 or minutes != minutes or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'epoch', 'off' or a positive number of minutes, got {text!r}")
    return minutes


def add_run_arguments(train: argparse.ArgumentParser) -> None:
    """``--resume RUN_DIR`` and ``--checkpoint-every`` on the train parser (call after every other flag:
    the defaults recorded here are what ``--resume`` compares the given flags with)."""
    g = train.add_argument_group("checkpoints")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the killed or interrupted run in RUN_DIR with its own arguments (RUN_DIR/run.json): "
                        "from its checkpoint, or from scratch when it has none; a finished run is only reported")
    g.add_argument("--checkpoint-every", type=_every, default="epoch", metavar="epoch|MINUTES|off",
                   help="write RUN_DIR/checkpoint after every epoch (default), every MINUTES, or never")
    _defaults.update({a.dest: a.default for a in train._actions if a.dest != "help"})  # noqa: SLF001


# ---------------------------------------------------------------------- --resume
def saved_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's arguments as JSON (what ``--resume`` reads back), paths made absolute."""
    doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
           if k in _defaults and k not in _RESUME_MAY_SET}
    for k in _PATH_KEYS:
        if isinstance(doc.get(k), str):
            doc[k] = os.path.abspath(os.path.expanduser(doc[k]))
    feats = doc.get("item_features")
    if isinstance(feats, str) and feats not in ("tags", "genres"):
        doc["item_features"] = os.path.abspath(os.path.expanduser(feats))
    return doc


def resumed_args(args: argparse.Namespace) -> argparse.Namespace | None:
    """The arguments of the run in ``args.resume`` (its ``run.json``; for a run of an older version,
    its ``checkpoint/args.json``), with ``--out`` that folder; None when the run is finished (its
    line printed). :class:`ConfigError` when other training flags are given beside ``--resume`` or
    the folder is no run. The result has ``run_record`` (the ``run.json`` read, or None) and
    ``resume`` None when there is no checkpoint: the run starts again from scratch."""
    given = sorted(k for k, v in vars(args).items() if k not in _RESUME_MAY_SET and k in _defaults and v != _defaults[k])
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"--resume continues a run with its own arguments; drop {flags}")
    run = Path(args.resume)
    if not run.is_dir():
        what = not_a_folder(run)
        raise ConfigError(f"--resume {run}: " + (f"{what}, not a run folder" if what else "no such run folder"))
    record = read_run(run, known_args=_defaults)
    if (line := finished_line(run, record)) is not None:
        note(line)
        return None
    checkpointed = (run / "checkpoint").is_dir()
    if record is None and not checkpointed:
        raise ConfigError(f"--resume {run}: no {RUN_FILE} and no checkpoint there: not a 'metricrec train' run "
                          "folder, nothing to resume")
    doc = record["args"] if record is not None else read_json(run / "checkpoint" / "args.json", "run's arguments")
    if not isinstance(doc, dict) or any(k not in _defaults for k in doc):
        raise CheckpointError(f"{run / 'checkpoint' / 'args.json'}: not the arguments of a 'metricrec train' run")
    merged = argparse.Namespace(**{**vars(args), **doc})
    merged.resume, merged.out = (str(run) if checkpointed else None), str(run)
    merged.run_record = record
    merged.no_progress = args.no_progress or doc.get("no_progress", False)
    return merged


def record_start(args: argparse.Namespace) -> None:
    """A new run with ``--out`` writes ``OUT/run.json`` before anything else -- before the data is
    loaded, torch imported or a kernel compiled -- with its arguments and status ``started`` (the
    data's fingerprint follows once the data is split: :func:`~metricrec.cli.run_folder.start_run`).
    A run killed in its first second is so restarted by ``--resume OUT``. Not for a resumed or
    restarted run (its record exists), nor without ``--out`` (the folder's name comes from the data),
    nor on a torchrun rank other than 0."""
    if args.resume or getattr(args, "run_record", None) is not None or args.out is None \
            or os.environ.get("RANK", "0") != "0":
        return
    out = Path(args.out)
    _check_out(out)  # the checks training makes of --out, before writing into it
    created = [p for p in (out, *out.parents) if not p.exists()]  # the folders the record makes, deepest first
    start_run(out, saved_args(args), None, None)
    args.early_record = (out, created)


def discard_early_record(args: argparse.Namespace, out: Path | None = None) -> None:
    """Remove the record :func:`record_start` wrote in ``--out`` (and the folder when it made it)
    while it is still that first record: when the run writes to ``out`` after all (a synthetic
    fallback: ``OUT-synthetic-fallback``), or (``out`` None) when the command failed before the data
    was split -- a run refused for its data or flags leaves nothing behind, a killed one its record."""
    early = getattr(args, "early_record", None)
    if early is None or early[0] == out:
        return
    folder, created = early
    try:
        record = read_run(folder)
    except CheckpointError:
        return
    if record is None or record["data"]["train_fingerprint"] is not None:
        return  # the run's full record: the folder is the run's now
    (folder / RUN_FILE).unlink(missing_ok=True)
    for made in created:
        if made.is_dir() and not any(made.iterdir()):
            made.rmdir()
    args.early_record = None


def check_resumed_data(args: argparse.Namespace, out: Path, train_fingerprint: dict[str, Any], what: str) -> None:
    """On ``--resume``: the data must be the data the run was started on (:class:`DataError` naming
    what changed); a run without a checkpoint is said to start again from scratch."""
    record = getattr(args, "run_record", None)
    if record is None:
        return
    check_run_data(out, record, train_fingerprint, what)
    if not args.resume:
        why = "its checkpoints are off" if args.checkpoint_every == "off" else "killed before the first one"
        note(f"RESUME: {out} has no checkpoint ({why}); restarting from scratch with its recorded arguments")


# ---------------------------------------------------------------------- checks before training
def _check_out(out: Path) -> None:
    what = not_a_folder(out)
    if what is not None:  # a file, a FIFO, a device, a dangling link
        raise ConfigError(f"--out {out}: exists and {what}, not a folder; choose another --out")
    model = out / "model"
    if model.exists() and (not model.is_dir() or (any(model.iterdir()) and not (model / "config.json").is_file())):
        raise ConfigError(f"--out {out}: {model} exists and is not a metricrec model; choose another --out")
    check_out_record(out)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {probe} is not a writable folder; choose another --out")


def _pairs_in_both(a: Any, b: Any) -> int:
    if a.nnz == 0 or b.nnz == 0 or a.matrix.shape != b.matrix.shape:
        return 0
    return int(a.matrix.astype(bool).multiply(b.matrix.astype(bool)).nnz)


def check_before_training(args: argparse.Namespace, split: Split, out: Path) -> None:
    """Refuse, before any training, what would fail or mislead after it (see the module docstring)."""
    from ..models.base import _device  # the model's own device rule

    _device(args.device)
    sizes = split.sizes()
    if sizes["train"] == 0:
        raise DataError("the training part is empty: nothing to train on")
    if sizes["test"] == 0:
        raise DataError("the test part is empty: no metric could be computed (give the split a test share, "
                        "or a --test file with pairs of users and items of the training part)")
    if sizes["valid"] == 0 and not _no_valid_asked(args, split):
        raise DataError("the valid part is empty, so early stopping would have nothing to look at (ask for "
                        "none with --ratios X,0,Y, or give a --valid file with pairs of known users and items)")
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        n = _pairs_in_both(getattr(split, a), getattr(split, b))
        if n:
            raise DataError(f"the split leaks: {n:,} (user, item) pairs are in both the {a} and the {b} part; "
                            "the parts must be disjoint")
    _check_out(out)


def _valid_share(ratios: Any) -> float:
    try:
        return float(str(ratios).split(",")[1]) if isinstance(ratios, str) else float(ratios[1])
    except (IndexError, TypeError, ValueError):
        return -1.0


def _no_valid_asked(args: argparse.Namespace, split: Split) -> bool:
    """True when an empty valid part was asked for: ``--ratios X,0,Y`` of a ratio or temporal split, or
    split files that ``metricrec data split --ratios X,0,Y`` wrote (their checked ``split.json`` says so).
    A bare ``--valid`` file of nothing usable is no such request."""
    if getattr(args, "train", None) is None:
        return args.split in ("ratio", "temporal") and _valid_share(args.ratios) == 0
    written = split.meta.get("written")
    return isinstance(written, dict) and _valid_share(written.get("ratios")) == 0


# ---------------------------------------------------------------------- training that can stop
def fit_resumable(model: EmbeddingRecommender, split: Split, features: Any, args: argparse.Namespace, out: Path,
                  parallel: Any, save_interrupted: Callable[[str], str]) -> Checkpointer | None:
    """``model.fit`` with checkpoints in ``out/checkpoint`` (resumed with ``args.resume``) and
    SIGINT/SIGTERM stopping at a batch boundary; on such a stop ``save_interrupted(reason)`` saves the
    best-so-far model and :class:`TrainingInterrupted` is raised with what was saved. Under torchrun:
    a plain fit (no checkpoints). Returns the checkpointer (None when none)."""
    valid = split.valid if split.sizes()["valid"] else None
    fit_kw = {} if features is None else {"item_features": features}  # CML+F's; no other model takes them
    if parallel is not None:
        model.fit(split.train, valid, **fit_kw)
        return None
    every = args.checkpoint_every
    if args.resume:
        state = read_json(out / "checkpoint" / "state.json")  # checked in full when restored
        if isinstance(state, dict):
            pos = state.get("position")
            inside = f", inside epoch {state.get('epochs_done', 0) + 1} at pair {pos.get('pair')}" \
                if isinstance(pos, dict) and isinstance(state.get("epochs_done"), int) else ""
            note(f"RESUME: {out} from its checkpoint: {state.get('epochs_done')} epoch(s) done{inside}")
    from ..training.checkpoint import Checkpointer, StopSignals

    with StopSignals() as stop:
        ckpt = Checkpointer(out / "checkpoint", every_minutes=every if isinstance(every, float) else None,
                            resume=bool(args.resume), files={"args.json": saved_args(args)}, stop=stop,
                            enabled=every != "off", on_write=lambda n: mark_run(out, "training") if n == 1 else None)
        try:
            model.fit(split.train, valid, callbacks=[ckpt], **fit_kw)
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(f"{exc}; {save_interrupted(str(exc))}", exc.signum) from None
        if stop.requested is not None:  # a signal during the last epoch's end: training is complete
            raise TrainingInterrupted(f"signal {stop.requested} after the last epoch; "
                                      f"{save_interrupted('after the last epoch')}", stop.requested)
    return ckpt


def finish_checkpoint(out: Path) -> None:
    """Mark the run ``finished`` in ``out/run.json`` and remove ``out/checkpoint``, once the run's model
    and report are saved (nothing left to resume; a kill in between leaves a finished run)."""
    mark_run(out, "finished")
    folder = out / "checkpoint"
    if folder.is_dir():
        gone = folder.with_name(f".checkpoint.del.{os.getpid()}")
        os.rename(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)
