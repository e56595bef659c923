"""Full-ranking evaluation (docs/protocol.md): every item is ranked for every evaluated user.

Ranking rule
------------
A user's candidates are all items except the excluded ones (train items for valid; train and valid
items for test). Candidates are ranked by score, higher first; equal scores are ordered by item
index, lower first, so every metric is a deterministic function of the scores (ties only matter
for degenerate scorers -- float scores of a trained model practically never tie).

Metrics (per user ``u`` with target set ``T_u``, averaged over users with ``|T_u| >= 1``)
---------------------------------------------------------------------------------------
``hits@K``     number of targets among the top ``K`` candidates
``recall@K``   hits@K / |T_u|                          (denominator not capped at K)
``precision@K``hits@K / K                              (also when fewer than K candidates)
``ndcg@K``     sum_{r<K, hit at r} 1/log2(r+2) / sum_{r<min(K,|T_u|)} 1/log2(r+2),  r from 0
``hitrate@K``  1 if hits@K > 0 else 0
``map@K``      sum_{r<K, hit at r} precision@(r+1) / min(K, |T_u|)
``mrr``        1 / (1-based rank of the first target in the full ranking), no cut-off
``auc``        fraction of (target, non-target candidate) pairs with the target scored higher,
               ties counting 1/2; users whose candidates are all targets have no such pair and
               are left out of the AUC mean only.

A target that is also excluded could never be ranked: that signals a leaky split, so
:func:`evaluate` raises ``ValueError`` when ``target`` and ``exclude`` share a pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .rank_stats import auc_sums as _auc_sums
from .rank_stats import first_target_rank as _first_target_rank
from .rank_stats import topk_hits as _topk_hits

if TYPE_CHECKING:  # pragma: no cover
    from .data.splits import Split

__all__ = ["evaluate", "evaluate_part", "embedding_scorer", "Scorer", "TOPK_METRICS", "GLOBAL_METRICS"]

Scorer = Callable[[np.ndarray], torch.Tensor]

TOPK_METRICS = ("recall", "precision", "ndcg", "hitrate", "map")
GLOBAL_METRICS = ("mrr", "auc")

# A chunk's dense float32 score block is kept near this size. On CPU small blocks stay in cache:
# all users of a 6,040 x 3,706 problem took 0.52 s in 512-user (7.6 MB) chunks against 0.77 s in
# 4,317-user (64 MB) chunks (2 threads); accelerators prefer large blocks.
_BLOCK_BYTES_CPU = 8 * 2**20
_BLOCK_BYTES_DEVICE = 64 * 2**20


def embedding_scorer(user_emb, item_emb, kind: str = "neg_sq_distance") -> Scorer:
    """Scorer from user and item embeddings.

    Parameters
    ----------
    user_emb : torch.Tensor or numpy.ndarray, shape (n_users, d)
    item_emb : torch.Tensor or numpy.ndarray, shape (n_items, d)
    kind : {"neg_sq_distance", "dot"}
        ``"neg_sq_distance"``: score = -||u - v||^2 (CML: nearer is better);
        ``"dot"``: score = u . v (matrix factorisation).

    Returns
    -------
    callable
        ``scorer(users)`` with ``users`` an int array of shape (b,) returns a float tensor of shape
        (b, n_items) on the embeddings' device.
    """
    u = torch.as_tensor(user_emb)
    v = torch.as_tensor(item_emb)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ValueError(
            f"user_emb and item_emb must be 2-D with the same width, got {tuple(u.shape)} and {tuple(v.shape)}"
        )
    if kind not in ("neg_sq_distance", "dot"):
        raise ValueError(f"kind must be 'neg_sq_distance' or 'dot', got {kind!r}")
    if not u.is_floating_point():
        u = u.float()
    v = v.to(device=u.device, dtype=u.dtype)
    vt = v.T.contiguous()
    v_sq = (v * v).sum(1)

    def scorer(users: np.ndarray) -> torch.Tensor:
        ub = u[torch.as_tensor(np.asarray(users, dtype=np.int64), device=u.device)]
        if kind == "dot":
            return ub @ vt
        # -||u-v||^2 = 2 u.v - ||v||^2 - ||u||^2, one GEMM instead of a (b, n_items, d) difference
        out = torch.addmm(v_sq.unsqueeze(0), ub, vt, beta=-1.0, alpha=2.0)
        return out.sub_((ub * ub).sum(1, keepdim=True))

    return scorer


def _check_csr(m, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise ValueError(f"{name} must be a scipy sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _parse_metrics(metrics: Iterable[str], ks: Sequence[int]) -> tuple[list[str], list[int]]:
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in TOPK_METRICS + GLOBAL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(TOPK_METRICS + GLOBAL_METRICS)}")
    kl = []
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"ks must be positive integers, got {list(ks)!r}")
        kl.append(int(k))
    if not kl and any(m in TOPK_METRICS for m in metrics):
        raise ValueError(f"metrics {[m for m in metrics if m in TOPK_METRICS]} need at least one K in ks")
    return metrics, sorted(set(kl))


def _csr_block(m: sp.csr_matrix, users: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(local row, column, position within the row) of the stored entries of rows ``users`` of ``m``."""
    start, stop = m.indptr[users], m.indptr[users + 1]
    lengths = (stop - start).astype(np.int64)
    local = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    offs = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = m.indices[np.repeat(start.astype(np.int64), lengths) + offs].astype(np.int64)
    return (
        torch.from_numpy(local).to(device),
        torch.from_numpy(cols).to(device),
        torch.from_numpy(offs).to(device),
    )


