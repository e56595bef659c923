"""Ranking statistics of one chunk of users, the tensor kernels behind :func:`metricrec.metrics.evaluate`."""

from __future__ import annotations

import torch

__all__ = ["auc_sums", "first_target_rank", "topk_hits"]


def topk_hits(scores: torch.Tensor, tgt: torch.Tensor, k: int) -> torch.Tensor:
    """Target indicator of the top ``k`` candidates, in rank order (ties by lower item index).

    ``torch.topk`` orders equal scores arbitrarily, so rows where the top ``k + 1`` finite scores
    contain a tie are re-ranked with a stable descending sort (equal scores keep index order).
    """
    n_items = scores.shape[1]
    kk = min(k + 1, n_items)
    vals, idx = torch.topk(scores, kk, dim=1)
    tie = ((vals[:, 1:] == vals[:, :-1]) & torch.isfinite(vals[:, 1:])).any(1)
    idx = idx[:, :k]
    rows = torch.nonzero(tie).flatten()
    if len(rows):
        order = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
        idx = idx.clone()
        idx[rows] = order
    return torch.gather(tgt, 1, idx)


def first_target_rank(scores: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """1-based rank (float64) of the first target in the full ranking, for rows with >= 1 target."""
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    best = torch.where(tgt, scores, neg_inf).max(1, keepdim=True).values
    ar = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    eq = scores == best
    best_idx = torch.where(tgt & eq, ar, scores.shape[1]).min(1, keepdim=True).values
    ahead = (scores > best).sum(1) + (eq & (ar < best_idx)).sum(1)
    return ahead.to(torch.float64) + 1.0


def auc_sums(
    scores: torch.Tensor, tgt: tuple[torch.Tensor, torch.Tensor, torch.Tensor], nt: torch.Tensor, n_neg: torch.Tensor
) -> tuple[float, int]:
    """(sum of per-user AUC, number of users with >= 1 negative candidate) for one chunk.

    ``tgt`` = (local row, column, position within row) of the chunk's target entries.
    For a candidate c let L(c) = #targets scored < s_c and R(c) = #targets scored <= s_c. The
    correctly ordered pairs are sum over negatives n of (|T| - R(n)) + (R(n) - L(n)) / 2
    = |T||N| - sum_n M(n) / 2 with M = L + R. Excluded items score -inf, so M = 0 for them, and
    over the targets sum_t M(t) = |T|^2 exactly (distinct pairs add 2, each target itself 1), so
    sum_n M(n) = sum over all items of M - |T|^2. M(c) = #{z <= s_c} over the 2|T| values
    z in {s_t} U {nextafter(s_t, +inf)}, i.e. one searchsorted per item.
    """
    b, n_items = scores.shape
    tr, tc, to = tgt
    tmax = int(nt.max())
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
    # target scores of each row, padded with +inf (which no finite score reaches)
    ts = torch.full((b, tmax), float("inf"), dtype=scores.dtype, device=scores.device)
    ts[tr, to] = scores[tr, tc]
    # nextafter(largest float) = inf, which like the padding is never <= a finite score
    z = torch.sort(torch.cat([ts, torch.nextafter(ts, inf)], 1), dim=1).values
    big = 2 * tmax * n_items >= 2**31
    m = torch.searchsorted(z, scores.contiguous(), right=True, out_int32=not big)
    msum = m.sum(1, dtype=torch.int64).to(torch.float64)
    ntf = nt.to(torch.float64)
    negf = n_neg.to(torch.float64)
    ok = n_neg > 0
    auc = (ntf * negf - 0.5 * (msum - ntf * ntf)) / (ntf * negf)
    return float(auc[ok].sum()), int(ok.sum())
