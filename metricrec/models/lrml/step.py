"""LRML's training step: a relation vector per user-item pair read from a memory by attention, the
hinge over sampled negatives; gradients by autograd on the batch's gathered rows.

The model (Tay, Tuan and Hui, "Latent Relational Metric Learning via Memory-based Attention for
Collaborative Ranking", WWW 2018, arXiv:1707.05176), with user vectors u, item vectors v and the
latent relational attentive memory of N slots, keys ``K`` (N, d) and values ``M`` (N, d):

- the joint embedding ``s = u * v`` (element-wise), the attention ``a = softmax(K s)`` over the N
  slots and the relation ``r = sum_m a_m M_m`` (= ``a @ M``): a translation specific to the pair;
- the distance ``s(u,v) = ||u + r - v||^2`` (``metric="l2"``) or ``||u + r - v||_1`` (``"l1"``, the
  paper's L1 variant; the authors' code offers both);
- the pairwise hinge ``[lambda + s(u,i) - s(u,k)]_+`` over positives i and sampled negatives k;
- subject to ``||u||, ||v|| <= 1`` (the trainer's ball); keys and values are unconstrained.

What one batch B of positive pairs, each with U sampled negatives, computes::

    L_B = sum_{(u,i) in B} (1/U) sum_k [lambda + s(u,i) - s(u,k)]_+

the paper's sum over negatives estimated by the mean over the U sampled ones. With
``negative_relation="own"`` (the default) ``s(u,k)`` uses the negative pair's own relation (the
score retrieval ranks by); with ``"positive"`` it reuses the positive pair's ``r_ui``, as the
authors' released code does.

The gradients come from autograd on the rows the batch gathered (never on the whole tables), in
chunks of pairs (:data:`CHUNK_ELEMENTS`); on the CPU the numba backend computes the same loss and
gradients with a hand-written backward (:mod:`metricrec.models.lrml.step_numba`). The table
gradients go to the trainer's buffers for the rows with an active hinge only, and the keys and
values are the step's own parameters, updated after each batch by a dense AdaGrad at
``memory_lr`` (they are N x d: small). The tests compare the step with autograd on
:func:`lrml_loss_reference`, the batch loss written with loops.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ...metrics import Scorer
from ...training import distributed
from ...training.backends import NUMBA
from ...training.optim import GradBuffer, RowAdagrad
from ...training.sampling import NegativeDraw
from .config import LRMLConfig

__all__ = ["LRMLStep", "lrml_batch_loss", "lrml_loss_reference", "lrml_scores", "pair_scorer", "SCORE_BLOCK_BYTES",
           "CHUNK_ELEMENTS"]

#: :func:`lrml_scores` works through users in blocks whose largest intermediate ((n, N, n_items)
#: attention, or (n, n_items, d) for L1) stays under this size.
SCORE_BLOCK_BYTES = 64 * 2**20
#: The torch step takes a batch in chunks of pairs whose (pairs, U, d) intermediates hold at most this
#: many elements (8 MiB of float32): a whole steam-200k batch (8,456 pairs x 20 negatives x 128) made
#: each of them 86 MiB, above glibc's largest mmap threshold, so every one was a fresh mapping whose
#: pages the operating system faulted in and zeroed (a third of the run's CPU time was system time).
CHUNK_ELEMENTS = 2**21


def _relation(x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``softmax(K (x * y)) @ M`` over the last axis of any broadcastable x and y."""
    return torch.softmax((x * y) @ keys.T, dim=-1) @ memory


def _distance(diff: torch.Tensor, metric: str) -> torch.Tensor:
    return (diff * diff).sum(-1) if metric == "l2" else diff.abs().sum(-1)


