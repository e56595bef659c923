"""Synthetic implicit-feedback data with planted, known structure.

:func:`generate` draws a user x item interaction set whose shape matches a real data set (presets
``"ml-1m"``, ``"ml-20m"``) or a small one for tests, with structure a recommender can learn:

- **Latent clusters.** Every user and every item belongs to one of ``n_clusters`` clusters
  (balanced sizes, random membership). A user's items come from its own cluster with probability
  ``cluster_affinity`` (``a``), otherwise from the whole catalogue (own cluster included): user ``u``
  first gets ``Binomial(n_u, a)`` distinct items of its own cluster (at most ``max_user_fraction``
  of that cluster, the rest overflows), then the rest from the whole catalogue. The in-cluster
  fraction of a user in cluster ``c`` lies between ``a`` and ``a + (1 - a) * W_c / W`` (``W_c``:
  popularity mass of cluster ``c``, ``W``: total); it is below the upper value because a catalogue
  draw of an own-cluster item the user already has is redrawn. With many clusters and heavy users
  the cap binds (``ml-1m`` preset: 0.59 of all pairs are in-cluster at ``a = 0.8``).
- **Power-law popularity.** Item ``i`` has weight ``rank_i ** -popularity_exponent`` with a random
  rank permutation, so popularity is Zipf-like across the catalogue and, because a cluster is a
  random subset of items, within every cluster too. Draws are proportional to these weights.
- **Log-normal activity.** A user's number of interactions is ``s * exp(activity_sigma * z)``,
  ``z ~ N(0, 1)``, clipped to ``[min_user_interactions, max_user_fraction * n_items]`` with the scale
  ``s`` solved so that the clipped counts sum to ``n_interactions`` exactly.
- **Timestamps.** Increasing per user in draw order: a random start in a three-year window plus
  cumulative gaps of ``1 + Exponential(mean 6 h)`` seconds (all of a user's timestamps distinct).
- **Item features** (optional): a one-hot ``cluster=c`` column plus ``tags_per_item`` noisy tags per
  item, each from the item's cluster's own block of ``tags_per_cluster`` tags with probability
  ``1 - tag_noise``, else uniform over all tags (a tag drawn twice is kept once).

No duplicate pairs (the rule)
-----------------------------
Users are processed in blocks, fully vectorised (no Python loop per user). Each round draws, with
replacement, ``ceil(f_r * deficit_u)`` items for every user still short of its target (``f_r``
doubles each round, from 1.25), drops pairs already chosen and repeated draws, and keeps each
user's first ``deficit_u`` new distinct items in draw order. After ``weighted_rounds`` rounds any
remaining shortfall (users needing very rare items) is filled by the same rule with *uniform* item
draws; their number is ``meta["n_uniform_fill"]`` (0 for the presets). Since a user's target is at
most half the catalogue, the uniform rounds converge geometrically, and the output count equals
``n_interactions`` exactly (``meta["shortfall"]`` reports any difference, which is 0 unless the
uniform rounds also ran out).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from .interactions import Features, Interactions

__all__ = ["PRESETS", "generate"]

#: name -> (n_users, n_items, n_interactions, n_clusters, min_user_interactions)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    # MovieLens 1M: 6,040 users, 3,706 rated items, 1,000,209 ratings, every user >= 20 ratings.
    "ml-1m": (6_040, 3_706, 1_000_209, 10, 20),
    # MovieLens 20M: 138,493 users, 26,744 items, 20,000,263 ratings, every user >= 20 ratings.
    "ml-20m": (138_493, 26_744, 20_000_263, 20, 20),
    # For tests: 300 users x 200 items, 3,000 interactions (5% dense).
    "small": (300, 200, 3_000, 4, 5),
}

_DAY = 86_400
_T0 = 946_684_800  # 2000-01-01 UTC, so timestamps look like real Unix seconds
_BLOCK = 2_000_000  # target interactions per user block (bounds peak memory)


def generate(
    n_users: int | None = None,
    n_items: int | None = None,
    n_interactions: int | None = None,
    *,
    preset: str | None = None,
    n_clusters: int | None = None,
    seed: int = 0,
    popularity_exponent: float = 1.3,
    activity_sigma: float = 1.0,
    cluster_affinity: float = 0.8,
    min_user_interactions: int | None = None,
    max_user_fraction: float = 0.5,
    with_item_features: bool = True,
    tags_per_cluster: int = 5,
    tags_per_item: int = 3,
    tag_noise: float = 0.3,
    weighted_rounds: int = 12,
) -> Interactions:
    """Generate binary implicit-feedback interactions with planted clusters and popularity.

    Parameters
    ----------
    n_users, n_items, n_interactions : int, optional
        Shape and exact number of distinct (user, item) pairs. Required unless ``preset`` is
        given; when both are given the explicit values override the preset's.
    preset : {"ml-1m", "ml-20m", "small"}, optional
        ``"ml-1m"``: 6,040 x 3,706, 1,000,209 pairs; ``"ml-20m"``: 138,493 x 26,744, 20,000,263
        pairs; ``"small"``: 300 x 200, 3,000 pairs. See :data:`PRESETS`.
    n_clusters : int, optional
        Number of latent clusters (default: the preset's, else 10). At most ``min(n_users, n_items)``.
    seed : int, default 0
        Everything is a deterministic function of the arguments and this seed.
    popularity_exponent : float, default 1.0
        Zipf exponent of item weights (0 = uniform popularity).
    activity_sigma : float, default 1.0
        Standard deviation of log user activity (0 = every user the same, up to clipping).
    cluster_affinity : float in [0, 1], default 0.8
        Probability that one draw comes from the user's own cluster rather than the whole catalogue.
    min_user_interactions : int, optional
        Every user gets at least this many items (default: the preset's, else 5), so that the
        protocol's 60/20/20 split evaluates every user.
    max_user_fraction : float in (0, 0.5], default 0.5
        No user gets more than ``max(min_user_interactions, floor(max_user_fraction * n_items))``.
    with_item_features : bool, default True
        Attach item features (cluster one-hot + noisy tags) as ``item_features``.
    tags_per_cluster, tags_per_item : int
        Size of each cluster's tag block and tags drawn per item.
    tag_noise : float in [0, 1], default 0.3
        Probability that one tag is drawn uniformly from all tags instead of the item's cluster block.
    weighted_rounds : int, default 12
        Popularity-weighted sampling rounds before uniform top-up (see the module docstring).

    Returns
    -------
    Interactions
        ``matrix`` of shape (n_users, n_items), binary float32, ``nnz == n_interactions``;
        ``user_ids``/``item_ids`` are ``arange``; ``timestamps`` int64 seconds, shape (nnz,).
        ``meta`` holds the ground truth: ``user_cluster`` (n_users,), ``item_cluster`` (n_items,),
        ``item_weight`` (n_items,) planted popularity, ``user_target`` (n_users,) planted activity,
        plus ``source="synthetic"``, ``preset``, ``seed``, all generator parameters,
        ``n_uniform_fill`` and ``shortfall``.

    Raises
    ------
    ValueError
        Unknown preset, missing or non-positive sizes, parameters out of range, or an
        ``n_interactions`` that the per-user bounds cannot reach.
    """
    n_users, n_items, n_interactions, n_clusters, min_user = _sizes(
        preset, n_users, n_items, n_interactions, n_clusters, min_user_interactions
    )
    cap = _check_params(
        n_users, n_items, n_interactions, n_clusters, min_user, popularity_exponent, activity_sigma,
        cluster_affinity, max_user_fraction, tags_per_cluster, tags_per_item, tag_noise, weighted_rounds,
    )
    rng = np.random.default_rng(seed)
    user_cluster = rng.permutation(np.arange(n_users) % n_clusters).astype(np.int64)
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters).astype(np.int64)
    ranks = rng.permutation(n_items) + 1.0
    item_weight = ranks ** -float(popularity_exponent)
    target = _activity(rng, n_users, n_interactions, activity_sigma, min_user, cap)
    # Own-cluster quota: Binomial(target, affinity), at most max_user_fraction of the cluster.
    cluster_cap = np.floor(max_user_fraction * np.bincount(item_cluster, minlength=n_clusters)).astype(np.int64)
    n_own = np.minimum(rng.binomial(target, cluster_affinity), cluster_cap[user_cluster])
    keys, n_uniform = _sample_pairs(
        rng, item_cluster, item_weight, n_clusters, user_cluster, n_own, target - n_own, weighted_rounds
    )
    matrix, ts = _to_matrix(rng, keys, n_users, n_items)
    features = (_item_features(rng, item_cluster, n_clusters, tags_per_cluster, tags_per_item, tag_noise)
                if with_item_features else None)
    meta: dict[str, Any] = {
        "source": "synthetic" if preset is None else f"synthetic:{preset}", "preset": preset, "seed": int(seed),
        "n_ratings": int(len(keys)), "n_duplicates": 0, "n_clusters": n_clusters,
        "popularity_exponent": float(popularity_exponent), "activity_sigma": float(activity_sigma),
        "cluster_affinity": float(cluster_affinity), "min_user_interactions": min_user,
        "max_user_interactions": cap, "target_interactions": n_interactions, "n_uniform_fill": int(n_uniform),
        "shortfall": int(n_interactions - len(keys)), "user_cluster": user_cluster,
        "item_cluster": item_cluster, "item_weight": item_weight, "user_target": target,
    }
    return Interactions(matrix=matrix, user_ids=np.arange(n_users, dtype=np.int64),
                        item_ids=np.arange(n_items, dtype=np.int64), timestamps=ts, item_features=features,
                        meta=meta)


# ---------------------------------------------------------------------- helpers
def _sizes(
    preset: str | None, n_users: int | None, n_items: int | None, n_interactions: int | None,
    n_clusters: int | None, min_user: int | None,
) -> tuple[int, int, int, int, int]:
    """(n_users, n_items, n_interactions, n_clusters, min_user_interactions): explicit values over the preset's."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        given = (n_users, n_items, n_interactions, n_clusters, min_user)
        n_users, n_items, n_interactions, n_clusters, min_user = (
            p if g is None else g for p, g in zip(PRESETS[preset], given)
        )
    for name, value in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions)):
        if value is None:
            raise ValueError(f"{name} is required when no preset is given")
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return (int(n_users), int(n_items), int(n_interactions),  # type: ignore[arg-type]
            10 if n_clusters is None else int(n_clusters), 5 if min_user is None else int(min_user))


