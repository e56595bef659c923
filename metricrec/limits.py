"""The one table of size limits: what the CLI accepts, what a model's config accepts, what the loader reads.

A setting the loader would refuse in a saved model must be refused before training, not after: so the
``metricrec train`` flags (:func:`bounded_int`, :func:`widths`, :func:`thread_count`), the configs
(:class:`~metricrec.models.config.EmbeddingConfig`, :class:`~metricrec.models.cml.config.CMLConfig`,
the models' ``num_threads``) and the model-file schema (:mod:`metricrec.models.schema`,
:func:`metricrec.models.cml.feature_net.mlp_shapes`) all read the numbers below. This module imports
nothing heavy (the CLI's parser uses it before torch is imported).

=====================  =================  ==============================================================
limit                  value              what it bounds
=====================  =================  ==============================================================
``MAX_ROWS``           2^31 - 1           users or items of a model (row indices are int32 when saved)
``MAX_FACTORS``        65,536             embedding dimension d (``--factors``, ``factors``)
``MAX_ARRAY_BYTES``    1 TiB              one array a model file may declare
``MAX_HIDDEN_WIDTH``   65,536             one hidden layer of CML+F's feature network (``--feature-hidden``)
``MAX_HIDDEN_LAYERS``  16                 hidden layers of that network
``MAX_MLP_BYTES``      64 GiB             parameters of that network, 4 bytes each
``MAX_THREADS``        256                CPU threads (``--threads``, ``num_threads``), or the machine's
                                          cores where it has more
=====================  =================  ==============================================================
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

__all__ = ["MAX_ROWS", "MAX_FACTORS", "MAX_ARRAY_BYTES", "MAX_HIDDEN_WIDTH", "MAX_HIDDEN_LAYERS", "MAX_MLP_BYTES",
           "MAX_THREADS", "max_threads", "usable_cores", "mlp_bytes", "limit_problem", "bounded_int", "widths", "thread_count"]

#: Most users or items a model may have (row indices are int32 in the saved liked items).
MAX_ROWS = 2**31 - 1
#: Widest embedding (factors, d) a model may have.
MAX_FACTORS = 1 << 16
#: Largest single array a model file may declare (the header is also checked against the file).
MAX_ARRAY_BYTES = 1 << 40
#: Widest hidden layer of CML+F's item feature network.
MAX_HIDDEN_WIDTH = 1 << 16
#: Most hidden layers of that network.
MAX_HIDDEN_LAYERS = 16
#: Largest feature network (parameters x 4 bytes).
MAX_MLP_BYTES = 1 << 36
#: Most CPU threads a run may ask for, unless the machine has more cores (:func:`max_threads`): far
#: more threads than cores only slow a run down, and a million makes OpenMP abort the process.
MAX_THREADS = 256


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The most threads accepted here: :data:`MAX_THREADS`, or the usable cores when there are more."""
    return max(MAX_THREADS, usable_cores())


def mlp_bytes(n_features: int, hidden: tuple[int, ...], out_dim: int) -> int:
    """Bytes of the parameters (float32 weights and biases) of a feature network of these widths."""
    sizes = (n_features, *hidden, out_dim)
    return 4 * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def limit_problem(name: str, value: object, lo: int, hi: int) -> str | None:
    """None when ``value`` is an integer in [lo, hi]; else ``"NAME must be an integer in [lo, hi], got V"``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
        return f"{name} must be an integer in [{lo:,}, {hi:,}], got {shown}"
    return None


def bounded_int(lo: int, hi: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lo, hi]; argparse names the flag in its one-line error.

    Parameters
    ----------
    lo, hi : int
        The bounds, inclusive.
    why : str
        Said after the bounds (e.g. ``"the most a model file may hold"``).
    """
    tail = f" ({why})" if why else ""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError: argparse's own "invalid int value: 'x'"
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo:,}, {hi:,}]{tail}, got {value:,}")
        return value

    parse.__name__ = "int"  # argparse's "invalid int value" for text that is not a number
    return parse


def widths(text: str) -> tuple[int, ...]:
    """An argparse ``type`` for hidden layer widths: ``256`` or ``256,128`` (``0``/``none``: no hidden
    layer), each in [1, :data:`MAX_HIDDEN_WIDTH`], at most :data:`MAX_HIDDEN_LAYERS` of them."""
    if text.strip().lower() in ("0", "none", ""):
        return ()
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 256 or 256,128 (0 for none), got {text!r}") from None
    if len(out) > MAX_HIDDEN_LAYERS or any(not 1 <= w <= MAX_HIDDEN_WIDTH for w in out):
        raise argparse.ArgumentTypeError(f"expected at most {MAX_HIDDEN_LAYERS} widths in [1, {MAX_HIDDEN_WIDTH:,}] "
                                         f"(the most a model file may hold), got {text!r}")
    return out


def thread_count(text: str) -> int:
    """An argparse ``type`` for ``--threads``: an integer in [1, :func:`max_threads`]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of threads, got {text!r}") from None
    hi = max_threads()
    if not 1 <= value <= hi:
        raise argparse.ArgumentTypeError(f"must be in [1, {hi:,}] (this machine has {usable_cores():,} usable CPU "
                                         f"core(s); more threads than cores only slow a run down), got {value:,}")
    return value
