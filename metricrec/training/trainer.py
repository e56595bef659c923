"""The CML training loop: epochs of shuffled positive pairs, validation, early stopping.

The trainer owns the optimisation (sampler, kernel, optimisers, the per-epoch table); it never
parses data and the model never sees the trainer: it receives a CSR train matrix and embedding
tables and returns the trained tables plus a :class:`History`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..models.cml.config import CMLConfig
from ..models.cml import step_numba as kernel_numba
from ..models.cml.step_torch import cml_step
from .optim import GradBuffer
from ..metrics import embedding_scorer, evaluate
from .optim import make_optimizer
from .sampling import make_sampler

__all__ = ["EpochRecord", "History", "Trainer", "EpochCallback", "TrainingHook"]

VALID_METRIC = "recall@50"


@dataclass
class EpochRecord:
    """What one epoch did. ``seconds`` is training only; evaluation is ``eval_seconds``."""

    epoch: int
    loss: float
    metric_loss: float
    cov_loss: float
    seconds: float
    eval_seconds: float = 0.0
    valid: dict[str, float] = field(default_factory=dict)
    feature_loss: float = 0.0  # the CML+F term (metricrec.feature_reg); 0 without features

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.feature_loss:  # runs without features keep their old record layout
            del d["feature_loss"]
        return d


@dataclass
class History:
    """All epochs of one ``fit`` and the epoch whose weights were kept."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def train_seconds(self) -> float:
        """Training seconds summed over all epochs run (evaluation excluded)."""
        return float(sum(e.seconds for e in self.epochs))

    @property
    def seconds_to_best(self) -> float:
        """Training seconds up to and including the best epoch."""
        if self.best_epoch is None:
            return self.train_seconds
        return float(sum(e.seconds for e in self.epochs if e.epoch <= self.best_epoch))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [e.to_dict() for e in self.epochs],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "seconds_to_best": self.seconds_to_best,
        }


#: Called after every epoch with the record and the trainer; return True to stop training.
EpochCallback = Callable[[EpochRecord, "Trainer"], "bool | None"]