def evaluate(
    scorer: Scorer,
    target: sp.csr_matrix,
    exclude: sp.csr_matrix | None = None,
    *,
    ks: Sequence[int] = (10, 20, 50, 100),
    metrics: Sequence[str] = ("recall", "precision", "ndcg", "hitrate", "map", "mrr", "auc"),
    users: np.ndarray | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics averaged over users with at least one target item.

    Parameters
    ----------
    scorer : callable
        ``scorer(users)`` with ``users`` an int64 array of shape (b,) returns a tensor of shape
        (b, n_items) of finite scores, higher is better.
    target : scipy.sparse matrix, shape (n_users, n_items)
        Held-out items (valid or test); non-zero = target.
    exclude : scipy.sparse matrix, shape (n_users, n_items), optional
        Items removed from each user's ranking (train; train + valid when testing). Must share no
        (user, item) pair with ``target``.
    ks : sequence of int
        Cut-offs for recall, precision, ndcg, hitrate and map.
    metrics : sequence of str
        Subset of ``recall, precision, ndcg, hitrate, map, mrr, auc``.
    users : int array, optional
        Restrict evaluation to these user indices (still only those with a target).
    batch_size : int, optional
        Users per chunk; default keeps a chunk's float32 score block near 8 MB on CPU
        (cache-friendly, measured fastest) and 64 MB on other devices.
    device : str or torch.device
        Where ranking runs; scores are moved there.
    per_user : dict, optional
        When given, filled with each evaluated user's own values: ``per_user["users"]`` (int64,
        ascending) and, for every top-K metric and cut-off, ``per_user["recall@50"]`` etc. (float64,
        in the same order): what a paired comparison of two models on the same users needs
        (:mod:`metricrec.training.budget`).

    Returns
    -------
    dict
        ``"recall@10"``, ..., ``"mrr"``, ``"auc"`` (floats) and ``"n_users"`` (users averaged over).
    """
    metrics, kl = _parse_metrics(metrics, ks)
    target, exclude = _check_parts(target, exclude)
    plan = _Plan(metrics, kl, target, exclude, torch.device(device))
    plan.per_user = {} if per_user is not None else None
    eval_users = _eval_users(plan.n_target, users, target.shape[0])
    batch_size = _chunk_size(batch_size, plan.device, target.shape[1])
    # Chunks of users with similar target counts: AUC pads each chunk's target list to its
    # longest, and its search cost grows with that length. Sums do not depend on the order.
    eval_users = eval_users[np.argsort(plan.n_target[eval_users], kind="stable")]
    for lo in range(0, len(eval_users), batch_size):
        plan.add_chunk(scorer, eval_users[lo: lo + batch_size])
    if per_user is not None:
        per_user.update(plan.per_user_values(eval_users))
    return plan.result(len(eval_users))


class _Plan:
    """The sums of one :func:`evaluate` call and the constants its chunks share."""

    def __init__(self, metrics: list[str], kl: list[int], target: sp.csr_matrix, exclude: sp.csr_matrix | None,
                 device: torch.device) -> None:
        self.metrics, self.kl, self.target, self.exclude, self.device = metrics, kl, target, exclude, device
        n_users, self.n_items = target.shape
        self.n_target = np.diff(target.indptr)
        self.n_excl = np.zeros(n_users, dtype=np.int64) if exclude is None else np.diff(exclude.indptr)
        self.want_topk = [m for m in metrics if m in TOPK_METRICS]
        self.kmax = kl[-1] if kl else 0
        self.sums = {f"{m}@{k}": 0.0 for m in self.want_topk for k in kl}
        if "mrr" in metrics:
            self.sums["mrr"] = 0.0
        self.auc_sum, self.auc_users = 0.0, 0
        self.per_user: dict[str, list[np.ndarray]] | None = None  # metric -> per-chunk values (evaluate's per_user)
        # discount 1/log2(r+2) for r = 0..kmax-1 and its prefix sums (ideal DCG)
        disc = 1.0 / np.log2(np.arange(self.kmax, dtype=np.float64) + 2.0)
        self.disc = torch.from_numpy(disc).to(device)
        self.idcg_cum = torch.from_numpy(np.concatenate([[0.0], np.cumsum(disc)])).to(device)
        self.k_idx = torch.tensor([k - 1 for k in kl], dtype=torch.long, device=device)
        self.k_val = torch.tensor(kl, dtype=torch.float64, device=device)

    def add_chunk(self, scorer: Scorer, ub: np.ndarray) -> None:
        """Score the users ``ub`` and add their metrics to the sums."""
        device, b = self.device, len(ub)
        scores = _checked_scores(scorer, ub, self.n_items, device)
        tr, tc, to = _csr_block(self.target, ub, device)
        tgt = torch.zeros((b, self.n_items), dtype=torch.bool, device=device)
        tgt[tr, tc] = True
        if self.exclude is not None:
            er, ec, _ = _csr_block(self.exclude, ub, device)
            # out of place: the scorer may hand back a tensor it keeps using
            scores = scores.index_put((er, ec), torch.tensor(float("-inf"), dtype=scores.dtype, device=device))
        nt = torch.from_numpy(self.n_target[ub].astype(np.int64)).to(device)
        first_rank = torch.zeros(b, dtype=torch.float64, device=device)  # 0 = not found yet
        if min(self.kmax, self.n_items) > 0 and (self.want_topk or "mrr" in self.metrics):
            first_rank = self._add_topk(scores, tgt, nt, first_rank)
        if "mrr" in self.metrics:
            missing = torch.nonzero(first_rank == 0).flatten()
            if len(missing):
                first_rank[missing] = _first_target_rank(scores[missing], tgt[missing])
            self.sums["mrr"] += float((1.0 / first_rank).sum())
        if "auc" in self.metrics:
            n_neg = torch.from_numpy((self.n_items - self.n_excl[ub] - self.n_target[ub]).astype(np.int64)).to(device)
            s, c = _auc_sums(scores, (tr, tc, to), nt, n_neg)
            self.auc_sum += s
            self.auc_users += c

    def _add_topk(self, scores: torch.Tensor, tgt: torch.Tensor, nt: torch.Tensor,
                  first_rank: torch.Tensor) -> torch.Tensor:
        kmax, kmax_eff = self.kmax, min(self.kmax, self.n_items)
        hits = _topk_hits(scores, tgt, kmax_eff)  # (b, kmax_eff) bool, rank order
        if kmax_eff < kmax:  # fewer items than the largest K: missing ranks never hit
            hits = torch.cat([hits, hits.new_zeros((hits.shape[0], kmax - kmax_eff))], 1)
        if "mrr" in self.metrics:
            has = hits.any(1)
            first_rank = torch.where(has, hits.to(torch.int8).argmax(1).to(torch.float64) + 1, first_rank)
        hf = hits.to(torch.float64)
        cum = hf.cumsum(1)
        for m in self.want_topk:
            values = self._topk_values(m, hf, cum, nt)
            tot = values.sum(0).tolist()
            for j, k in enumerate(self.kl):
                self.sums[f"{m}@{k}"] += tot[j]
                if self.per_user is not None:
                    self.per_user.setdefault(f"{m}@{k}", []).append(values[:, j].cpu().numpy())
        return first_rank

    def per_user_values(self, eval_users: np.ndarray) -> dict[str, np.ndarray]:
        """The per-user values collected (``eval_users`` in chunk order), sorted by user index."""
        order = np.argsort(eval_users, kind="stable")
        out: dict[str, np.ndarray] = {"users": np.asarray(eval_users, dtype=np.int64)[order]}
        for key, chunks in (self.per_user or {}).items():
            out[key] = np.concatenate(chunks)[order] if chunks else np.zeros(0)
        return out

    def _topk_values(self, m: str, hf: torch.Tensor, cum: torch.Tensor, nt: torch.Tensor) -> torch.Tensor:
        """(b, n_k) per-user values of metric ``m`` at every K."""
        hk, k_idx, k_val, ntf = cum[:, self.k_idx], self.k_idx, self.k_val, nt.to(torch.float64)
        if m == "recall":
            return hk / ntf[:, None]
        if m == "precision":
            return hk / k_val
        if m == "hitrate":
            return (hk > 0).to(torch.float64)
        if m == "ndcg":
            dcg = (hf * self.disc).cumsum(1)[:, k_idx]
            return dcg / self.idcg_cum[torch.minimum(nt[:, None], k_idx + 1)]
        ranks = torch.arange(1, self.kmax + 1, dtype=torch.float64, device=self.device)
        return (hf * cum / ranks).cumsum(1)[:, k_idx] / torch.minimum(ntf[:, None], k_val)  # map

    def result(self, n_eval: int) -> dict[str, float]:
        """Means over the ``n_eval`` users (NaN when there are none) and ``n_users``."""
        out = {k: (v / n_eval if n_eval else float("nan")) for k, v in self.sums.items()}
        if "auc" in self.metrics:
            out["auc"] = self.auc_sum / self.auc_users if self.auc_users else float("nan")
        out["n_users"] = n_eval
        return out


def _check_parts(target: sp.spmatrix, exclude: sp.spmatrix | None) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    target = _check_csr(target, "target")
    if exclude is None:
        return target, None
    exclude = _check_csr(exclude, "exclude")
    if exclude.shape != target.shape:
        raise ValueError(f"exclude has shape {exclude.shape} but target has shape {target.shape}")
    overlap = target.multiply(exclude).nnz if target.nnz and exclude.nnz else 0
    if overlap:
        raise ValueError(
            f"{overlap} (user, item) pairs are both target and excluded: the split leaks "
            "(a held-out item is also a training item)"
        )
    return target, exclude


def _eval_users(n_target: np.ndarray, users: np.ndarray | None, n_users: int) -> np.ndarray:
    eval_users = np.flatnonzero(n_target > 0)
    if users is None:
        return eval_users
    req = np.asarray(users)
    if req.ndim != 1 or (req.size and req.dtype.kind not in "iu"):
        raise ValueError(f"users must be a 1-D integer array, got shape {req.shape} dtype {req.dtype}")
    if req.size and (req.min() < 0 or req.max() >= n_users):
        raise ValueError(f"users contains indices outside [0, {n_users})")
    return np.intersect1d(eval_users, req)


def _chunk_size(batch_size: int | None, device: torch.device, n_items: int) -> int:
    if batch_size is None:
        budget = _BLOCK_BYTES_CPU if device.type == "cpu" else _BLOCK_BYTES_DEVICE
        return max(1, budget // (4 * max(n_items, 1)))
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _checked_scores(scorer: Scorer, ub: np.ndarray, n_items: int, device: torch.device) -> torch.Tensor:
    b = len(ub)
    scores = scorer(ub)
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scorer must return a torch.Tensor, got {type(scores).__name__}")
    if tuple(scores.shape) != (b, n_items):
        raise ValueError(f"scorer returned shape {tuple(scores.shape)} for {b} users; expected ({b}, {n_items})")
    scores = scores.detach().to(device)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    # cheap finiteness test: the sum of finite scores is finite (unless it overflows)
    if not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
        raise ValueError("scorer returned NaN or infinite scores")
    return scores


def evaluate_part(scorer: Scorer, split: "Split", part: str = "valid", **kwargs: Any) -> dict[str, float]:
    """The protocol entry: :func:`evaluate` on one part of a :class:`~metricrec.data.splits.Split`
    with the protocol's exclusions (docs/protocol.md). Every caller that scores a split uses it.

    ``part="valid"`` ranks with train items removed; ``part="test"`` removes train and valid items.
    Keyword arguments go to :func:`evaluate`. Users of the part that no model can rank -- a predefined
    split's users outside its id universe, counted in ``split.meta["unseen_users"]`` -- are averaged in
    with every metric 0 (AUC leaves them out); ``n_users`` includes them and ``n_unseen_users`` counts
    them (the key is there only when there are some). With ``users=`` given only those are averaged.
    """
    if part == "valid":
        target, exclude = split.valid.matrix, split.train.matrix
    elif part == "test":
        target = split.test.matrix
        exclude = (split.train.matrix + split.valid.matrix).tocsr()
        exclude.data[:] = 1.0
    else:
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
    result = evaluate(scorer, target, exclude, **kwargs)
    unseen = int((split.meta.get("unseen_users") or {}).get(part, 0))
    return _with_unseen(result, unseen) if unseen and kwargs.get("users") is None else result


def _with_unseen(result: dict[str, float], unseen: int) -> dict[str, float]:
    """``result`` averaged over its users and ``unseen`` more whom no model can rank (users of the part
    outside the id universe, :func:`metricrec.data.split_files.read_split`): every metric is 0 for them
    -- no target is ever hit -- except AUC, which has no pair to compare for them and leaves them out."""
    n = int(result["n_users"])
    total = n + unseen
    out = {k: (0.0 if n == 0 else v * n / total) for k, v in result.items() if k not in ("auc", "n_users")}
    if "auc" in result:
        out["auc"] = result["auc"]
    out["n_users"], out["n_unseen_users"] = total, unseen
    return out
