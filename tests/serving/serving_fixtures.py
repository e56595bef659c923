"""Helpers of the serving tests: small planted tables and tiny trained models."""

import numpy as np


def planted_table(n: int, d: int, n_clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items in ``n_clusters`` tight clusters inside the unit ball (as CML tables are, max_norm 1),
    and 200 queries drawn near the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    centres *= (rng.uniform(0.3, 0.9, size=(n_clusters, 1)) / np.linalg.norm(centres, axis=1, keepdims=True))
    table = centres[rng.integers(0, n_clusters, n)] + rng.normal(scale=0.08, size=(n, d))
    queries = centres[rng.integers(0, n_clusters, 200)] + rng.normal(scale=0.08, size=(200, d))
    return table.astype(np.float32), queries.astype(np.float32)


def tiny_interactions(seed: int = 0):
    """60 users with integer raw ids 100..159 and 80 items with string ids, in 4 planted groups."""
    from metricrec import Interactions

    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(60):
        group = u % 4
        for i in rng.choice(20, size=6, replace=False):
            users.append(100 + u)
            items.append(f"item-{group * 20 + int(i)}")
    return Interactions.from_arrays(np.array(users), np.array(items))


def fit_tiny_model(seed: int = 0, kind: str = "CML"):
    from metricrec.models import BPR, CML

    cls = CML if kind == "CML" else BPR
    return cls(factors=8, epochs=3, seed=seed, kernel="torch", show_progress=False, verbose=False).fit(
        tiny_interactions(seed))
