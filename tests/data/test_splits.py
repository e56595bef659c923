"""Tests of metricrec.data.splits: hand-checked sizes, an independent slow implementation, invariants."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.data.interactions import Interactions
from metricrec.data.splits import Split, leave_k_out, ratio_split, temporal_split


def make_data(counts, n_items=40, seed=0, timestamps=True) -> Interactions:
    """User u gets counts[u] distinct random items; timestamps all distinct."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u, n in enumerate(counts):
        users += [u] * n
        items += rng.choice(n_items, size=n, replace=False).tolist()
    ts = rng.permutation(len(users)) * 10 + 1_000 if timestamps else None
    return Interactions.from_arrays(
        users, items, timestamps=ts, user_ids=np.arange(len(counts)), item_ids=np.arange(n_items)
    )


def pairs(m: sp.csr_matrix) -> set[tuple[int, int]]:
    c = m.tocoo()
    return set(zip(c.row.tolist(), c.col.tolist()))


def per_user_sizes(split: Split) -> np.ndarray:
    return np.stack([np.diff(p.matrix.indptr) for p in (split.train, split.valid, split.test)], 1)


def ts_map(d: Interactions) -> dict[tuple[int, int], int]:
    rows = np.repeat(np.arange(d.n_users), np.diff(d.matrix.indptr))
    return dict(zip(zip(rows.tolist(), d.matrix.indices.tolist()), d.timestamps.tolist()))


