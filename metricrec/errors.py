"""The library's error types: one base class, one subclass per kind of failure.

Each also derives from the built-in exception that code written before them caught
(``ValueError``, ``KeyError``, ...), so ``except ValueError`` keeps working.

Every class carries the exit status the ``metricrec`` command ends with when it stops on one
(``exit_code``) and a short advice (``hint``) the command appends to its one-line message; the
table is in ``docs/reliability.md`` and in ``metricrec --help``.
"""

from __future__ import annotations

import signal

__all__ = [
    "MetricrecError", "DataError", "ConfigError", "ModelFileError", "CheckpointError", "NotFittedError",
    "UnknownIdError", "TrainingDivergedError", "TrainingInterrupted",
]


class MetricrecError(Exception):
    """Base class of every error metricrec raises on purpose."""

    #: Exit status of the ``metricrec`` command (2: the input -- flags, data, settings -- is wrong).
    exit_code: int = 2
    #: What to do, appended to the command's one-line message (empty: the message says it).
    hint: str = ""


class DataError(MetricrecError, ValueError):
    """Input data that cannot be used as it is (names the file, line or argument)."""


class ConfigError(MetricrecError, ValueError):
    """A setting that is invalid or cannot be honoured here (names the setting)."""


class ModelFileError(MetricrecError, ValueError):
    """A model file that is corrupt, truncated, foreign or inconsistent."""

    exit_code = 3
    hint = "check the path; a damaged model must be trained or saved again"


class CheckpointError(ModelFileError):
    """A training checkpoint that cannot be resumed (damaged, foreign, or made with other data or
    settings)."""

    hint = "start the run again without --resume (the checkpoint is replaced)"


class NotFittedError(MetricrecError, RuntimeError):
    """A model used before ``fit`` or ``load``."""


class UnknownIdError(MetricrecError, KeyError, IndexError):
    """A raw user or item id (or an index) the model or data does not know (both a ``KeyError``
    and an ``IndexError``, what code written before it caught)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(MetricrecError, FloatingPointError):
    """Training produced non-finite or collapsed embeddings (the message names the likely cause)."""

    exit_code = 4


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving what it could (``signum``; the command
    exits 128 + signum: 130 or 143).

    Like ``KeyboardInterrupt`` (its base) it is no error of the input and not an ``Exception``, so
    no ``except Exception`` on the way swallows it.

    Parameters
    ----------
    message : str
    signum : int
        The signal received.
    """

    hint = ""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a killed process."""
        return 128 + self.signum
