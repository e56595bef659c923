"""The compiled kernel's parallel gradient scatter gives the same bits for any number of parts."""

import numpy as np
import pytest

pytest.importorskip("numba")

from metricrec.models.cml import step_numba  # noqa: E402


def test_scatter_is_bitwise_independent_of_the_number_of_parts():
    rng = np.random.default_rng(0)
    n_users, n_items, d, b = 30, 40, 7, 500
    U = rng.normal(size=(n_users, d)).astype(np.float32)
    V = rng.normal(size=(n_items, d)).astype(np.float32)
    users = rng.integers(0, n_users, b)
    pos = rng.integers(0, n_items, b)
    closest = (pos + rng.integers(1, n_items, b)) % n_items
    w = rng.random(b).astype(np.float32) * (rng.random(b) > 0.3)
    _, scatter = step_numba._compile()
    out = []
    for parts in (1, 2, 3, 8):
        GU, GV = np.zeros_like(U), np.zeros_like(V)
        tu, tv = np.zeros(n_users, bool), np.zeros(n_items, bool)
        scatter(U, V, users, pos, closest, w, GU, GV, tu, tv, parts)
        out.append((GU, GV, tu, tv))
    for other in out[1:]:
        for x, y in zip(out[0], other):
            assert np.array_equal(x, y)
    active = w > 0
    assert set(np.flatnonzero(out[0][2])) == set(users[active])
    assert set(np.flatnonzero(out[0][3])) == set(pos[active]) | set(closest[active])
