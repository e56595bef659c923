"""The JSON documents of a run folder (checkpoint documents, ``run.json``), read size-capped.

A module of its own, without torch, so that ``metricrec train --resume`` can read a run's record
before the training side is imported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._file_kind import open_regular
from ..errors import CheckpointError

__all__ = ["MAX_DOC", "read_json"]

#: Largest JSON document of a run folder read (bytes).
MAX_DOC = 1 << 30


def read_json(path: Path, what: str = "checkpoint document") -> Any:
    """A JSON file of a checkpoint, size-capped; :class:`CheckpointError` naming it otherwise."""
    try:
        with open_regular(path, f"a {what}", CheckpointError) as fh:  # a directory or a FIFO: refused, unopened
            if os.fstat(fh.fileno()).st_size > MAX_DOC:
                raise CheckpointError(f"{path}: larger than {MAX_DOC:,} bytes: not a {what}")
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (no checkpoint here: was the run started with checkpoints?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
