"""Row-sparse optimisers for embedding tables.

A CML batch touches a subset of the user and item rows. These optimisers take the gradients of the
touched rows as (distinct row indices, summed row gradients) -- what
:meth:`GradBuffer.pop` returns -- update only those rows and their optimiser state,
then project them back into the norm ball.

On the CPU, when numba is installed, :meth:`RowAdagrad.step_buffer` runs as one compiled pass over
the touched rows (update, projection and buffer reset fused), so its cost is proportional to the
rows a batch touched, never to the size of the table.
"""

from __future__ import annotations

from typing import Any

import os

import numpy as np
import torch

__all__ = ["GradBuffer", "RowAdagrad", "RowAdam", "make_optimizer", "clip_rows", "numba_module", "lazy_kernels",
           "kernel_parts"]


class GradBuffer:
    """Dense gradient accumulator for one embedding table, with the set of touched rows.

    Gradients of repeated rows add up in place (``index_add_``) in a buffer that is reused across
    batches, which avoids concatenating and sorting per-batch gradient lists.
    """

    def __init__(self, n_rows: int, dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.grad = torch.zeros(n_rows, dim, dtype=dtype, device=device)
        self.touched = torch.zeros(n_rows, dtype=torch.bool, device=device)

    def add(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        """Add ``grads`` (shape (R, d)) to ``rows`` (shape (R,)); repeated rows sum."""
        self.grad.index_add_(0, rows, grads)
        self.touched[rows] = True

    def pop(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(touched row indices, their summed gradients), and reset the buffer."""
        rows = self.touched.nonzero().squeeze(1)
        grads = self.grad.index_select(0, rows)
        self.grad.index_fill_(0, rows, 0.0)
        self.touched[rows] = False
        return rows, grads


_fused = None


def numba_module():
    """numba for the compiled training paths, or None when it is not installed.

    Unless ``NUMBA_THREADING_LAYER`` says otherwise, numba's parallel loops run on its own
    ``workqueue`` pool instead of OpenMP: OpenMP workers spin while they wait, and on a machine with
    any other load two spinning pools (numba's and torch's) made the compiled epoch up to 8x slower
    (benchmarks/results/scale.md); the workqueue pool sleeps. The layer is fixed at numba's first
    parallel launch in the process, so this must run before it.
    """
    try:
        import numba
    except ImportError:
        return None
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    return numba


def lazy_kernels(*builders: Any) -> Any:
    """A function returning the kernels ``builder(numba)`` of each builder, compiled (or loaded from
    numba's cache) on the first call only: the compiled training steps' shared start."""
    cache: list[tuple[Any, ...]] = []

    def kernels() -> tuple[Any, ...]:
        if not cache:
            numba = numba_module()
            cache.append(tuple(build(numba) for build in builders))
        return cache[0]

    return kernels


def kernel_parts() -> int:
    """Parts a race-free scatter kernel splits the tables into: numba's current thread count (part q
    owns the rows r with r % parts == q)."""
    import numba

    return int(numba.get_num_threads())


def _fused_adagrad():
    """The compiled fused AdaGrad step (numba), or None when numba is not installed."""
    global _fused
    if _fused is None:
        numba = numba_module()
        if numba is None:
            _fused = False
            return None

        @numba.njit(parallel=True, cache=True)
        def adagrad_rows(weight, acc, grad, touched, rows, lr, eps, max_norm, block):
            # per row: acc += g^2; w -= lr g / sqrt(acc + eps); clip each run of `block` columns
            # (the whole row when block = d) to max_norm (<= 0: none); g = 0
            d = weight.shape[1]
            for j in numba.prange(rows.shape[0]):
                r = rows[j]
                for lo in range(0, d, block):
                    hi = min(lo + block, d)
                    sq = np.float32(0.0)
                    for t in range(lo, hi):
                        g = grad[r, t]
                        a = acc[r, t] + g * g
                        acc[r, t] = a
                        w = weight[r, t] - lr * (g / np.sqrt(a + eps))
                        weight[r, t] = w
                        sq += w * w
                        grad[r, t] = 0.0
                    if max_norm > 0:
                        norm = np.sqrt(sq)
                        if norm > max_norm:
                            scale = max_norm / max(norm, np.float32(1e-12))
                            for t in range(lo, hi):
                                weight[r, t] *= scale
                touched[r] = False

        _fused = adagrad_rows
    return _fused or None


def _block_width(block: int | None, width: int) -> int:
    """The fused kernel's clip width: ``block`` (checked to divide ``width``), or the whole row."""
    if block is None or block == width:
        return max(int(width), 1)
    if block < 1 or width % block:
        raise ValueError(f"block {block} does not divide the row width {width}")
    return int(block)


def _can_fuse(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors) and tensors[0].dtype == torch.float32


def clip_rows(rows: torch.Tensor, max_norm: float | None, block: int | None = None) -> torch.Tensor:
    """Scale rows whose L2 norm exceeds ``max_norm`` back to norm ``max_norm`` (in place).

    With ``block``, each run of ``block`` consecutive columns of a row is a vector of its own and is
    clipped alone (a row that holds several vectors of one user: DPCML); ``block`` must divide the
    width. None (or the width) clips whole rows.
    """
    if max_norm is None:
        return rows
    if block is not None and block != rows.shape[1]:
        if block < 1 or rows.shape[1] % block:
            raise ValueError(f"block {block} does not divide the row width {rows.shape[1]}")
        norms = rows.reshape(rows.shape[0], rows.shape[1] // block, block).norm(dim=2, keepdim=True)
        scale = torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0)
        return rows.mul_(scale.expand(-1, -1, block).reshape(rows.shape))
    norms = rows.norm(dim=1, keepdim=True)
    scale = torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0)
    return rows.mul_(scale)


class RowAdagrad:
    """Adagrad (element-wise accumulators) applied to touched rows only.

    ``acc += g^2; w -= lr * g / sqrt(acc + eps)`` with accumulators starting at
    ``initial_accumulator`` (0.1, TensorFlow's default, which the paper's code used).
    Untouched rows see no update, exactly as dense Adagrad with a zero gradient would leave them.
    """

    def __init__(self, weight: torch.Tensor, lr: float, *, initial_accumulator: float = 0.1, eps: float = 1e-10):
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.weight = weight
        self.lr = float(lr)
        self.eps = float(eps)
        self.acc = torch.full_like(weight, float(initial_accumulator))

    def step(self, rows: torch.Tensor, grads: torch.Tensor, max_norm: float | None = None, *,
             block: int | None = None) -> None:
        """Apply ``grads`` (shape (R, d)) to the distinct ``rows`` (shape (R,)), then clip them
        (each run of ``block`` columns alone with ``block``: :func:`clip_rows`)."""
        if rows.numel() == 0:
            return
        idx, g = rows, grads
        acc = self.acc.index_select(0, idx).addcmul_(g, g)
        self.acc.index_copy_(0, idx, acc)
        new = self.weight.index_select(0, idx).addcdiv_(g, (acc + self.eps).sqrt_(), value=-self.lr)
        self.weight.index_copy_(0, idx, clip_rows(new, max_norm, block))

    def step_buffer(self, buffer: GradBuffer, max_norm: float | None = None, dense_fraction: float = 0.25, *,
                    block: int | None = None) -> None:
        """Apply and reset a :class:`~metricrec.kernel.GradBuffer`.

        On the CPU with numba: one fused compiled pass over the touched rows. Otherwise, when more
        than ``dense_fraction`` of the rows were touched, the update runs over the whole
        table in place (no gathers or scatters). That is exactly the sparse update: an untouched
        row has a zero gradient, so its accumulator and value do not change, and it is already
        inside the ball. ``block``: clip each run of that many columns of a row alone
        (:func:`clip_rows`; None: whole rows).
        """
        fused = _fused_adagrad()
        if fused is not None and _can_fuse(self.weight, self.acc, buffer.grad):
            rows = buffer.touched.nonzero().squeeze(1).numpy()
            if rows.size:
                width = self.weight.shape[1]
                fused(self.weight.detach().numpy(), self.acc.numpy(), buffer.grad.numpy(), buffer.touched.numpy(),
                      rows, np.float32(self.lr), np.float32(self.eps), np.float32(max_norm or 0.0),
                      _block_width(block, width))
            return
        n_touched = int(buffer.touched.sum())
        if n_touched == 0:
            return
        if n_touched < dense_fraction * buffer.touched.numel():
            self.step(*buffer.pop(), max_norm=max_norm, block=block)
            return
        g = buffer.grad
        self.acc.addcmul_(g, g)
        self.weight.addcdiv_(g, (self.acc + self.eps).sqrt_(), value=-self.lr)
        if max_norm is not None:
            rows = buffer.touched.nonzero().squeeze(1)
            self.weight.index_copy_(0, rows, clip_rows(self.weight.index_select(0, rows), max_norm, block))
        g.zero_()
        buffer.touched.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"acc": self.acc}


class RowAdam:
    """Lazy Adam: moments of touched rows only, bias correction by the global step count."""

    def __init__(self, weight: torch.Tensor, lr: float, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.weight = weight
        self.lr = float(lr)
        self.b1, self.b2 = betas
        self.eps = float(eps)
        self.m = torch.zeros_like(weight)
        self.v = torch.zeros_like(weight)
        self.t = 0

    def step(self, rows: torch.Tensor, grads: torch.Tensor, max_norm: float | None = None, *,
             block: int | None = None) -> None:
        if rows.numel() == 0:
            return
        self.t += 1
        idx, g = rows, grads
        m = self.m.index_select(0, idx).mul_(self.b1).add_(g, alpha=1 - self.b1)
        v = self.v.index_select(0, idx).mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        self.m.index_copy_(0, idx, m)
        self.v.index_copy_(0, idx, v)
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        denom = (v / c2).sqrt_().add_(self.eps)
        new = self.weight.index_select(0, idx).addcdiv_(m, denom, value=-self.lr / c1)
        self.weight.index_copy_(0, idx, clip_rows(new, max_norm, block))

    def step_buffer(self, buffer: GradBuffer, max_norm: float | None = None, dense_fraction: float = 0.25, *,
                    block: int | None = None) -> None:
        """Apply and reset a GradBuffer (always row-sparse: lazy Adam must not decay untouched rows)."""
        self.step(*buffer.pop(), max_norm=max_norm, block=block)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"m": self.m, "v": self.v}


def make_optimizer(name: str, weight: torch.Tensor, lr: float) -> RowAdagrad | RowAdam:
    """``"adagrad"`` (the paper's) or ``"adam"``."""
    if name == "adagrad":
        return RowAdagrad(weight, lr)
    if name == "adam":
        return RowAdam(weight, lr)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adagrad' or 'adam'")
