"""Data fingerprints: equal for the same data however it is stored, and differences named."""

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.errors import DataError
from metricrec.fingerprint import check_fingerprint, compare_fingerprints, fingerprint


def _data(n_users=30, n_items=20, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    return m, np.arange(100, 100 + n_users, dtype=np.int64), np.array([f"item-{i}" for i in range(n_items)])


def test_identical_data_gives_equal_fingerprints_however_stored():
    m, users, items = _data()
    fp = fingerprint(m, users, items)
    assert json.loads(json.dumps(fp)) == fp  # plain JSON
    assert fp["n_users"] == 30 and fp["n_items"] == 20 and fp["nnz"] == m.nnz
    coo = m.tocoo()
    shuffled = np.random.default_rng(1).permutation(coo.nnz)
    unsorted = sp.csr_matrix((coo.data[shuffled] * 5, (coo.row[shuffled], coo.col[shuffled])), shape=m.shape)
    unsorted.has_sorted_indices = False
    same = [fingerprint(m.copy(), users.copy(), items.copy()),
            fingerprint(unsorted, users.astype(np.int32), items.astype(object)),  # values do not count
            fingerprint(sp.csr_array(m), users.astype(np.uint16), items)]
    assert all(f == fp for f in same) and compare_fingerprints(fp, same[1]) == []
    with_zero = m.copy()
    with_zero.data[0] = 0.0  # an explicit zero is not a pair
    assert fingerprint(with_zero, users, items)["nnz"] == m.nnz - 1


def test_int_and_str_ids_hash_by_their_text_deterministically():
    m = sp.csr_matrix(np.eye(3, dtype=np.float32))
    ints = fingerprint(m, np.array([1, 2, 30], dtype=np.int64), None)
    assert fingerprint(m, np.array(["1", "2", "30"]), None) == ints  # "1" is the id 1 (the id rule)
    assert fingerprint(m, np.array([1, 2, 30], dtype=np.int32), None) == ints
    assert fingerprint(m, np.array([1, 2, 30], dtype=">i8"), None) == ints  # byte order does not count
    assert fingerprint(m, np.array(["01", "2", "30"]), None)["user_ids_sha256"] != ints["user_ids_sha256"]
    assert fingerprint(m, np.array([2, 1, 30]), None)["user_ids_sha256"] != ints["user_ids_sha256"]
    # the canonical form, spelled out: the same digest in every process and on every platform
    assert ints["user_ids_sha256"] == hashlib.sha256(b'["1","2","30"]').hexdigest()
    assert ints["item_ids_sha256"] is None


def test_one_pair_moved_is_named():
    m, users, items = _data()
    moved = m.tolil()
    r, c = m.nonzero()
    free = next(j for j in range(m.shape[1]) if moved[r[0], j] == 0)
    moved[r[0], c[0]] = 0
    moved[r[0], free] = 1
    diffs = compare_fingerprints(fingerprint(m, users, items), fingerprint(sp.csr_matrix(moved), users, items))
    assert diffs == ["training pairs differ (same counts, different pairs)"]


def test_count_and_id_differences_are_named():
    m, users, items = _data()
    fp = fingerprint(m, users, items)
    extra = sp.vstack([m, sp.csr_matrix((1, m.shape[1]), dtype=np.float32)]).tocsr()
    diffs = compare_fingerprints(fp, fingerprint(extra, np.append(users, 999), items))
    assert diffs == ["users: 30 in the model's training data, 31 in this data"]
    more = m.tolil()
    more[0, :] = 1
    assert compare_fingerprints(fp, fingerprint(sp.csr_matrix(more), users, items)) == [
        f"training pairs: {m.nnz} in the model's training data, {sp.csr_matrix(more).nnz} in this data"]
    renamed = items.copy()
    renamed[3] = "item-x"
    assert compare_fingerprints(fp, fingerprint(m, users, renamed)) == ["item ids differ"]
    assert compare_fingerprints(fp, fingerprint(m, users[::-1], items)) == ["user ids differ"]
    assert compare_fingerprints(fp, fingerprint(m, None, None)) == []  # unknown ids are not compared
    older = {k: fp[k] for k in ("n_users", "n_items")}
    assert compare_fingerprints(older, fingerprint(m, users, items)) == []


def test_check_fingerprint_raises_one_line_naming_what_and_the_difference():
    m, users, items = _data()
    fp = fingerprint(m, users, items)
    check_fingerprint(fp, fingerprint(m, users, items), "file a.csv")
    check_fingerprint(None, fp, "file a.csv")  # nothing recorded: nothing to check
    other = fingerprint(m[:, ::-1], users, items)
    with pytest.raises(DataError) as info:
        check_fingerprint(fp, other, "file b.csv")
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in msg
    assert msg.startswith("file b.csv is not the data the model was trained on: training pairs differ")
    assert "train a model on this data" in msg


def test_bad_input_is_refused():
    m, users, items = _data()
    with pytest.raises(TypeError, match="scipy sparse"):
        fingerprint(m.toarray(), users, items)
    with pytest.raises(ValueError, match="user ids: expected 30"):
        fingerprint(m, users[:-1], items)


# ---------------------------------------------------------------------- the CLI refuses other data
def _pairs_csv(path, shift):
    """30 users x 20 items, 6 items per user; ``shift`` moves every user's items (same ids, same counts)."""
    lines = ["user,item"] + [f"u{u},i{(u + 3 * k + shift) % 20}" for u in range(30) for k in range(6)]
    path.write_text("\n".join(lines) + "\n")
    return path


FAST = ["--epochs", "2", "--batch-size", "64", "--factors", "4", "--no-progress", "--threads", "1", "--kernel", "torch"]


def test_evaluate_refuses_a_different_file_of_the_same_shape(tmp_path, monkeypatch, capsys):
    from metricrec.cli.main import main

    monkeypatch.chdir(tmp_path)
    _pairs_csv(tmp_path / "train.csv", 0)
    _pairs_csv(tmp_path / "other.csv", 1)
    assert main(["train", "--interactions", "train.csv", "--user-col", "user", "--item-col", "item",
                 "--out", "run", *FAST]) == 0
    doc = json.loads((tmp_path / "run" / "data.json").read_text())
    assert doc["source"]["path"] == str(tmp_path / "train.csv") and doc["args"]["interactions"] == doc["source"]["path"]
    assert doc["out"] == str(tmp_path / "run") and doc["train_fingerprint"]["n_users"] == 30
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["source"]["path"] == str(tmp_path / "train.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # data.json holds absolute paths: the run is usable from anywhere
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "run")]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--interactions", str(tmp_path / "train.csv"),
                 "--user-col", "user", "--item-col", "item"]) == 0
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(tmp_path / "run"), "--interactions", str(tmp_path / "other.csv"),
               "--user-col", "user", "--item-col", "item"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "other.csv" in err and "is not the data the model was trained on" in err
    assert "training pairs differ (same counts, different pairs)" in err


def test_the_models_own_fingerprint_is_checked_first(tmp_path):
    import argparse
    from types import SimpleNamespace

    from metricrec.cli.train_exec import _data_for_run
    from metricrec.cli.sources import rebuild

    csv = _pairs_csv(tmp_path / "a.csv", 0)
    args = rebuild({"interactions": str(csv), "user_col": "user", "item_col": "item"})
    args.model = "m"
    m, users, items = _data(30, 20)
    model = SimpleNamespace(data_fingerprint=fingerprint(m, users, items))
    with pytest.raises(DataError, match="a.csv.*(training pairs|user ids|item ids)"):
        _data_for_run(args, {}, model)
    assert isinstance(args, argparse.Namespace)