def check_partition(data: Interactions, split: Split):
    parts = [pairs(p.matrix) for p in (split.train, split.valid, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == pairs(data.matrix)
    for p in (split.train, split.valid, split.test):
        assert p.item_ids is data.item_ids and p.user_ids is data.user_ids
        assert p.matrix.has_canonical_format
    if data.timestamps is not None:  # timestamps follow their pairs
        full = ts_map(data)
        for p in (split.train, split.valid, split.test):
            assert all(full[k] == t for k, t in ts_map(p).items())


# ---------------------------------------------------------------------- ratio_split
def test_ratio_split_hand_checked_sizes():
    # n=10 -> 6/2/2; n=7 -> int(4.2)=4 / int(1.4)=1 / 2; n=5 -> 3/1/1; n=4 < 5 -> all train; n=0
    data = make_data([10, 7, 5, 4, 0])
    split = ratio_split(data, seed=3)
    assert per_user_sizes(split).tolist() == [[6, 2, 2], [4, 1, 2], [3, 1, 1], [4, 0, 0], [0, 0, 0]]
    check_partition(data, split)
    assert split.meta["method"] == "ratio" and split.meta["seed"] == 3
    assert split.meta["ratios"] == [0.6, 0.2, 0.2] and split.meta["n_small_users"] == 1
    assert split.meta["sizes"] == {"train": 17, "valid": 4, "test": 5}
    assert split.train.meta["split_part"] == "train"


def test_ratio_split_drop_small_users():
    data = make_data([10, 4, 3])
    split = ratio_split(data, seed=0, drop_small_users=True)
    assert per_user_sizes(split).tolist() == [[6, 2, 2], [0, 0, 0], [0, 0, 0]]
    assert split.meta["n_dropped_pairs"] == 7 and split.meta["n_small_users"] == 2


def slow_ratio_split(data: Interactions, ratios, seed, min_positives):
    """Independent per-user implementation of the documented rule: key = rng.random(nnz) in CSR
    order, each user's items sorted by key, first int(r0*n) train, next int(r1*n) valid."""
    key = np.random.default_rng(seed).random(data.nnz).tolist()
    m = data.matrix
    out = {"train": set(), "valid": set(), "test": set()}
    for u in range(data.n_users):
        lo, hi = int(m.indptr[u]), int(m.indptr[u + 1])
        entries = sorted(range(lo, hi), key=lambda j: key[j])
        n = hi - lo
        n_tr, n_va = int(ratios[0] * n), int(ratios[1] * n)
        for p, j in enumerate(entries):
            name = "train" if n < min_positives or p < n_tr else ("valid" if p < n_tr + n_va else "test")
            out[name].add((u, int(m.indices[j])))
    return out


@pytest.mark.parametrize("seed,ratios", [(0, (0.6, 0.2, 0.2)), (5, (0.5, 0.3, 0.2)), (9, (0.7, 0.1, 0.2))])
def test_ratio_split_matches_slow_implementation(seed, ratios):
    rng = np.random.default_rng(seed)
    data = make_data(rng.integers(0, 40, size=60).tolist(), n_items=50, seed=seed)
    split = ratio_split(data, ratios, seed=seed)
    slow = slow_ratio_split(data, ratios, seed, 5)
    for name in ("train", "valid", "test"):
        assert pairs(getattr(split, name).matrix) == slow[name], name
    check_partition(data, split)


def test_ratio_split_deterministic_and_seed_dependent():
    data = make_data([30] * 20, n_items=60)
    a, b, c = ratio_split(data, seed=1), ratio_split(data, seed=1), ratio_split(data, seed=2)
    for name in ("train", "valid", "test"):
        assert pairs(getattr(a, name).matrix) == pairs(getattr(b, name).matrix)
    assert pairs(a.test.matrix) != pairs(c.test.matrix)
    assert per_user_sizes(a).tolist() == per_user_sizes(c).tolist()


@pytest.mark.parametrize("bad", [(0.6, 0.2), (0.6, 0.3, 0.2), (0.8, 0.2, 0.0), (1.2, -0.1, -0.1), "abc"])
def test_ratio_split_bad_ratios(bad):
    with pytest.raises(ValueError, match="ratios"):
        ratio_split(make_data([10]), bad)


def test_ratio_split_without_timestamps():
    data = make_data([10, 8], timestamps=False)
    split = ratio_split(data)
    assert split.train.timestamps is None and split.test.timestamps is None
    check_partition(data, split)


# ---------------------------------------------------------------------- leave_k_out
def test_leave_latest_picks_max_timestamps():
    data = make_data([10, 6, 2, 3])
    split = leave_k_out(data, k=2, mode="latest", valid_k=1)
    check_partition(data, split)
    m, ts = data.matrix, data.timestamps
    for u in range(data.n_users):
        lo, hi = m.indptr[u], m.indptr[u + 1]
        by_time = [int(i) for _, i in sorted(zip(ts[lo:hi].tolist(), m.indices[lo:hi].tolist()))]
        test, valid = set(split.test.matrix[u].indices), set(split.valid.matrix[u].indices)
        if hi - lo >= 4:  # k + valid_k + 1
            assert test == set(by_time[-2:]) and valid == {by_time[-3]}
        else:  # too few items: all in train
            assert not test and not valid
    assert split.meta["n_small_users"] == 2 and split.meta["method"] == "leave_k_out_latest"


def test_leave_k_out_random_sizes_and_determinism():
    data = make_data([10, 6, 1], timestamps=False)
    a = leave_k_out(data, k=1, seed=4)
    assert per_user_sizes(a).tolist() == [[8, 1, 1], [4, 1, 1], [1, 0, 0]]
    check_partition(data, a)
    b = leave_k_out(data, k=1, seed=4)
    assert pairs(a.test.matrix) == pairs(b.test.matrix)
    others = [pairs(leave_k_out(data, k=1, seed=s).test.matrix) for s in range(5, 10)]
    assert any(o != pairs(a.test.matrix) for o in others)
    z = leave_k_out(data, k=2, valid_k=0)
    assert per_user_sizes(z).tolist() == [[8, 0, 2], [4, 0, 2], [1, 0, 0]]


def test_leave_k_out_errors():
    data = make_data([5], timestamps=False)
    with pytest.raises(ValueError, match="timestamps"):
        leave_k_out(data, mode="latest")
    with pytest.raises(ValueError, match="mode"):
        leave_k_out(data, mode="oldest")
    with pytest.raises(ValueError, match="k must"):
        leave_k_out(data, k=0)
    with pytest.raises(ValueError, match="valid_k"):
        leave_k_out(data, valid_k=-1)


# ---------------------------------------------------------------------- temporal_split
def test_temporal_split_quantile_cuts():
    # 20 interactions with timestamps 1000, 1010, ..., 1190: t1 = s[16] = 1160, t2 = s[18] = 1180
    data = make_data([8, 7, 5])
    split = temporal_split(data)
    assert split.meta["cuts"] == [1160, 1180]
    assert split.sizes() == {"train": 16, "valid": 2, "test": 2}
    check_partition(data, split)
    assert split.train.timestamps.max() < 1160 <= split.valid.timestamps.min()
    assert split.valid.timestamps.max() < 1180 <= split.test.timestamps.min()


def test_temporal_split_explicit_cuts_and_errors():
    data = make_data([8, 7, 5])
    split = temporal_split(data, cuts=(1050, 1100))
    assert split.sizes() == {"train": 5, "valid": 5, "test": 10}
    with pytest.raises(ValueError, match="t1 <= t2"):
        temporal_split(data, cuts=(1100, 1050))
    with pytest.raises(ValueError, match="timestamps"):
        temporal_split(make_data([5], timestamps=False))
    with pytest.raises(ValueError, match="ratios"):
        temporal_split(data, (0.5, 0.5, 0.5))