def _to_matrix(rng: np.random.Generator, keys: np.ndarray, n_users: int, n_items: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary CSR of the pair keys ``user * n_items + item`` and their timestamps (CSR order)."""
    users = keys // n_items
    ts = _timestamps(rng, users, n_users)
    order = np.argsort(keys, kind="stable")
    keys, ts = keys[order], ts[order]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    idx_dtype = np.int32 if len(keys) < 2**31 else np.int64
    matrix = sp.csr_matrix((np.ones(len(keys), dtype=np.float32), (keys % n_items).astype(idx_dtype),
                            indptr.astype(idx_dtype)), shape=(n_users, n_items))
    return matrix, ts


def _check_params(
    n_users: int, n_items: int, n_interactions: int, n_clusters: int, min_user: int, exponent: float,
    sigma: float, affinity: float, max_fraction: float, tags_per_cluster: int, tags_per_item: int,
    tag_noise: float, weighted_rounds: int,
) -> int:
    """Check the parameters; return the per-user cap ``max(min_user, floor(max_fraction * n_items))``."""
    if not 1 <= n_clusters <= min(n_users, n_items):
        raise ValueError(f"n_clusters must be in [1, min(n_users, n_items)={min(n_users, n_items)}], got {n_clusters}")
    if min_user < 1:
        raise ValueError(f"min_user_interactions must be >= 1, got {min_user}")
    if min_user > n_items // 2:
        raise ValueError(f"min_user_interactions={min_user} exceeds half the catalogue (n_items={n_items})")
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"popularity_exponent must be finite and >= 0, got {exponent}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"activity_sigma must be finite and >= 0, got {sigma}")
    if not 0.0 <= affinity <= 1.0:
        raise ValueError(f"cluster_affinity must be in [0, 1], got {affinity}")
    if not 0.0 < max_fraction <= 0.5:
        raise ValueError(f"max_user_fraction must be in (0, 0.5], got {max_fraction}")
    if tags_per_cluster < 1 or tags_per_item < 0:
        raise ValueError(
            f"tags_per_cluster must be >= 1 and tags_per_item >= 0, got {tags_per_cluster} and {tags_per_item}"
        )
    if not 0.0 <= tag_noise <= 1.0:
        raise ValueError(f"tag_noise must be in [0, 1], got {tag_noise}")
    if weighted_rounds < 1:
        raise ValueError(f"weighted_rounds must be >= 1, got {weighted_rounds}")
    cap = max(min_user, int(math.floor(max_fraction * n_items)))
    if n_interactions < n_users * min_user or n_interactions > n_users * cap:
        raise ValueError(
            f"n_interactions={n_interactions} is outside [{n_users * min_user}, {n_users * cap}] allowed by "
            f"n_users={n_users}, min_user_interactions={min_user} and at most {cap} items per user"
        )
    return cap


def _activity(rng: np.random.Generator, n_users: int, total: int, sigma: float, lo: int, hi: int) -> np.ndarray:
    """Integer per-user counts in [lo, hi], log-normal shaped, summing exactly to ``total``."""
    raw = np.exp(sigma * rng.standard_normal(n_users))
    # sum(clip(s * raw, lo, hi)) is non-decreasing in s: bisect on log s.
    a, b = math.log(lo / raw.max()) - 1.0, math.log(hi / raw.min()) + 1.0
    for _ in range(100):
        mid = 0.5 * (a + b)
        if np.clip(math.exp(mid) * raw, lo, hi).sum() < total:
            a = mid
        else:
            b = mid
    x = np.clip(math.exp(b) * raw, lo, hi)
    counts = np.floor(x).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:  # hand out the remainder by largest fractional part among users below the cap
        frac = np.where(counts < hi, x - counts, -1.0)
        counts[np.argsort(-frac, kind="stable")[:rest]] += 1
    elif rest < 0:  # cannot happen with b >= the root, but keep the total exact regardless
        frac = np.where(counts > lo, x - counts, 2.0)
        counts[np.argsort(frac, kind="stable")[: -rest]] -= 1
    return counts


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of a probability vector: (accept probability, alias index)."""
    n = len(p)
    scaled = p * (n / p.sum())
    prob = np.ones(n)
    alias = np.arange(n)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    # One pass over the entries (set-up cost O(n_items) once, not per draw).
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


class _Sampler:
    """O(1)-per-draw weighted item sampler (alias method), from one cluster or the whole catalogue.

    Table positions ``[0, n_items)`` hold one alias table per cluster (items grouped by cluster);
    positions ``[n_items, 2 n_items)`` hold the table of the whole catalogue.
    """

    def __init__(self, item_cluster: np.ndarray, weight: np.ndarray, n_clusters: int) -> None:
        n = len(weight)
        order = np.argsort(item_cluster, kind="stable")
        sizes = np.bincount(item_cluster, minlength=n_clusters)
        self.start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.size = sizes.astype(np.int64)
        self.n_items = n
        prob = np.empty(2 * n)
        alias = np.empty(2 * n, dtype=np.int64)
        for c in range(n_clusters):
            lo, hi = self.start[c], self.start[c] + sizes[c]
            prob[lo:hi], a = _alias_table(weight[order[lo:hi]])
            alias[lo:hi] = a + lo
        prob[n:], a = _alias_table(weight)
        alias[n:] = a + n
        self.prob = prob
        # item id at each table position (an alias points to a position in the same table)
        self.item = np.concatenate([order, np.arange(n)])[alias]
        self.self_item = np.concatenate([order, np.arange(n)])

    def draw(self, rng: np.random.Generator, clusters: np.ndarray, own: bool) -> np.ndarray:
        """One item per entry of ``clusters``: from that cluster if ``own``, else from all items."""
        m = len(clusters)
        if own:
            pos = self.start[clusters] + (rng.random(m) * self.size[clusters]).astype(np.int64)
        else:
            pos = self.n_items + rng.integers(0, self.n_items, m)
        return np.where(rng.random(m) < self.prob[pos], self.self_item[pos], self.item[pos])


def _sample_pairs(
    rng: np.random.Generator, item_cluster: np.ndarray, item_weight: np.ndarray, n_clusters: int,
    user_cluster: np.ndarray, n_own: np.ndarray, n_any: np.ndarray, weighted_rounds: int,
) -> tuple[np.ndarray, int]:
    """Distinct pair keys ``user * n_items + item`` (users ascending, each user's in draw order).

    User ``u`` gets ``n_own[u]`` items of its own cluster, then ``n_any[u]`` more from the whole
    catalogue (never repeating one it already has).
    """
    n_items = len(item_cluster)
    weighted = _Sampler(item_cluster, item_weight, n_clusters)
    uniform = _Sampler(item_cluster, np.ones(n_items), n_clusters)
    total = np.cumsum(n_own + n_any)
    bounds = np.searchsorted(total, np.arange(_BLOCK, int(total[-1]), _BLOCK), side="right")
    edges = np.unique(np.concatenate([[0], bounds, [len(total)]]))
    out, n_uniform = [], 0
    for b0, b1 in zip(edges[:-1], edges[1:]):
        users = np.arange(b0, b1, dtype=np.int64)
        chosen = np.empty(0, dtype=np.int64)  # sorted keys taken so far in this block
        taken: list[np.ndarray] = []
        for own, need in ((True, n_own), (False, n_any)):
            deficit = need[b0:b1].copy()
            factor = 1.25
            for rnd in range(weighted_rounds + 60):
                active = deficit > 0
                if not active.any():
                    break
                is_uniform = rnd >= weighted_rounds
                u = np.repeat(users[active], np.ceil(deficit[active] * factor).astype(np.int64))
                sampler = uniform if is_uniform else weighted
                key = u * n_items + sampler.draw(rng, user_cluster[u], own)
                uniq, first = np.unique(key, return_index=True)
                if len(chosen):  # sorted needles keep this binary search cache-friendly
                    pos = np.minimum(np.searchsorted(chosen, uniq), len(chosen) - 1)
                    first = first[chosen[pos] != uniq]
                first.sort()  # distinct new keys back in draw order; u stays non-decreasing
                key, u = key[first], u[first]
                rank = np.arange(len(u)) - np.searchsorted(u, u, side="left")
                keep = rank < deficit[u - b0]
                key = key[keep]
                deficit -= np.bincount(u[keep] - b0, minlength=len(users))
                n_uniform += len(key) if is_uniform else 0
                taken.append(key)
                chosen = np.sort(np.concatenate([chosen, key]))
                factor = 2.0 if is_uniform else min(factor * 2.0, 1e4)
        block = np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)
        # group by user, keeping each user's draw order (own-cluster items first, then the rest)
        out.append(block[np.argsort(block // n_items, kind="stable")])
    return np.concatenate(out), n_uniform


def _timestamps(rng: np.random.Generator, users: np.ndarray, n_users: int) -> np.ndarray:
    """Strictly increasing int64 seconds per user, in the given (grouped-by-user) order."""
    gaps = 1 + np.floor(rng.exponential(_DAY / 4, len(users))).astype(np.int64)
    csum = np.cumsum(gaps)
    counts = np.bincount(users, minlength=n_users)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    before = np.concatenate([[0], csum])[first]  # gap total of earlier users
    start = _T0 + rng.integers(0, 3 * 365 * _DAY, n_users)
    return start[users] + csum - np.repeat(before, counts)


def _item_features(
    rng: np.random.Generator, item_cluster: np.ndarray, n_clusters: int, per_cluster: int, per_item: int,
    noise: float,
) -> Features:
    """Cluster one-hot + noisy tags, shape (n_items, n_clusters + n_clusters * per_cluster)."""
    n_items = len(item_cluster)
    n_tags = n_clusters * per_cluster
    rows = np.repeat(np.arange(n_items), per_item)
    own_tag = item_cluster[rows] * per_cluster + rng.integers(0, per_cluster, len(rows))
    tags = np.where(rng.random(len(rows)) < noise, rng.integers(0, n_tags, len(rows)), own_tag)
    r = np.concatenate([np.arange(n_items), rows])
    c = np.concatenate([item_cluster, n_clusters + tags])
    m = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_items, n_clusters + n_tags))
    m.sum_duplicates()
    m.data[:] = 1.0
    names = np.array([f"cluster={k}" for k in range(n_clusters)] + [f"tag={t}" for t in range(n_tags)])
    return Features(m, names)