def lrml_batch_loss(u: torch.Tensor, p: torch.Tensor, vn: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                    *, margin: float, metric: str = "l2",
                    negative_relation: str = "own") -> tuple[torch.Tensor, torch.Tensor]:
    """``L_B`` of the module docstring on gathered rows (differentiable).

    Parameters
    ----------
    u, p : torch.Tensor, shape (B, d)
        The batch's user vectors and positive item vectors.
    vn : torch.Tensor, shape (B, U, d)
        The negatives' item vectors.
    keys, memory : torch.Tensor, shape (N, d)
    margin : float
    metric : {"l2", "l1"}
    negative_relation : {"own", "positive"}

    Returns
    -------
    loss : torch.Tensor, scalar
    violations : torch.Tensor, shape (B, U)
        ``lambda + s(u,i) - s(u,k)`` (detached): where it is positive the hinge is active.
    """
    r_pos = _relation(u, p, keys, memory)
    d_pos = _distance(u + r_pos - p, metric)
    uu = u.unsqueeze(1)
    r_neg = _relation(uu, vn, keys, memory) if negative_relation == "own" else r_pos.unsqueeze(1)
    d_neg = _distance(uu + r_neg - vn, metric)
    viol = d_pos.unsqueeze(1) - d_neg + margin
    return torch.relu(viol).sum() / vn.shape[1], viol.detach()


def lrml_loss_reference(user_emb: torch.Tensor, item_emb: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                        users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *, margin: float,
                        metric: str = "l2", negative_relation: str = "own") -> torch.Tensor:
    """``L_B`` written directly with Python loops (one pair at a time: attention, relation,
    distance, hinge), for autograd in the tests: slow, small problems only."""

    def relation(w: int, j: int) -> torch.Tensor:
        s = user_emb[w] * item_emb[j]
        logits = torch.stack([(keys[m] * s).sum() for m in range(keys.shape[0])])
        a = torch.exp(logits - logits.max())
        a = a / a.sum()
        return sum((a[m] * memory[m] for m in range(memory.shape[0])), torch.zeros_like(memory[0]))

    def dist(w: int, j: int, r: torch.Tensor) -> torch.Tensor:
        diff = user_emb[w] + r - item_emb[j]
        return (diff ** 2).sum() if metric == "l2" else diff.abs().sum()

    total = torch.zeros((), dtype=user_emb.dtype)
    for row in range(users.numel()):
        w, i = int(users[row]), int(positives[row])
        r_pos = relation(w, i)
        d_pos = dist(w, i, r_pos)
        for k in negatives[row].tolist():
            r_neg = relation(w, k) if negative_relation == "own" else r_pos
            total = total + torch.relu(margin + d_pos - dist(w, k, r_neg)) / negatives.shape[1]
    return total


