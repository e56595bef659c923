"""Training checkpoints: everything a killed training needs to go on as if it had never stopped.

A checkpoint is one folder, written whole or not at all (:func:`metricrec._atomic.atomic_directory`):

- ``state.json``: the trainer's position (epochs done; inside an epoch, the next pair and the loss
  summed so far), the history, the early-stopping bookkeeping, the config and the fingerprint of the
  training pairs, and the structure of every state below;
- ``state.npz``: the arrays -- both embedding tables, the optimisers' state (AdaGrad accumulators;
  Adam moments and step), the best epoch's weights, the model's extras (CML+F: f, its placement and
  f's Adam state), and the random generators: the trainer's shuffling generator (its state before the
  current epoch's shuffle), the sampler's generator and torch's global generator (CML+F's dropout);
- any files the caller adds (``metricrec train`` adds ``args.json``: the run's own arguments).

:class:`Checkpointer` is a trainer hook (:data:`metricrec.training.trainer.EpochCallback`): it writes
a checkpoint after every epoch, or -- with ``every_minutes`` -- at the first batch boundary or epoch
end after that long; with ``resume`` it restores the folder's checkpoint before the first epoch, so
the run continues from the very batch where the checkpoint was taken. On CPU with the same thread
count the resumed run is bitwise the run that was never stopped (the steps, samplers and optimisers
are deterministic given these states). :class:`StopSignals` turns SIGINT/SIGTERM into a stop at the
next batch boundary: a checkpoint is written there and :class:`~metricrec.errors.TrainingInterrupted`
raised. Data-parallel training (torchrun) writes no checkpoint (each rank's sampler state would be
needed); it is documented in docs/reliability.md.

Reading a checkpoint checks it before allocating: the JSON document first (size-capped), then every
array header against the structure the document declares and the trainer's own tables
(:mod:`metricrec._array_files`); anything wrong is a :class:`~metricrec.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .._array_files import read_npz
from .._file_kind import open_regular
from .._atomic import atomic_directory, write_new_file
from ..errors import CheckpointError, TrainingInterrupted
from ..fingerprint import fingerprint
from .history import History
from .json_files import read_json  # noqa: F401 (also imported from here)

__all__ = ["Checkpointer", "StopSignals", "capture", "restore", "write_checkpoint", "read_checkpoint",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "metricrec.checkpoint"
FORMAT_VERSION = 1
_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


# ---------------------------------------------------------------------- nested states <-> JSON + arrays
def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` (dicts, lists, tuples, tensors, arrays, numbers, strings) as JSON, arrays set aside."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        key = f"a{len(arrays)}"
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        arrays[key] = np.ascontiguousarray(arr)
        return {"$tensor" if isinstance(obj, torch.Tensor) else "$array": key,
                "dtype": str(arrays[key].dtype), "shape": list(arrays[key].shape)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"$dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a training state holds a {type(obj).__name__}, which a checkpoint cannot store")


def _decode(doc: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(doc, list):
        return [_decode(v, arrays) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "$tensor" in doc:
        return torch.from_numpy(np.array(arrays[doc["$tensor"]]))
    if "$array" in doc:
        return np.array(arrays[doc["$array"]])
    if "$tuple" in doc:
        return tuple(_decode(v, arrays) for v in doc["$tuple"])
    if "$dict" in doc:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in doc["$dict"]}
    if "$float" in doc:
        return float(doc["$float"])
    return {k: _decode(v, arrays) for k, v in doc.items()}


def _refs(doc: Any) -> Iterator[dict[str, Any]]:
    """Every array reference of an encoded document."""
    if isinstance(doc, list):
        for v in doc:
            yield from _refs(v)
    elif isinstance(doc, dict):
        if "$tensor" in doc or "$array" in doc:
            yield doc
            return
        for v in doc.values():
            yield from _refs(v)


# ---------------------------------------------------------------------- a trainer's state
def _opt_state(opt: Any) -> dict[str, Any]:
    """A row-sparse optimiser's state (:mod:`metricrec.training.optim`): AdaGrad's accumulators, Adam's
    moments and step count."""
    return {k: getattr(opt, k) for k in ("acc", "m", "v", "t") if hasattr(opt, k)}


def _digest(trainer: Any) -> dict[str, Any]:
    return {k: v for k, v in fingerprint(trainer.train).items() if k in ("n_users", "n_items", "nnz", "pairs_sha256")}


def capture(trainer: Any, position: tuple[int, float, dict[str, float]] | None = None,
            stopped: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(document, arrays) of everything ``trainer`` needs to go on: at an epoch end (``position``
    None) or at a batch boundary inside the current epoch (``position``: next pair, loss, terms)."""
    arrays: dict[str, np.ndarray] = {}
    step, best = trainer.step, trainer.best
    extra = getattr(step, "resume_state", None)
    shuffle = trainer.epoch_gen_state if position is not None else trainer._gen.get_state()
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "saved_at": time.time(),
        "config": json.loads(json.dumps(trainer.config.to_dict())), "train": _digest(trainer),
        "epochs_done": len(trainer.history.epochs), "stopped": bool(stopped),
        "position": None if position is None else {"pair": int(position[0]), "loss": _encode(float(position[1]), {}),
                                                   "parts": {k: _encode(float(v), {}) for k, v in position[2].items()}},
        "history": trainer.history.to_dict(),
        "best": {"score": _encode(float(best.score), {}), "waited": int(best.waited), "state": _encode(best.state, arrays),
                 "per_user": _encode(best.per_user, arrays)},
        "budget": trainer.schedule.state() if hasattr(trainer.schedule, "load_state") else None,
        "step": _encode(step.state(), arrays),
        "step_extra": _encode(extra() if extra else None, arrays),
        "optimizers": [_encode(_opt_state(o), arrays) for o in trainer._opt],
        "generators": _encode({"shuffle": shuffle, "sampler": trainer._sampler.generator.get_state(),
                               "torch": torch.get_rng_state()}, arrays),
    }
    return doc, arrays


