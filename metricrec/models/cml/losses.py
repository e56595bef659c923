"""The CML loss terms as plain differentiable torch functions.

These are the readable reference definitions (Hsieh et al., WWW 2017). Training uses the fused
kernel in :mod:`metricrec.kernel`, which computes the same values with hand-written gradients; the
tests check the two against each other with autograd.
"""

from __future__ import annotations

import torch

from .config import COV_FORMULAS

__all__ = ["rank_weight", "metric_loss", "covariance_loss", "COV_FORMULAS"]


def rank_weight(n_impostors: torch.Tensor, n_items: int, n_negatives: int) -> torch.Tensor:
    """WARP-style rank weight ``log(floor(J * M / U) + 1)``.

    Parameters
    ----------
    n_impostors : torch.Tensor, shape (B,)
        M: how many of the U sampled negatives violate the margin.
    n_items : int
        J: number of items in the catalogue.
    n_negatives : int
        U: number of sampled negatives.
    """
    rank = torch.floor(n_items * n_impostors.to(torch.float64) / n_negatives)
    return torch.log(rank + 1.0).to(torch.float32)


def metric_loss(
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    *,
    margin: float,
    n_items: int,
    use_rank_weight: bool = True,
) -> torch.Tensor:
    """Weighted hinge on the closest sampled negative, summed over the batch.

    Parameters
    ----------
    users, positives : torch.Tensor, shape (B, d)
        u_i and v_j of each positive pair.
    negatives : torch.Tensor, shape (B, U, d)
        v_k of the U sampled negatives of each pair.
    margin : float
        m in ``[m + d(i,j)^2 - d(i,k)^2]_+``.
    n_items : int
        J, for the rank estimate.
    use_rank_weight : bool
        Weight each hinge by ``log(floor(J*M/U) + 1)`` (no gradient through the weight); when
        False every hinge has weight 1 (plain triplet loss).

    Returns
    -------
    torch.Tensor, scalar
    """
    d_pos = ((users - positives) ** 2).sum(-1)  # (B,)
    d_neg = ((users[:, None, :] - negatives) ** 2).sum(-1)  # (B, U)
    closest = d_neg.min(dim=1).values
    hinge = torch.relu(margin + d_pos - closest)
    if not use_rank_weight:
        return hinge.sum()
    with torch.no_grad():
        impostors = (margin + d_pos[:, None] - d_neg > 0).sum(1)
        w = rank_weight(impostors, n_items, negatives.shape[1])
    return (w * hinge).sum()


def covariance_loss(x: torch.Tensor, formula: str = "paper", eps: float = 1e-12) -> torch.Tensor:
    """Covariance regulariser over the rows of ``x`` (objects) and its columns (dimensions).

    With ``C = (x - mean)^T (x - mean) / N`` (N rows):

    - ``"paper"``: ``(||C||_F - ||diag(C)||_2^2) / N``, the formula as printed in the paper;
    - ``"offdiag"``: ``(||C||_F^2 - ||diag(C)||_2^2) / N``, the sum of squared off-diagonal entries;
    - ``"tf_signed"``: ``(sum(C) - trace(C)) / N``, the signed off-diagonal sum of the authors'
      TensorFlow code (kept to reproduce it; it can be lowered by anti-correlating dimensions).
    """
    if formula not in COV_FORMULAS:
        raise ValueError(f"unknown covariance formula {formula!r}; choose one of {COV_FORMULAS}")
    n = x.shape[0]
    xc = x - x.mean(0, keepdim=True)
    c = xc.T @ xc / n
    diag = torch.diagonal(c)
    if formula == "paper":
        return (torch.sqrt((c * c).sum() + eps) - (diag * diag).sum()) / n
    if formula == "offdiag":
        return ((c * c).sum() - (diag * diag).sum()) / n
    return (c.sum() - diag.sum()) / n