def lrml_scores(user: torch.Tensor, item: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                metric: str = "l2", *, block_bytes: int = SCORE_BLOCK_BYTES) -> torch.Tensor:
    """``-s(u, v)`` of every user row against every item, shape (n, n_items), each pair with its own
    relation.

    For ``"l2"`` no (n, n_items, d) tensor is built: with ``r = a @ M``,
    ``||u + r - v||^2 = ||u - v||^2 + a^T (M M^T) a + 2 a.(M u) - 2 a.(M v)``; the cost is the
    attention logits, ``K (u * v) = (u * K) v`` for every slot, O(n n_items N d). ``"l1"`` has no
    such expansion: the relation vectors of a block of users are built, O(n n_items N d) as well.
    Users are taken in blocks whose largest intermediate stays under ``block_bytes``.
    """
    n, n_items = user.shape[0], item.shape[0]
    n_slots, d = keys.shape
    width = n_slots + (d if metric == "l1" else n_slots)
    step = max(1, int(block_bytes) // max(1, 4 * n_items * width))
    out = torch.empty(n, n_items, dtype=user.dtype, device=user.device)
    item_t = item.T.contiguous()
    gram = memory @ memory.T  # (N, N)
    proj_v = item @ memory.T  # (n_items, N): M v per item
    v_sq = (item * item).sum(1)
    for lo in range(0, n, step):
        u = user[lo: lo + step]
        att = torch.softmax(torch.matmul(u.unsqueeze(1) * keys, item_t), dim=1)  # (b, N, n_items)
        if metric == "l2":
            dist = torch.addmm(v_sq.unsqueeze(0), u, item_t, beta=1.0, alpha=-2.0).add_((u * u).sum(1, keepdim=True))
            dist += (att * torch.matmul(gram, att)).sum(1)  # ||r||^2
            dist += 2.0 * torch.einsum("bmi,bm->bi", att, u @ memory.T)  # 2 r.u
            dist -= 2.0 * torch.einsum("bmi,im->bi", att, proj_v)  # 2 r.v
        else:
            rel = torch.einsum("bmi,md->bid", att, memory)
            dist = (rel.add_(u.unsqueeze(1)).sub_(item.unsqueeze(0))).abs_().sum(2)
        out[lo: lo + step] = dist.neg_()
    return out


def pair_scorer(user: torch.Tensor, item: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                metric: str) -> Scorer:
    """``scorer(users) -> (len(users), n_items)`` tensor of :func:`lrml_scores` (the contract of
    :func:`metricrec.metrics.embedding_scorer`)."""

    def scorer(ids: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=user.device)
        return lrml_scores(user.index_select(0, idx), item, keys, memory, metric)

    return scorer


class LRMLStep:
    """A :class:`~metricrec.training.trainer.TrainingStep` for LRML: the torch backend (any device;
    autograd on the gathered rows, in chunks of pairs), or the compiled CPU kernel (backend
    ``"numba"``, :mod:`metricrec.models.lrml.step_numba`, every metric, relation and fold-in).

    The tables go to the trainer's row-sparse optimisers through the buffers; the keys and values
    are the step's own parameters: after each batch it applies their gradients itself (AdaGrad at
    ``config.memory_lr``, every slot), as SML's step trains its margins. The table gradients of the
    batch were computed with the memory before that update. Both backends fill the same buffers and
    take the same memory step.

    Parameters
    ----------
    config : LRMLConfig
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        Trained in place by the trainer.
    keys, memory : torch.Tensor, shape (N, d)
        Trained in place here (unless ``train_memory`` is False).
    backend : str
    train_memory : bool
        False for a fold-in, whose item side (items, keys, values) stays as trained.
    """

    name = "LRML"

    def __init__(self, config: LRMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, keys: torch.Tensor,
                 memory: torch.Tensor, backend: str, *, train_memory: bool = True) -> None:
        shape = (config.memory_slots, item_emb.shape[1])
        for name, t in (("keys", keys), ("memory", memory)):
            if tuple(t.shape) != shape or not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous with shape {shape}, got {tuple(t.shape)}")
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.keys, self.memory = keys, memory
        self.train_memory = train_memory
        n_slots, d = shape
        # keys and values side by side: one buffer (summed across ranks in data-parallel training)
        self._memory_grad = GradBuffer(n_slots, 2 * d, dtype=keys.dtype, device=keys.device)
        self._memory_opts = (RowAdagrad(keys, config.memory_lr), RowAdagrad(memory, config.memory_lr))
        self._numba = None
        if backend == NUMBA:
            for name, t in (("user_emb", user_emb), ("item_emb", item_emb), ("keys", keys), ("memory", memory)):
                if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
                    raise ValueError(f"the numba backend needs contiguous float32 CPU tensors; {name} is "
                                     f"{t.dtype} on {t.device}")
            from . import step_numba

            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._numba = functools.partial(step_numba.lrml_gradients_numba, workspace=step_numba.Workspace())

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Table gradients into the buffers, a memory update; (total, {hinge_loss})."""
        negatives = draw.negatives
        if self._numba is not None:
            value, g_keys, g_memory = self._numba(self.user_emb, self.item_emb, self.keys, self.memory, users, items,
                                                  negatives, user_grad, item_grad, margin=self.config.margin,
                                                  metric=self.config.metric,
                                                  negative_relation=self.config.negative_relation,
                                                  train_memory=self.train_memory)
        else:
            # in chunks of pairs: the loss is a sum over pairs, so the chunks' gradients add up to the batch's
            n_pairs, n_neg = negatives.shape
            width = max(1, CHUNK_ELEMENTS // max(1, n_neg * self.item_emb.shape[1]))
            value, g_keys, g_memory = 0.0, None, None
            for lo in range(0, max(n_pairs, 1), width):  # one (empty) chunk for an empty batch
                part = self._chunk(users[lo: lo + width], items[lo: lo + width], negatives[lo: lo + width],
                                   user_grad, item_grad)
                value += part[0]
                if self.train_memory:
                    g_keys = part[1] if g_keys is None else g_keys.add_(part[1])
                    g_memory = part[2] if g_memory is None else g_memory.add_(part[2])
        if self.train_memory:
            self._step_memory(g_keys, g_memory)
        return value, {"hinge_loss": value}

    def _chunk(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, user_grad: GradBuffer,
               item_grad: GradBuffer) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
        """Autograd on one chunk of pairs: its table gradients into the buffers; (its loss, its key and
        value gradients, None without ``train_memory``)."""
        cfg = self.config
        flat = negatives.reshape(-1)
        with torch.enable_grad():
            u = self.user_emb.index_select(0, users).requires_grad_()
            p = self.item_emb.index_select(0, items).requires_grad_()
            vn = self.item_emb.index_select(0, flat).view(*negatives.shape, -1).requires_grad_()
            keys = self.keys.detach().requires_grad_(self.train_memory)
            memory = self.memory.detach().requires_grad_(self.train_memory)
            loss, viol = lrml_batch_loss(u, p, vn, keys, memory, margin=cfg.margin, metric=cfg.metric,
                                         negative_relation=cfg.negative_relation)
            leaves = [u, p, vn] + ([keys, memory] if self.train_memory else [])
            grads = torch.autograd.grad(loss, leaves)
        active = viol > 0
        rows = active.any(1).nonzero().squeeze(1)  # rows with an active hinge: the others have no gradient
        user_grad.add(users.index_select(0, rows), grads[0].index_select(0, rows))
        item_grad.add(items.index_select(0, rows), grads[1].index_select(0, rows))
        entries = active.reshape(-1).nonzero().squeeze(1)
        item_grad.add(flat.index_select(0, entries), grads[2].reshape(-1, grads[2].shape[-1]).index_select(0, entries))
        if not self.train_memory:
            return float(loss.detach()), None, None
        return float(loss.detach()), grads[3], grads[4]

    def _step_memory(self, g_keys: torch.Tensor, g_memory: torch.Tensor) -> None:
        buf = self._memory_grad
        buf.add(torch.arange(buf.grad.shape[0], device=buf.grad.device), torch.cat([g_keys, g_memory], 1))
        parallel = distributed.current()
        if parallel is not None:  # every rank takes the global batch's step
            parallel.combine(buf)
        rows, g = buf.pop()
        d = self.keys.shape[1]
        self._memory_opts[0].step(rows, g[:, :d].contiguous())
        self._memory_opts[1].step(rows, g[:, d:].contiguous())

    def epoch_end(self) -> None:
        """Nothing to do between epochs."""

    def state(self) -> Any:
        """Copies of both tables, the keys and the values (the best epoch restores all four)."""
        return tuple(t.detach().clone() for t in (self.user_emb, self.item_emb, self.keys, self.memory))

    def restore(self, state: Any) -> None:
        """Put a :meth:`state` snapshot back (in place)."""
        for target, saved in zip((self.user_emb, self.item_emb, self.keys, self.memory), state):
            target.copy_(saved)

    def resume_state(self) -> Any:
        """The memory's AdaGrad accumulators, for a training checkpoint (:mod:`metricrec.training.checkpoint`)."""
        return {"keys_acc": self._memory_opts[0].acc, "memory_acc": self._memory_opts[1].acc}

    def load_resume_state(self, state: Any) -> None:
        """Put a :meth:`resume_state` back."""
        if state is not None:
            self._memory_opts[0].acc.copy_(state["keys_acc"])
            self._memory_opts[1].acc.copy_(state["memory_acc"])

    def scorer(self) -> Scorer:
        """``-s(u, v)`` with each pair's own relation (what retrieval ranks)."""
        return pair_scorer(self.user_emb, self.item_emb, self.keys, self.memory, self.config.metric)