def restore(trainer: Any, doc: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Put a :func:`capture` back into ``trainer`` (made as the original one: same step, data, config)."""
    step = trainer.step
    state = _decode(doc["step"], arrays)
    tables = (step.user_emb, step.item_emb)
    if not isinstance(state, tuple) or len(state) < 2 or any(
            not isinstance(t, torch.Tensor) or t.shape != ref.shape for t, ref in zip(state, tables)):
        raise CheckpointError("the checkpoint's embedding tables do not fit this model's")
    step.restore(state)
    if getattr(step, "load_resume_state", None):
        step.load_resume_state(_decode(doc["step_extra"], arrays))
    for opt, saved in zip(trainer._opt, _decode(doc["optimizers"], arrays)):
        for k, v in saved.items():
            if isinstance(v, torch.Tensor):
                getattr(opt, k).copy_(v)
            else:
                setattr(opt, k, v)
    gens = _decode(doc["generators"], arrays)
    trainer._gen.set_state(gens["shuffle"])
    trainer._sampler.generator.set_state(gens["sampler"])
    torch.set_rng_state(gens["torch"])
    trainer.history = History.from_dict(doc["history"])
    best = trainer.best
    best.score, best.waited, best.state = _decode(doc["best"]["score"], {}), doc["best"]["waited"], \
        _decode(doc["best"]["state"], arrays)
    best.per_user = _decode(doc["best"].get("per_user"), arrays)
    if doc.get("budget") is not None and hasattr(trainer.schedule, "load_state"):
        trainer.schedule.load_state(doc["budget"])
    pos = doc.get("position")
    trainer.resume_at = None if pos is None else (
        pos["pair"], _decode(pos["loss"], {}), {k: _decode(v, {}) for k, v in pos["parts"].items()})
    trainer.finished = bool(doc.get("stopped"))


# ---------------------------------------------------------------------- files
def write_checkpoint(folder: str | Path, doc: dict[str, Any], arrays: Mapping[str, np.ndarray],
                     files: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder`` (``state.json``, ``state.npz`` and ``files``: name -> JSON document) as one
    atomic unit; a crash at any moment leaves the previous checkpoint or this one."""
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        with open(tmp / "state.npz", "xb") as fh:
            np.savez(fh, **arrays)
        write_new_file(tmp / "state.json", json.dumps(doc, allow_nan=False).encode("utf-8"))
        for name, content in (files or {}).items():
            write_new_file(tmp / name, (json.dumps(content, indent=2) + "\n").encode("utf-8"))
    return folder


def _check_doc(doc: Any, trainer: Any, where: Path) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a metricrec checkpoint")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format_version {doc.get('format_version')!r} is not supported")
    if doc.get("config") != json.loads(json.dumps(trainer.config.to_dict())):
        raise CheckpointError(f"{where}: the checkpoint was made with other settings than this run's")
    if doc.get("train") != _digest(trainer):
        raise CheckpointError(f"{where}: the checkpoint was made on other training data than this run's")
    keys = ("epochs_done", "history", "best", "step", "step_extra", "optimizers", "generators")
    if any(k not in doc for k in keys) or not isinstance(doc.get("best"), dict):
        raise CheckpointError(f"{where}: incomplete checkpoint (keys {', '.join(keys)} expected)")


