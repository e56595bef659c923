"""Negative samplers: draw items a user has not interacted with.

A sampler draws ``U`` candidate negatives per positive pair. To keep the cost of gathering
candidate vectors low, one draw can be *shared* by a group of consecutive positives (``group_size``
> 1): every row of the group sees the same ``U`` items, except where an item is a positive of that
row's user -- such entries are redrawn for that row alone. Either way a sampler never returns a
positive of the row's user (the guarantee the tests check); ``group_size=1`` gives independent draws
per positive, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError
from .optim import numba_module

__all__ = ["NegativeDraw", "PositiveSet", "UniformSampler", "PopularitySampler", "make_sampler"]

# Above this many (user, item) cells the torch membership test uses binary search instead of a bitmap.
_DENSE_LIMIT = 1 << 27

_kernels = None
# The compiled test keeps one exact bit per cell up to max(_EXACT_BITS, _EXACT_BITS_PER_PAIR * nnz) cells.
_EXACT_BITS, _EXACT_BITS_PER_PAIR = 1 << 27, 32


def _numba_kernels():
    """The compiled membership kernels (numba), or None when numba is not installed."""
    global _kernels
    if _kernels is None:
        numba = numba_module()
        _kernels = False if numba is None else _compile(numba)
    return _kernels or None


def _compile(numba):
    """The kernels of :mod:`metricrec.training.sampling_kernels` (module level, so numba caches them)."""
    from . import sampling_kernels as k

    return k.build, k.contains_flat, k.expand_and_test


class PositiveSet:
    """Vectorised membership test "is item k a positive of user u" for a CSR matrix.

    On the CPU, when numba is installed, compiled lookups in a bit array: one bit per (user, item)
    cell while that takes at most ``max(2^27, 32 nnz)`` bits (exact), else a one-hash Bloom filter
    of about 8-16 bits per positive, whose hits (the positives and ~6-12 % of the rest) are settled
    by a binary search in the user's own sorted row of the CSR matrix (shared, not copied). A lookup
    costs one access to a cache-sized array whatever the number of pairs. Otherwise (or on a GPU)
    small problems use a dense boolean bitmap (one byte per cell) and large ones a sorted array of
    ``user * n_items + item`` keys searched with ``torch.searchsorted``.
    """

    def __init__(self, matrix: sp.csr_matrix) -> None:
        m = sp.csr_matrix(matrix)
        if not m.has_sorted_indices:
            m.sort_indices()
        self.n_users, self.n_items = m.shape
        self._indptr, self._indices = m.indptr, m.indices
        self._bitmap: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._kern = _numba_kernels()
        self._csr = self._kern is not None
        if self._csr:
            cells, nnz = self.n_users * self.n_items, max(m.nnz, 1)
            self._exact = cells <= max(_EXACT_BITS, _EXACT_BITS_PER_PAIR * nnz)
            log2m = max(int(cells - 1).bit_length(), 3) if self._exact else max(int(8 * nnz).bit_length(), 6)
            self._shift = 0 if self._exact else 64 - log2m
            self._bits = np.zeros(1 << (log2m - 3), dtype=np.uint8)
            self._kern[0](self._indptr, self._indices, self._bits, self.n_items, self._shift)
        else:
            self._build_torch("cpu")

    def _args(self) -> tuple:
        return self._indptr, self._indices, self._bits, self._exact, self.n_items, self._shift

    def _build_torch(self, device: str | torch.device) -> None:
        counts = np.diff(self._indptr)
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), counts)
        keys = rows * self.n_items + self._indices.astype(np.int64)
        del rows
        if self.n_users * self.n_items <= _DENSE_LIMIT:
            bitmap = torch.zeros(self.n_users * self.n_items, dtype=torch.bool)
            bitmap[torch.from_numpy(keys)] = True
            self._bitmap, self._keys = bitmap.to(device), None
        else:
            self._bitmap, self._keys = None, torch.from_numpy(np.unique(keys)).to(device)

    def to(self, device: str | torch.device) -> "PositiveSet":
        """Move the lookup structure to ``device`` (in place); returns self."""
        device = torch.device(device)
        if device.type != "cpu" and self._csr:
            self._csr = False
            self._build_torch(device)
        if self._bitmap is not None:
            self._bitmap = self._bitmap.to(device)
        if self._keys is not None:
            self._keys = self._keys.to(device)
        return self

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Boolean tensor, same shape as the broadcast of ``users`` and ``items``."""
        if self._csr:
            u, k = torch.broadcast_tensors(users.to(torch.int64), items.to(torch.int64))
            out = np.empty(u.shape, dtype=np.bool_)
            self._kern[1](*self._args(), u.contiguous().numpy().reshape(-1),
                                k.contiguous().numpy().reshape(-1), out.reshape(-1))
            return torch.from_numpy(out)
        key = users.to(torch.int64) * self.n_items + items.to(torch.int64)
        if self._bitmap is not None:
            return torch.take(self._bitmap, key)
        keys = self._keys
        assert keys is not None
        if keys.numel() == 0:
            return torch.zeros_like(key, dtype=torch.bool)
        pos = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
        return keys[pos] == key

    def expand(self, users: torch.Tensor, shared: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(negatives, bad): ``shared`` repeated ``group_size`` times per row, cut to ``len(users)``
        rows, and the mask of its entries that are positives of the row's user."""
        b = users.numel()
        if self._csr:
            negatives = np.empty((b, shared.shape[1]), dtype=np.int64)
            bad = np.empty((b, shared.shape[1]), dtype=np.bool_)
            self._kern[2](*self._args(), users.contiguous().numpy(), shared.contiguous().numpy(),
                                group_size, negatives, bad)
            return torch.from_numpy(negatives), torch.from_numpy(bad)
        negatives = shared.repeat_interleave(group_size, dim=0)[:b]
        return negatives, self.contains(users[:, None], negatives)


@dataclass
class NegativeDraw:
    """Negatives for a batch of B positives, in shared-group form.

    Attributes
    ----------
    shared : torch.LongTensor, shape (B // G, U)
        One draw of ``U`` items per group of ``G`` consecutive rows.
    negatives : torch.LongTensor, shape (B, U)
        The per-row negatives: ``shared`` repeated per row, with ``fix_*`` applied.
    fix_rows, fix_cols : torch.LongTensor, shape (F,)
        Entries (row, column) of ``negatives`` that differ from the shared draw, because the shared
        item was a positive of that row's user and was redrawn.
    group_size : int
    """

    shared: torch.Tensor
    negatives: torch.Tensor
    fix_rows: torch.Tensor
    fix_cols: torch.Tensor
    group_size: int


class _Sampler:
    """Base: subclasses implement :meth:`_draw` (i.i.d. items from the proposal distribution)."""

    def __init__(
        self, train: sp.csr_matrix, *, seed: int = 0, max_rounds: int = 100, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.positives = PositiveSet(train).to(self.device)
        self.n_items = self.positives.n_items
        counts = np.diff(sp.csr_matrix(train).indptr)
        full = np.flatnonzero(counts >= self.n_items)
        if full.size:  # the trainer leaves such users out (metricrec.training.guards.trainable_pairs)
            raise DataError(
                f"users {full[:5].tolist()} interacted with every item: no negative can be sampled for them"
            )
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.max_rounds = max_rounds

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, users: torch.Tensor, n_negatives: int, group_size: int = 1) -> NegativeDraw:
        """Draw ``n_negatives`` negatives for each row of ``users`` (shape (B,)).

        Rows are grouped in runs of ``group_size`` that share one draw; B need not be a multiple of
        the group size (the last group is shorter).
        """
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        users = users.to(torch.int64)
        b = users.numel()
        n_groups = -(-b // group_size)
        shared = self._draw((n_groups, n_negatives))
        negatives, bad = self.positives.expand(users, shared, group_size)
        fix_rows, fix_cols = bad.nonzero(as_tuple=True)
        if fix_rows.numel():
            todo_r, todo_c = fix_rows, fix_cols
            for _ in range(self.max_rounds):
                fresh = self._draw((todo_r.numel(),))
                negatives[todo_r, todo_c] = fresh
                still = self.positives.contains(users[todo_r], fresh)
                if not still.any():
                    break
                todo_r, todo_c = todo_r[still], todo_c[still]
            else:  # users holding almost every item: draw exactly from the items they do not hold
                negatives[todo_r, todo_c] = self._draw_from_rest(users[todo_r])
        return NegativeDraw(shared, negatives, fix_rows, fix_cols, group_size)

    def _draw_from_rest(self, users: torch.Tensor) -> torch.Tensor:
        """One item per entry, uniform over the items its user does not hold (exact; for the few
        entries rejection sampling could not settle in ``max_rounds``: users with almost every item)."""
        pos = self.positives
        u = users.cpu().numpy()
        r = torch.rand(u.size, generator=self.generator, dtype=torch.float64, device=self.device).cpu().numpy()
        out = np.empty(u.size, dtype=np.int64)
        for user in np.unique(u):
            rest = np.setdiff1d(np.arange(self.n_items), pos._indices[pos._indptr[user]:pos._indptr[user + 1]],
                                assume_unique=True)
            at = np.flatnonzero(u == user)
            out[at] = rest[np.minimum((r[at] * rest.size).astype(np.int64), rest.size - 1)]
        return torch.from_numpy(out).to(self.device)


class UniformSampler(_Sampler):
    """Items drawn uniformly from the catalogue, positives of the row's user redrawn."""

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, self.n_items, shape, generator=self.generator, device=self.device)


class PopularitySampler(_Sampler):
    """Items drawn with probability proportional to ``(count + 1) ** alpha`` (alpha=0: uniform)."""

    def __init__(
        self,
        train: sp.csr_matrix,
        *,
        alpha: float = 0.75,
        seed: int = 0,
        max_rounds: int = 100,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(train, seed=seed, max_rounds=max_rounds, device=device)
        counts = np.bincount(sp.csr_matrix(train).indices, minlength=self.n_items).astype(np.float64)
        weights = (counts + 1.0) ** float(alpha)
        cdf = np.cumsum(weights)
        self._cdf = torch.from_numpy(cdf / cdf[-1]).to(self.device)
        self.alpha = float(alpha)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64, device=self.device)
        return torch.searchsorted(self._cdf, u).clamp_(max=self.n_items - 1)


def make_sampler(
    name: str, train: sp.csr_matrix, *, alpha: float = 0.75, seed: int = 0, device: str | torch.device = "cpu"
) -> _Sampler:
    """Sampler by name: ``"uniform"`` or ``"popularity"``, drawing on ``device``."""
    if name == "uniform":
        return UniformSampler(train, seed=seed, device=device)
    if name == "popularity":
        return PopularitySampler(train, alpha=alpha, seed=seed, device=device)
    raise ValueError(f"unknown sampler {name!r}; choose 'uniform' or 'popularity'")
