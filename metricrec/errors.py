"""The library's error types: one base class, one subclass per kind of failure.

Each also derives from the built-in exception that code written before them caught
(``ValueError``, ``KeyError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "MetricrecError", "DataError", "ConfigError", "ModelFileError", "NotFittedError", "UnknownIdError",
    "TrainingDivergedError",
]


class MetricrecError(Exception):
    """Base class of every error metricrec raises on purpose."""


class DataError(MetricrecError, ValueError):
    """Input data that cannot be used as it is (names the file, line or argument)."""


class ConfigError(MetricrecError, ValueError):
    """A setting that is invalid or cannot be honoured here (names the setting)."""


class ModelFileError(MetricrecError, ValueError):
    """A model file that is corrupt, truncated, foreign or inconsistent."""


class NotFittedError(MetricrecError, RuntimeError):
    """A model used before ``fit`` or ``load``."""


class UnknownIdError(MetricrecError, KeyError, IndexError):
    """A raw user or item id (or an index) the model or data does not know (both a ``KeyError``
    and an ``IndexError``, what code written before it caught)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(MetricrecError, FloatingPointError):
    """Training produced non-finite or collapsed embeddings."""