def _bound(trainer: Any) -> int:
    """Most bytes a checkpoint of ``trainer`` may declare: its tables, optimiser states and best copy
    with room to spare, plus the model's other parameters."""
    tables = sum(t.numel() * t.element_size() for t in (trainer.step.user_emb, trainer.step.item_emb))
    extra = sum(p.numel() * 4 for p in getattr(getattr(trainer.step, "feature_reg", None), "mlp", torch.nn.Module()).parameters())
    return 8 * (tables + extra) + (64 << 20)


def read_checkpoint(folder: str | Path, trainer: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(document, arrays) of the checkpoint in ``folder`` for ``trainer``: refused with
    :class:`CheckpointError` unless it is whole, of this data and settings, and every array header
    matches what the document declares within the trainer's size (checked before any array is read)."""
    folder = Path(folder)
    doc = read_json(folder / "state.json")
    _check_doc(doc, trainer, folder / "state.json")
    declared = {r.get("$tensor", r.get("$array")): r for r in _refs(doc)}

    def check(specs: Mapping[str, Any]) -> None:
        if set(specs) != set(declared):
            raise CheckpointError(f"{folder / 'state.npz'}: its arrays are not the ones state.json declares")
        for name, (shape, dtype) in specs.items():
            if list(shape) != declared[name].get("shape") or str(dtype) != declared[name].get("dtype"):
                raise CheckpointError(f"{folder / 'state.npz'}: array {name!r} is {shape} {dtype}, state.json "
                                      f"declares {declared[name].get('shape')} {declared[name].get('dtype')}")
        total = sum(math.prod(s) * d.itemsize for s, d in specs.values())
        if total > _bound(trainer):
            raise CheckpointError(f"{folder / 'state.npz'}: declares {total:,} bytes, more than this model's "
                                  f"checkpoint can hold")

    try:
        with open_regular(folder / "state.npz", "a checkpoint file", CheckpointError) as fh:  # never a FIFO
            arrays = read_npz(fh, folder / "state.npz", check, error=CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{folder / 'state.npz'}: missing (an incomplete checkpoint)") from None
    return doc, arrays


# ---------------------------------------------------------------------- the trainer hook
class StopSignals:
    """While active (a context manager, main thread only): the first SIGINT or SIGTERM sets
    :attr:`requested` (the signal number) -- the training stops at its next batch boundary -- and a
    second one stops at once (:class:`TrainingInterrupted` from the handler)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise TrainingInterrupted(f"{_SIGNAL_NAMES.get(signum, signum)} again: stopped at once", signum)
        self.requested = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNAL_NAMES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Checkpointer:
    """Trainer hook writing checkpoints to ``folder`` and, with ``resume``, continuing from one.

    Parameters
    ----------
    folder : path
        The checkpoint folder (``metricrec train`` uses ``RUN_DIR/checkpoint``).
    every_minutes : float, optional
        Write at the first batch boundary or epoch end this long after the last write. Default:
        after every epoch.
    resume : bool
        Restore the checkpoint in ``folder`` before the first epoch.
    files : mapping, optional
        Extra JSON documents written into every checkpoint (name -> object).
    stop : StopSignals, optional
        Honour its stop requests at batch boundaries: write a checkpoint, raise TrainingInterrupted.
    enabled : bool
        False: write nothing (only honour ``stop``).
    on_write : callable, optional
        Called with the number of checkpoints written so far after each write (``metricrec train``
        marks its run folder ``training`` after the first).

    Attributes
    ----------
    resumed_from : dict or None
        ``{"epoch": epochs done, "pair": next pair or None}`` of the restored checkpoint.
    writes : int
        Checkpoints written by this hook.
    """

    def __init__(self, folder: str | Path, *, every_minutes: float | None = None, resume: bool = False,
                 files: Mapping[str, Any] | None = None, stop: StopSignals | None = None,
                 enabled: bool = True, on_write: Callable[[int], None] | None = None) -> None:
        self.folder, self.resume, self.files, self.stop = Path(folder), resume, dict(files or {}), stop
        self.enabled, self.on_write = enabled, on_write
        self.every_s = None if every_minutes is None else 60.0 * float(every_minutes)
        self.resumed_from: dict[str, Any] | None = None
        self.writes, self._last, self._off = 0, time.monotonic(), False

    def on_fit_start(self, trainer: Any) -> None:
        """Off under data-parallel training; with ``resume``, restore the folder's checkpoint."""
        self._off = trainer.parallel is not None or not self.enabled
        if self.resume and trainer.parallel is None:
            doc, arrays = read_checkpoint(self.folder, trainer)
            restore(trainer, doc, arrays)
            pos = doc.get("position")
            self.resumed_from = {"epoch": doc["epochs_done"], "pair": None if pos is None else pos["pair"]}
        self._last = time.monotonic()

    def _due(self) -> bool:
        return self.every_s is not None and time.monotonic() - self._last >= self.every_s

    def write(self, trainer: Any, position: tuple[int, float, dict[str, float]] | None = None,
              stopped: bool = False) -> None:
        """Write a checkpoint of ``trainer`` now (see :func:`capture`)."""
        if self._off:
            return
        doc, arrays = capture(trainer, None if position is None else (position[0], position[1], dict(position[2])),
                              stopped)
        write_checkpoint(self.folder, doc, arrays, self.files)
        self.writes, self._last = self.writes + 1, time.monotonic()
        if self.on_write is not None:
            self.on_write(self.writes)

    def _interrupt(self, trainer: Any, where: str) -> None:
        signum = int(self.stop.requested)  # type: ignore[union-attr]
        saved = f"checkpoint saved in {self.folder}" if not self._off else "no checkpoint (checkpoints are off)"
        raise TrainingInterrupted(f"{_SIGNAL_NAMES.get(signum, signum)} received {where}: {saved}", signum)

    def after_batch(self, trainer: Any, pair: int, loss: float, parts: dict[str, float]) -> None:
        """A batch boundary: honour a stop request, or write when ``every_minutes`` have passed."""
        stopping = self.stop is not None and self.stop.requested is not None
        if stopping or self._due():
            self.write(trainer, (min(pair, trainer.n_pairs), loss, parts))
        if stopping:
            epoch = len(trainer.history.epochs) + 1
            self._interrupt(trainer, f"in epoch {epoch} (pair {min(pair, trainer.n_pairs):,} of {trainer.n_pairs:,})")

    def after_epoch(self, trainer: Any, record: Any, stopping: bool) -> None:
        """An epoch end: write (every epoch, or when due, and always at the last one), honour a stop."""
        last = stopping or record.epoch >= trainer.config.epochs
        requested = self.stop is not None and self.stop.requested is not None
        if self.every_s is None or last or requested or self._due():
            self.write(trainer, None, stopped=last)
        if requested and not last:
            self._interrupt(trainer, f"after epoch {record.epoch}")
