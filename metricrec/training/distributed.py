"""Data-parallel training on ``torch.distributed``: every rank holds both tables whole, trains on its
share of each global batch, and the rows' gradients are summed across ranks every step.

Launch with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``)::

    torchrun --nproc_per_node=2 -m metricrec train --synthetic ml-1m --out runs/ddp
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        --rdzv-id=job1 -m metricrec train ...          # on every machine

How one step runs on ``W`` ranks (see docs/scaling.md):

1. every rank draws the same epoch order (same seed) and takes every ``W``-th pair of the global
   batch (:meth:`DataParallel.shard`); it samples its own negatives (seed ``seed + 1 + rank``);
2. the model's step adds the gradients of its pairs into its row buffers; CML's covariance term
   (:func:`metricrec.models.cml.step_torch.add_covariance_term`) asks :func:`current` for the
   group and is computed over the distinct rows of the *global* batch, as in one process: the
   ranks OR their row masks, sum the column means and the ``d x d`` scatter matrix, and each rank
   adds the gradient of a ``1/W`` share of the rows;
3. :meth:`DataParallel.combine` ORs the touched-row masks of both tables and sums the gradients of
   the touched rows (one all-reduce of ``n_users + n_items`` bytes, one of ``rows x d`` floats);
4. every rank applies the same optimiser step to the same tables with the same summed gradients,
   so the tables stay identical (checked at the end of training by :meth:`DataParallel.check_identical`).

Rank 0 validates and broadcasts the metrics (every rank takes the same early-stopping decisions),
and only rank 0 prints and writes. Collectives run under the process group's timeout: a rank that
dies closes its connections and the others stop at their next collective with
:class:`RankFailedError`; one that hangs is given up after the timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ["DataParallel", "RankFailedError", "CommStats", "launched", "init_from_env", "current", "active",
           "shutdown", "DEFAULT_TIMEOUT_S"]

from .config import DEFAULT_TIMEOUT_S  # noqa: E402  (defined beside the other settings: the CLI reads it without torch)

_ACTIVE: "DataParallel | None" = None


class RankFailedError(ConnectionError):
    """A collective failed: another rank died, hung past the timeout, or the network went away."""


@dataclass
class CommStats:
    """What this rank put into collectives: calls, payload bytes and seconds spent in them."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    steps: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    def per_step(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"bytes": self.bytes / n, "calls": self.calls / n, "seconds": self.seconds / n}


class DataParallel:
    """The rank's view of the process group and the collectives training needs.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        Default: the default group (``init_process_group`` must have run).
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        self.stats = CommStats()

    # ------------------------------------------------------------------ data
    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch: every ``world``-th entry from ``rank``."""
        return idx[self.rank::self.world]

    # ------------------------------------------------------------------ collectives
    def _reduce(self, tensor: torch.Tensor, op: Any, name: str) -> torch.Tensor:
        """All-reduce ``tensor`` in place; a failure becomes :class:`RankFailedError`."""
        t0 = time.perf_counter()
        try:
            dist.all_reduce(tensor, op=op, group=self.group)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses with the transport's text
            raise RankFailedError(
                f"rank {self.rank} of {self.world}: the {name} all-reduce failed -- another rank stopped, "
                f"hung past the timeout or lost the network ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from None
        self.stats.calls += 1
        self.stats.bytes += tensor.numel() * tensor.element_size()
        self.stats.by_op[name] = self.stats.by_op.get(name, 0) + tensor.numel() * tensor.element_size()
        self.stats.seconds += time.perf_counter() - t0
        return tensor

    def union(self, *masks: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise OR of boolean masks across ranks (one all-reduce for all of them)."""
        flat = torch.cat([m.reshape(-1) for m in masks]).to(torch.uint8)
        self._reduce(flat, dist.ReduceOp.MAX, "row masks")
        out, lo = [], 0
        for m in masks:
            out.append(flat[lo: lo + m.numel()].view(m.shape).bool())
            lo += m.numel()
        return out

    def sum_(self, tensor: torch.Tensor, name: str = "sum") -> torch.Tensor:
        """Sum ``tensor`` across ranks, in place (the same bits on every rank)."""
        return self._reduce(tensor, dist.ReduceOp.SUM, name)

    def combine(self, *buffers: Any) -> None:
        """Sum :class:`~metricrec.training.optim.GradBuffer` s across ranks: afterwards every rank's
        buffers hold the global batch's gradients on the union of the touched rows."""
        touched = self.union(*(b.touched for b in buffers))
        rows = [t.nonzero().squeeze(1) for t in touched]
        # flattened: the buffers may differ in width (DPCML's user rows hold C vectors)
        grads = torch.cat([b.grad.index_select(0, r).reshape(-1) for b, r in zip(buffers, rows)])
        self.sum_(grads, "row gradients")
        lo = 0
        for b, r, t in zip(buffers, rows, touched):
            size = r.numel() * b.grad.shape[1]
            b.grad.index_copy_(0, r, grads[lo: lo + size].view(r.numel(), b.grad.shape[1]))
            b.touched.copy_(t)
            lo += size
        self.stats.steps += 1

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Sum a dict of floats across ranks (the same keys on every rank)."""
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._device())
        self.sum_(t, "epoch totals")
        return dict(zip(keys, t.cpu().tolist()))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small picklable object, e.g. validation metrics)."""
        box = [obj if self.rank == 0 else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group, device=self._device())
        except Exception as exc:
            raise RankFailedError(f"rank {self.rank} of {self.world}: waiting for rank 0 failed "
                                  f"({type(exc).__name__}: {str(exc).strip()[:300]})") from None
        return box[0]

    def check_identical(self, *tables: torch.Tensor) -> None:
        """Raise :class:`RuntimeError` unless every rank holds bit-identical ``tables``."""
        crc = torch.tensor([zlib.crc32(t.detach().cpu().contiguous().numpy().tobytes()) for t in tables],
                           dtype=torch.int64, device=self._device())
        lo, hi = crc.clone(), crc.clone()
        self._reduce(lo, dist.ReduceOp.MIN, "checksums")
        self._reduce(hi, dist.ReduceOp.MAX, "checksums")
        if not torch.equal(lo, hi):
            raise RuntimeError(f"rank {self.rank}: the embedding tables differ across ranks (checksums "
                               f"{lo.tolist()} .. {hi.tolist()})")

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


# ---------------------------------------------------------------------- process-wide state
def launched() -> bool:
    """True when the process was started by ``torchrun`` (or with its variables set by hand)
    for more than one process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE")) and int(os.environ["WORLD_SIZE"]) > 1


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables ((0, 1, 0) without them)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> DataParallel | None:
    """Join the process group torchrun describes and make it :func:`current`; None when not
    launched for several processes. gloo for CPU training, NCCL for CUDA (each rank on
    ``cuda:LOCAL_RANK``)."""
    global _ACTIVE
    if not launched():
        return None
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(env_rank()[2])
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    _ACTIVE = DataParallel()
    return _ACTIVE


def current() -> DataParallel | None:
    """The data-parallel group training runs in, or None (one process)."""
    return _ACTIVE


@contextlib.contextmanager
def active(parallel: DataParallel | None) -> Iterator[DataParallel | None]:
    """Make ``parallel`` :func:`current` inside the block (for library use without torchrun)."""
    global _ACTIVE
    old, _ACTIVE = _ACTIVE, parallel
    try:
        yield parallel
    finally:
        _ACTIVE = old


def shutdown() -> None:
    """Leave the process group (if this module joined one)."""
    global _ACTIVE
    _ACTIVE = None
    if dist.is_initialized():
        dist.destroy_process_group()
