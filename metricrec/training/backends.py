"""The one registry of training-step backends, and the thread policy each one runs under.

A *backend* is how a model's training step is computed: ``"torch"`` (tensor ops, any device) or
``"numba"`` (a compiled CPU kernel, optional extra ``metricrec[fast]``). Every backend name is
spelled here and nowhere else: models map :data:`TORCH`/:data:`NUMBA` to their step functions, the
CLI offers :data:`CHOICES`, and :func:`resolve_backend` turns ``"auto"`` into a concrete name.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # imported where a device or thread count is handled: the CLI reads CHOICES without torch
    import torch

from ..errors import ConfigError

__all__ = ["AUTO", "TORCH", "NUMBA", "BACKENDS", "CHOICES", "Backend", "resolve_backend", "thread_policy"]

AUTO = "auto"
TORCH = "torch"
NUMBA = "numba"


@dataclass(frozen=True)
class Backend:
    """What a backend needs to run.

    Attributes
    ----------
    name : str
    devices : tuple of str
        Device types it runs on (``"cpu"``, ``"cuda"``); empty means any.
    module : str or None
        Python module it needs (None: nothing beyond torch).
    install : str
        How to get that module.
    """

    name: str
    devices: tuple[str, ...]
    module: str | None
    install: str

    def available(self) -> bool:
        """True when the module it needs can be imported."""
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def runs_on(self, device: torch.device) -> bool:
        """True when it can run on ``device``."""
        return not self.devices or device.type in self.devices


BACKENDS: dict[str, Backend] = {
    TORCH: Backend(TORCH, (), None, ""),
    NUMBA: Backend(NUMBA, ("cpu",), "numba", "pip install metricrec[fast]"),
}
#: What users may ask for, ``"auto"`` first.
CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)
#: ``"auto"`` takes the first backend of this order that is available and runs on the device.
_AUTO_ORDER = (NUMBA, TORCH)


def resolve_backend(name: str, device: str | torch.device, allowed: tuple[str, ...] | None = None) -> str:
    """The concrete backend for ``name`` on ``device``.

    Parameters
    ----------
    name : str
        One of :data:`CHOICES`.
    device : str or torch.device
    allowed : tuple of str, optional
        The backends the model has a step for (its ``backends``; None: all): ``"auto"`` picks among
        these only, so a model without a compiled kernel trains with torch under torch's thread policy.

    Raises
    ------
    ConfigError
        An unknown name, a backend that cannot run on the device, or one whose module is missing.
    """
    import torch

    device = torch.device(device)
    if name == AUTO:
        return next(b for b in _AUTO_ORDER if (allowed is None or b in allowed) and BACKENDS[b].available()
                    and BACKENDS[b].runs_on(device))
    backend = BACKENDS.get(name)
    if backend is None:
        raise ConfigError(f"backend must be one of {', '.join(CHOICES)}; got {name!r}")
    if not backend.runs_on(device):
        raise ConfigError(f"the {name} backend runs on {'/'.join(backend.devices)} only (device is {device})")
    if not backend.available():
        raise ConfigError(f"backend {name!r} needs the {backend.module} package: {backend.install}")
    return name


@contextlib.contextmanager
def thread_policy(backend: str) -> Iterator[None]:
    """Threads for one epoch of ``backend``.

    The numba kernel is the parallel part of its step and gets torch's thread count; torch's
    remaining ops run on one thread meanwhile. Two thread pools that both spin-wait for their workers
    fight over the cores, and on a machine with any other load that turned a 0.4 s epoch into tens of
    seconds. The torch backend keeps torch's threads.
    """
    import torch

    threads = torch.get_num_threads()
    if backend != NUMBA:
        yield
        return
    import numba

    want = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
