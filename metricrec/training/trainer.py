"""The training loop every embedding model shares: shuffled positive pairs in batches, sampled
negatives, the model's step, row-sparse updates, validation, early stopping, callbacks.

The trainer knows nothing of the model: a model hands it a :class:`TrainingStep` (its tables, how a
batch turns into gradients, how to score for validation). It never parses data and the model never
sees the loop; see :mod:`metricrec.models.cml.step` for CML's step.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..errors import DataError, TrainingDivergedError
from ..metrics import Scorer, evaluate
from . import distributed
from .backends import thread_policy
from .config import TrainingConfig
from .guards import check_tables, distinct_rows, trainable_pairs
from .history import EpochRecord, History
from .optim import GradBuffer, make_optimizer
from .budget import EXTEND, SHORTEN, STOP, AdaptiveSchedule, decide, paired_gain
from .schedule import LRSchedule
from .sampling import NegativeDraw, make_sampler

__all__ = ["TablesStep", "Trainer", "TrainingStep", "EpochCallback", "VALID_METRIC", "make_schedule", "unvalidated_epoch_cap"]

#: The validation metric early stopping and model selection use (docs/protocol.md).
VALID_METRIC = "recall@50"
_VALID_KS = (50, 100)

#: Called after every epoch with the record and the trainer; return True to stop training. An object
#: with ``on_fit_start(trainer)``, ``after_batch(trainer, pair, loss, parts)`` and
#: ``after_epoch(trainer, record, stopping)`` methods is a hook instead (a checkpointer:
#: :class:`metricrec.training.checkpoint.Checkpointer`).
EpochCallback = Callable[[EpochRecord, "Trainer"], "bool | None"]


class TrainingStep(Protocol):
    """What a model gives the trainer.

    Attributes
    ----------
    name : str
        Shown on the progress bar.
    backend : str
        A name from :mod:`metricrec.training.backends` (sets the thread policy of each epoch).
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        The tables the trainer's row-sparse optimisers update in place.
    user_clip_block : int or None, optional
        A step may set it when a user row holds several vectors (DPCML: C vectors of width d side
        by side): the ball (``max_norm``) then bounds each run of this many columns of a user row
        alone (:func:`~metricrec.training.optim.clip_rows`). Absent or None: whole rows.
    """

    name: str
    backend: str
    user_emb: torch.Tensor
    item_emb: torch.Tensor

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Add the batch's gradients into the buffers; return (total loss, named loss terms)."""

    def epoch_end(self) -> None:
        """Anything the model does once per epoch (may adjust the tables)."""

    def state(self) -> Any:
        """A snapshot of everything trained (tables included), for best-epoch restore."""

    def restore(self, state: Any) -> None:
        """Put a :meth:`state` snapshot back."""

    def scorer(self) -> Scorer:
        """Scores for validation: ``scorer(users) -> (len(users), n_items)`` tensor, higher is better."""


class TablesStep:
    """What most steps share: nothing to do between epochs, and a snapshot that is copies of the two
    tables (``user_emb``, ``item_emb``). A step that trains more (SML's margins, LRML's memory) writes
    its own :meth:`state` and :meth:`restore`."""

    user_emb: torch.Tensor
    item_emb: torch.Tensor

    def epoch_end(self) -> None:
        """Nothing to do between epochs."""

    def state(self) -> Any:
        """Copies of both tables."""
        return self.user_emb.detach().clone(), self.item_emb.detach().clone()

    def restore(self, state: Any) -> None:
        """Put a :meth:`state` snapshot back (in place)."""
        self.user_emb.copy_(state[0])
        self.item_emb.copy_(state[1])


