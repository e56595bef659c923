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


def tiny_interactions(seed: int = 0, *, int_items: bool = False):
    """60 users with integer raw ids 100..159 and 80 items with string ids ``item-0..79`` (or, with
    ``int_items``, users 150..209 and integer item ids 200..279), in 4 planted groups."""
    from metricrec import Interactions

    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(60):
        group = u % 4
        for i in rng.choice(20, size=6, replace=False):
            users.append((150 if int_items else 100) + u)
            items.append(200 + group * 20 + int(i) if int_items else f"item-{group * 20 + int(i)}")
    return Interactions.from_arrays(np.array(users), np.array(items))


def fit_tiny_model(seed: int = 0, kind: str = "CML", *, int_items: bool = False):
    from metricrec.models import BPR, CML

    cls = CML if kind == "CML" else BPR
    return cls(factors=8, epochs=3, seed=seed, kernel="torch", show_progress=False, verbose=False).fit(
        tiny_interactions(seed, int_items=int_items))