class TrainingHook(Protocol):
    """An extra loss term trained with the embeddings (e.g. :class:`~metricrec.feature_reg.FeatureRegularizer`).

    ``on_batch`` adds its gradients into the GradBuffers before the optimiser step and returns its
    loss value; ``on_epoch_end`` may adjust the tables; ``state``/``restore`` snapshot whatever it
    trains itself, so the best epoch is restored together with the embeddings.
    """

    def on_batch(self, user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, items: torch.Tensor,
                 draw: Any, user_grad: GradBuffer, item_grad: GradBuffer) -> float: ...

    def on_epoch_end(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> None: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


class Trainer:
    """Trains user and item embedding tables on a CSR matrix of positives.

    Parameters
    ----------
    config : CMLConfig
    train : scipy.sparse.csr_matrix, shape (n_users, n_items)
        Positives (non-zeros); weights are ignored.
    valid : scipy.sparse.csr_matrix, optional
        Held-out positives for per-epoch Recall@50/@100 and early stopping (train items are
        excluded from the ranking).
    device : str
        ``"cpu"`` or ``"cuda"``.
    progress : bool
        Show a tqdm bar over epochs.
    verbose : bool
        Print the per-epoch table (epoch, loss, valid Recall@50, Recall@100, seconds).
    callbacks : sequence of callables
        ``callback(record, trainer)`` after each epoch; returning True stops training.
    hooks : sequence of TrainingHook
        Extra loss terms trained jointly (none: the plain CML step, no extra work).
    kernel : {"auto", "torch", "numba"}
        Backend of the CML step. ``"numba"``: the compiled CPU kernel of
        :mod:`metricrec.kernel_numba` (needs numba: ``pip install metricrec[fast]``); ``"torch"``:
        :func:`metricrec.kernel.cml_step`, on any device; ``"auto"``: numba on CPU when it is
        installed, torch otherwise. Same maths, same negatives.

    Attributes
    ----------
    user_emb, item_emb : torch.Tensor or None
        The tables being trained (set by :meth:`fit`), for callbacks to read; do not modify them.
    """

    def __init__(
        self,
        config: CMLConfig,
        train: sp.csr_matrix,
        valid: sp.csr_matrix | None = None,
        *,
        device: str | torch.device = "cpu",
        progress: bool = True,
        verbose: bool = True,
        callbacks: Sequence[EpochCallback] = (),
        stream: Any = None,
        hooks: Sequence[TrainingHook] = (),
        kernel: str = "auto",
    ) -> None:
        self.config = config
        self.train = sp.csr_matrix(train)
        self.valid = None if valid is None else sp.csr_matrix(valid)
        self.device = torch.device(device)
        self.progress = progress
        self.verbose = verbose
        self.callbacks = list(callbacks)
        self.hooks = list(hooks)
        self.stream = stream if stream is not None else sys.stdout
        rows = np.repeat(np.arange(self.train.shape[0], dtype=np.int64), np.diff(self.train.indptr))
        self._users = torch.from_numpy(rows).to(self.device)
        self._items = torch.from_numpy(self.train.indices.astype(np.int64)).to(self.device)
        self.history = History()
        self.user_emb: torch.Tensor | None = None
        self.item_emb: torch.Tensor | None = None
        self.batch_size: int | None = None  # resolved by fit (config.batch_size or the default rule)
        self.kernel = _choose_kernel(kernel, self.device)
        self._step = cml_step
        if self.kernel == "numba":
            kernel_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._step = kernel_numba.cml_step_numba

    # ------------------------------------------------------------------
    def fit(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> History:
        """Train ``user_emb`` (n_users, d) and ``item_emb`` (n_items, d) in place; return the history.

        With a valid set, the best epoch's (valid Recall@50) weights are restored at the end, and
        with ``patience > 0`` training stops after ``patience`` epochs without a better one.
        """
        cfg = self.config
        self.user_emb, self.item_emb = user_emb, item_emb
        n_pairs = self._users.numel()
        if n_pairs == 0:
            raise ValueError("the training matrix has no positive pairs")
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = make_sampler(cfg.sampler, self.train, alpha=cfg.sampler_alpha, seed=cfg.seed + 1, device=self.device)
        opt_u = make_optimizer(cfg.optimizer, user_emb, cfg.learning_rate)
        opt_i = make_optimizer(cfg.optimizer, item_emb, cfg.learning_rate)
        grad_u = GradBuffer(*user_emb.shape, dtype=user_emb.dtype, device=self.device)
        grad_i = GradBuffer(*item_emb.shape, dtype=item_emb.dtype, device=self.device)

        best_score, best_state, waited = -math.inf, None, 0
        bar = tqdm(range(1, cfg.epochs + 1), desc="CML", unit="epoch", disable=not self.progress,
                   file=sys.stderr, leave=False, dynamic_ncols=True)
        self._print_header()
        threads = torch.get_num_threads()
        batch_size = self.batch_size = cfg.resolved_batch_size(n_pairs)
        for epoch in bar:
            start = time.perf_counter()
            metric_total = cov_total = feature_total = 0.0
            if self.kernel == "numba":
                # The compiled kernel is the parallel part; torch's remaining ops run on one thread.
                # Two thread pools that both spin-wait for their workers fight over the cores, and
                # on a machine with any other load that turns a 0.4 s epoch into tens of seconds.
                kernel_numba.set_threads(threads)
                torch.set_num_threads(1)
            try:
                order = torch.randperm(n_pairs, generator=gen).to(self.device)
                for lo in range(0, n_pairs, batch_size):
                    idx = order[lo : lo + batch_size]
                    users, items = self._users[idx], self._items[idx]
                    draw = sampler.sample(users, cfg.n_negatives, cfg.negative_group)
                    stats = self._step(
                        user_emb, item_emb, users, items, draw, grad_u, grad_i,
                        margin=cfg.margin, use_rank_weight=cfg.use_rank_weight,
                        cov_weight=cfg.cov_weight, cov_formula=cfg.cov_formula,
                    )
                    for hook in self.hooks:
                        feature_total += hook.on_batch(user_emb, item_emb, users, items, draw, grad_u, grad_i)
                    opt_u.step_buffer(grad_u, max_norm=cfg.max_norm)
                    opt_i.step_buffer(grad_i, max_norm=cfg.max_norm)
                    metric_total += stats.metric_loss
                    cov_total += stats.cov_loss
                for hook in self.hooks:
                    hook.on_epoch_end(user_emb, item_emb)
            finally:
                torch.set_num_threads(threads)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            loss = metric_total + cfg.cov_weight * cov_total + feature_total
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: the loss became {loss}; lower the learning rate")
            record = EpochRecord(epoch, loss, metric_total, cov_total, seconds, feature_loss=feature_total)
            if self.valid is not None:
                t0 = time.perf_counter()
                record.valid = evaluate(
                    embedding_scorer(user_emb, item_emb), self.valid, self.train,
                    ks=(50, 100), metrics=("recall",), device=self.device,
                )
                record.eval_seconds = time.perf_counter() - t0
            self.history.epochs.append(record)
            self._print_row(record)
            bar.set_postfix(loss=f"{loss:.4g}", **({"R@50": f"{record.valid[VALID_METRIC]:.4f}"} if record.valid else {}))

            score = record.valid.get(VALID_METRIC, -record.loss) if record.valid else -record.loss
            if score > best_score:
                best_score, waited = score, 0
                self.history.best_epoch = epoch
                if self.valid is not None:
                    best_state = (user_emb.detach().clone(), item_emb.detach().clone(), [h.state() for h in self.hooks])
            else:
                waited += 1
            stop = any(bool(cb(record, self)) for cb in self.callbacks)
            if self.valid is not None and cfg.patience and waited >= cfg.patience:
                self.history.stopped_early = True
                stop = True
            if stop:
                break
        bar.close()
        if best_state is not None and self.history.best_epoch != self.history.epochs[-1].epoch:
            user_emb.copy_(best_state[0])
            item_emb.copy_(best_state[1])
            for hook, state in zip(self.hooks, best_state[2]):
                hook.restore(state)
        if self.valid is None:
            self.history.best_epoch = self.history.epochs[-1].epoch
        return self.history

    # ------------------------------------------------------------------ table
    def _print_header(self) -> None:
        if self.verbose:
            tqdm.write(f"{'epoch':>5}  {'loss':>12}  {'R@50':>7}  {'R@100':>7}  {'seconds':>7}", file=self.stream)

    def _print_row(self, r: EpochRecord) -> None:
        if not self.verbose:
            return
        r50 = f"{r.valid['recall@50']:.4f}" if r.valid else "-"
        r100 = f"{r.valid['recall@100']:.4f}" if r.valid else "-"
        tqdm.write(f"{r.epoch:>5}  {r.loss:>12.4f}  {r50:>7}  {r100:>7}  {r.seconds:>7.3f}", file=self.stream)


def _choose_kernel(kernel: str, device: torch.device) -> str:
    """Resolve ``"auto"`` and check that the requested backend can run here."""
    if kernel not in ("auto", "torch", "numba"):
        raise ValueError(f"kernel must be 'auto', 'torch' or 'numba', got {kernel!r}")
    if kernel == "torch":
        return "torch"
    if kernel == "numba":
        if device.type != "cpu":
            raise ValueError(f"the numba kernel runs on the CPU only (device is {device})")
        if not kernel_numba.available():
            raise ImportError("kernel='numba' needs numba: pip install metricrec[fast]")
        return "numba"
    return "numba" if device.type == "cpu" and kernel_numba.available() else "torch"