class Trainer:
    """Trains a model's :class:`TrainingStep` on a CSR matrix of positives.

    Parameters
    ----------
    step : TrainingStep
    train : scipy.sparse.csr_matrix, shape (n_users, n_items)
        Positives (non-zeros); weights are ignored.
    valid : scipy.sparse.csr_matrix, optional
        Held-out positives for per-epoch Recall@50/@100 and early stopping (train items are
        excluded from the ranking).
    config : TrainingConfig
        Epochs, batch size, negatives, optimiser, patience, seed.
    device : str or torch.device
    progress : bool
        Show a tqdm bar over epochs.
    verbose : bool
        Print the per-epoch table (epoch, loss, valid Recall@50, Recall@100, seconds).
    callbacks : sequence of callables
        ``callback(record, trainer)`` after each epoch; returning True stops training. Objects with
        an ``after_epoch`` method are hooks (see :data:`EpochCallback`): they may restore a
        checkpoint before the first epoch and see every batch boundary.
    stream : file-like, optional
        Where the table goes (default stdout).
    frozen_items : bool
        Update the user table only (fold-in: new users against a trained item table).

    Attributes
    ----------
    history : History
    valid_users : numpy.ndarray or None
        The validation users ranked each epoch (a fixed sample of ``config.valid_users``; None: all).
    n_negatives : int
        Negatives per positive in use (``config.n_negatives`` or the default rule).
    batch_size : int
        The batch size in use (``config.batch_size`` or the default rule). In data-parallel training
        (:mod:`metricrec.training.distributed`) it is the global batch, split across the ranks.
    parallel : DataParallel or None
        The data-parallel group (:func:`metricrec.training.distributed.current` when the trainer was
        made); only its rank 0 validates, prints and shows progress.
    """

    def __init__(self, step: TrainingStep, train: sp.csr_matrix, valid: sp.csr_matrix | None = None, *,
                 config: TrainingConfig, device: str | torch.device = "cpu", progress: bool = True,
                 verbose: bool = True, callbacks: Sequence[EpochCallback] = (), stream: Any = None,
                 frozen_items: bool = False) -> None:
        self.step, self.config = step, config
        self.parallel = distributed.current()
        lead = self.parallel is None or self.parallel.rank == 0
        self.train = sp.csr_matrix(train)
        self.valid = None if valid is None else sp.csr_matrix(valid)
        self.device = torch.device(device)
        self.progress, self.verbose = progress and lead, verbose and lead
        self.hooks = [cb for cb in callbacks if hasattr(cb, "after_epoch")]
        self.callbacks = [cb for cb in callbacks if not hasattr(cb, "after_epoch")]
        self.stream = stream if stream is not None else sys.stdout
        self.frozen_items = frozen_items
        if self.train.nnz == 0:
            raise DataError("the training matrix has no positive pairs")
        pairs = trainable_pairs(self.train)  # users holding every item have no negative: left out, warned
        if pairs.nnz == 0:
            raise DataError("no trainable pairs: every user holds every item, so no negative can be drawn")
        # pairs are read straight from the CSR arrays (no per-pair copy of the data): pair k is
        # (user u with indptr[u] <= k < indptr[u + 1], item indices[k])
        self._indptr = torch.from_numpy(pairs.indptr.astype(np.int64)).to(self.device)
        self._indices = torch.from_numpy(pairs.indices).to(self.device)
        self.n_pairs = int(pairs.nnz)
        self.batch_size = config.resolved_batch_size(self.n_pairs, sum(self.train.shape))
        self.n_negatives = config.resolved_n_negatives(*self.train.shape, self.n_pairs)
        #: Optimiser steps per epoch and the learning-rate schedule over the run (:mod:`.schedule`).
        self.steps_per_epoch = -(-self.n_pairs // self.batch_size)
        #: The most epochs this run takes: ``config.epochs`` (without a valid set the adaptive budget
        #: has nothing to judge by and ends with its first horizon).
        self.epoch_cap = config.epochs if valid is not None else unvalidated_epoch_cap(config)
        self.schedule: LRSchedule | AdaptiveSchedule = make_schedule(config, self.steps_per_epoch, self.epoch_cap)
        #: (gain over the best so far, its paired standard error) of the latest validation.
        self.last_gain: tuple[float, float] = (0.0, 0.0)
        self._per_user_now: np.ndarray | None = None
        self._gen = torch.Generator().manual_seed(config.seed)
        rank = 0 if self.parallel is None else self.parallel.rank
        self._sampler = make_sampler(config.sampler, pairs, alpha=config.sampler_alpha,
                                     seed=config.seed + 1 + rank, device=self.device)
        u, i = step.user_emb, step.item_emb
        #: Distinct rows of each table's sample at the start: the near-collapse guard's reference.
        self._distinct_at_start = {"user": distinct_rows(u), "item": distinct_rows(i)}
        #: Width of the vectors a user row holds, each kept in the ball alone (the step's optional
        #: ``user_clip_block``; None: the row is one vector).
        self._user_block: int | None = getattr(step, "user_clip_block", None)
        self._opt = (make_optimizer(config.optimizer, u, config.learning_rate),
                     make_optimizer(config.optimizer, i, config.learning_rate))
        self._grads = (GradBuffer(*u.shape, dtype=u.dtype, device=self.device),
                       GradBuffer(*i.shape, dtype=i.dtype, device=self.device))
        self.history = History()
        self.best = _Best()
        #: Where a resumed epoch goes on: (pair, loss so far, loss terms so far), set by a checkpoint;
        #: ``epoch_gen_state`` is the shuffle generator's state before the current epoch's shuffle.
        self.resume_at: tuple[int, float, dict[str, float]] | None = None
        self.epoch_gen_state: torch.Tensor | None = None
        self.finished = False  # a restored checkpoint of a run that had already stopped
        self._header_done = False
        #: Set to a dict to accumulate wall seconds per phase of every epoch (shuffle, pairs,
        #: sampling, step, exchange, optimiser): what the benchmarks' phase profiles read.
        self.phase_seconds: dict[str, float] | None = None
        self.valid_users = None if self.valid is None else _valid_sample(self.valid, config)

    # ------------------------------------------------------------------ one epoch
    def run_epoch(self) -> EpochRecord:
        """Train one epoch, validate when there is a valid set, print its row; return its record."""
        epoch = len(self.history.epochs) + 1
        start = time.perf_counter()
        with thread_policy(self.step.backend):
            total, parts = self._train_pairs()
            self.step.epoch_end()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        record = EpochRecord(epoch, total, time.perf_counter() - start, parts=parts)
        if not math.isfinite(total):
            raise TrainingDivergedError(f"training diverged at epoch {epoch}: the loss became {total}; "
                                        f"lower the learning rate (now {self.config.learning_rate:g})")
        tables = {"user": self.step.user_emb} if self.frozen_items else {"user": self.step.user_emb,
                                                                            "item": self.step.item_emb}
        check_tables(tables, epoch, self.config.learning_rate, self._distinct_at_start)
        if self.valid is not None and self._validates(epoch):
            t0 = time.perf_counter()
            if self.parallel is None or self.parallel.rank == 0:
                per_user: dict[str, np.ndarray] = {}
                record.valid = evaluate(self.step.scorer(), self.valid, self.train, ks=_VALID_KS,
                                        metrics=("recall",), users=self.valid_users, device=self.device,
                                        per_user=per_user)
                self._per_user_now = per_user.get(VALID_METRIC)
                self.last_gain = paired_gain(self._per_user_now, self.best.per_user) \
                    if self._per_user_now is not None else (0.0, 0.0)
            if self.parallel is not None:  # every rank takes the same early-stopping decisions
                record.valid, self.last_gain = self.parallel.broadcast((record.valid, self.last_gain))
            record.eval_seconds = time.perf_counter() - t0
        self.history.epochs.append(record)
        self._print_row(record)
        return record

    def _validates(self, epoch: int) -> bool:
        """Validation runs every ``eval_every`` epochs and after the last one; with the adaptive budget
        also at the end of the decay and after every epoch of the tail."""
        if epoch % self.config.eval_every == 0 or epoch == self.config.epochs or epoch == self.epoch_cap:
            return True
        sched = self.schedule
        return isinstance(sched, AdaptiveSchedule) and (epoch == sched.end_epoch or sched.in_tail(epoch))

    def _train_pairs(self) -> tuple[float, dict[str, float]]:
        cfg, step, par, clock = self.config, self.step, self.parallel, self.phase_seconds
        n_pairs = self.n_pairs
        t = time.perf_counter()
        dtype = torch.int32 if n_pairs < 2**31 else torch.int64
        self.epoch_gen_state = self._gen.get_state() if self.hooks else None
        order = torch.randperm(n_pairs, generator=self._gen, dtype=dtype).to(self.device)
        start, total, parts = self.resume_at or (0, 0.0, {})
        self.resume_at, parts = None, dict(parts)
        t = _tick(clock, "shuffle", t)
        for lo in range(start, n_pairs, self.batch_size):
            idx = order[lo: lo + self.batch_size]
            if par is not None:
                if idx.numel() < par.world:  # a last batch too small to give every rank a pair
                    break
                idx = par.shard(idx)
            users, items = self.pairs(idx)
            t = _tick(clock, "pairs", t)
            draw = self._sampler.sample(users, self.n_negatives, cfg.negative_group)
            t = _tick(clock, "sampling", t)
            loss, terms = step.batch(users, items, draw, *self._grads)
            t = _tick(clock, "step", t)
            if par is not None:
                par.combine(*self._grads)
                t = _tick(clock, "exchange", t)
            self._set_learning_rate(lo // self.batch_size)
            self._opt[0].step_buffer(self._grads[0], max_norm=cfg.max_norm, block=self._user_block)
            if self.frozen_items:
                self._grads[1].pop()  # discard: the items stay as they are (fold-in)
            else:
                self._opt[1].step_buffer(self._grads[1], max_norm=cfg.max_norm)
            t = _tick(clock, "optimiser", t)
            total += loss
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v
            for hook in self.hooks:  # a batch boundary: a checkpoint may be taken or a stop honoured here
                hook.after_batch(self, lo + self.batch_size, total, parts)
        if par is not None:  # the epoch's loss over every rank's pairs
            sums = par.sum_floats({**parts, "\0total": total})
            total = sums.pop("\0total")
            parts = sums
        return total, parts

    def _set_learning_rate(self, batch: int) -> None:
        """The schedule's rate for this batch of the current epoch (a function of the position in
        the run alone, so a resumed run continues the schedule exactly)."""
        lr = self.config.learning_rate * self.schedule.factor(len(self.history.epochs) * self.steps_per_epoch + batch)
        for opt in self._opt:
            opt.lr = lr

    def pairs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) of the training pairs numbered ``idx`` (positions in the CSR arrays)."""
        idx = idx.to(torch.int64)
        users = torch.searchsorted(self._indptr, idx, right=True).sub_(1)
        return users, self._indices.index_select(0, idx).to(torch.int64)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> History:
        """Run up to ``config.epochs`` epochs (the adaptive budget: as many as
        :mod:`metricrec.training.budget` decides, up to that); return the history.

        With a valid set, the best epoch's (valid Recall@50) state is restored at the end, and with
        ``patience > 0`` training stops after ``patience`` epochs without a better one.
        """
        for hook in self.hooks:  # may restore a checkpoint: history, best, position, every state
            hook.on_fit_start(self)
        done = len(self.history.epochs)
        bar = tqdm(range(done, 0 if self.finished else self.epoch_cap), desc=self.step.name, unit="epoch",
                   disable=not self.progress, file=sys.stderr, leave=False, dynamic_ncols=True, initial=done)
        best = self.best
        for _ in bar:
            record = self.run_epoch()
            if record.valid:
                bar.set_postfix(loss=f"{record.loss:.4g}", R50=f"{record.valid[VALID_METRIC]:.4f}")
            improved = bool((record.valid or self.valid is None) and best.offer(record, self))
            if improved:
                self.history.best_epoch = record.epoch
                best.per_user = self._per_user_now
            stop = any(bool(cb(record, self)) for cb in self.callbacks)
            if record.valid and self._budget_says_stop(record.epoch, improved):
                self.history.stopped_early = stop = stop or record.epoch < self.epoch_cap
            patient = self.config.patience and not self.config.adaptive  # the budget's rule decides instead
            if self.valid is not None and patient and best.waited >= self.config.patience:
                self.history.stopped_early = stop = True
            for hook in self.hooks:
                hook.after_epoch(self, record, stop)
            if stop:
                break
        bar.close()
        if best.state is not None and self.history.best_epoch != self.history.epochs[-1].epoch:
            self.step.restore(best.state)
        if self.valid is None:
            self.history.best_epoch = self.history.epochs[-1].epoch
        if isinstance(self.schedule, AdaptiveSchedule):
            self.history.budget = {**self.schedule.state(), "max_epochs": self.epoch_cap}
        if self.parallel is not None:
            self.parallel.check_identical(self.step.user_emb, self.step.item_emb)
        return self.history

    def _budget_says_stop(self, epoch: int, improved: bool) -> bool:
        """Apply the adaptive budget's rule after a validation (:func:`metricrec.training.budget.decide`):
        extend the decay, or say that training is done."""
        if not isinstance(self.schedule, AdaptiveSchedule) or self.config.decay_knots:
            return False  # a replayed decay (decay_knots) is followed as given, up to epochs
        cfg = self.config
        what = decide(self.schedule, epoch, improved, *self.last_gain, eval_every=cfg.eval_every, z=cfg.budget_z)
        if what == EXTEND:
            self.schedule.extend(epoch, max(cfg.eval_every, -(-cfg.resolved_horizon() // 2)))
        elif what == SHORTEN:
            self.schedule.shorten(epoch, cfg.eval_every)
        return what == STOP

    # ------------------------------------------------------------------ table
    def _print_row(self, r: EpochRecord) -> None:
        if not self.verbose:
            return
        if not self._header_done:
            tqdm.write(f"{'epoch':>5}  {'loss':>12}  {'R@50':>7}  {'R@100':>7}  {'seconds':>7}", file=self.stream)
            self._header_done = True
        r50 = f"{r.valid['recall@50']:.4f}" if r.valid else "-"
        r100 = f"{r.valid['recall@100']:.4f}" if r.valid else "-"
        tqdm.write(f"{r.epoch:>5}  {r.loss:>12.4f}  {r50:>7}  {r100:>7}  {r.seconds:>7.3f}", file=self.stream)



def make_schedule(config: TrainingConfig, steps_per_epoch: int, epoch_cap: int) -> LRSchedule | AdaptiveSchedule:
    """The learning-rate schedule of a run of ``config`` with ``steps_per_epoch`` optimiser steps an
    epoch and at most ``epoch_cap`` epochs: the adaptive budget's (with its replayed decay knots) or a
    fixed :class:`~metricrec.training.schedule.LRSchedule`."""
    if config.adaptive:
        schedule = AdaptiveSchedule(steps_per_epoch, config.resolved_horizon(), config.warmup_epochs,
                                    config.lr_floor, epoch_cap)
        if config.decay_knots:
            schedule.replay(config.decay_knots)
        return schedule
    return LRSchedule.for_run(config.lr_schedule, config.epochs, steps_per_epoch, config.warmup_epochs)


def unvalidated_epoch_cap(config: TrainingConfig) -> int:
    """The epoch cap of a run without a validation set (a fold-in, ``--final``): ``config.epochs``, or
    the adaptive budget's first horizon (with nothing to judge by, it ends there; replayed knots:
    ``config.epochs``)."""
    return config.epochs if not config.adaptive or config.decay_knots else config.resolved_horizon()

def _tick(clock: dict[str, float] | None, phase: str, t0: float) -> float:
    """Add the seconds since ``t0`` to ``clock[phase]`` (when profiling); return now."""
    if clock is None:
        return t0
    now = time.perf_counter()
    clock[phase] = clock.get(phase, 0.0) + now - t0
    return now


class _Best:
    """Early-stopping bookkeeping: the best score so far, its state, epochs since."""

    def __init__(self) -> None:
        self.score, self.state, self.waited = -math.inf, None, 0
        #: the best epoch's per-user validation Recall@50 (for paired gains; rank 0 only)
        self.per_user: np.ndarray | None = None

    def offer(self, record: EpochRecord, trainer: Trainer) -> bool:
        score = record.valid.get(VALID_METRIC, -record.loss) if record.valid else -record.loss
        if score > self.score:
            self.score, self.waited = score, 0
            if trainer.valid is not None:
                self.state = trainer.step.state()
            return True
        self.waited += trainer.config.eval_every if trainer.valid is not None else 1
        return False


def _valid_sample(valid: sp.csr_matrix, config: TrainingConfig) -> np.ndarray | None:
    """The fixed, seeded sample of validation users early stopping looks at (None: all of them).

    One number per epoch is all early stopping needs; on citeulike-a the full validation ranking
    took longer than the epoch it judged. The same users are ranked every epoch, so epoch-to-epoch
    differences are not sampling noise.
    """
    counts = np.diff(valid.indptr)
    users = np.flatnonzero(counts > 0)
    size = config.valid_users
    if size is not None and config.valid_pairs is not None and users.size:
        per_user = counts[users].mean()  # the sample grows until it holds about valid_pairs pairs
        size = max(size, int(math.ceil(config.valid_pairs / per_user)))
    if size is None or users.size <= size:
        return None
    rng = np.random.default_rng(config.seed + 2)
    return np.sort(rng.choice(users, size=size, replace=False))
