import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.data.interactions import DataWarning, Features, Interactions
from metricrec.data.splits import Split
from metricrec.data.split_files import read_split, write_split
from metricrec.errors import DataError


def make_split(user_ids, item_ids, seed=0, with_features=False):
    """Random 3-way disjoint split of a random matrix over the given ids."""
    rng = np.random.default_rng(seed)
    n_u, n_i = len(user_ids), len(item_ids)
    dense = rng.random((n_u, n_i)) < 0.4
    part = rng.integers(0, 3, size=(n_u, n_i))
    feats = Features(sp.identity(n_i, format="csr"), [f"f{k}" for k in range(n_i)]) if with_features else None
    full = Interactions(sp.csr_matrix(dense.astype(np.float32)), np.asarray(user_ids), np.asarray(item_ids),
                        item_features=feats)
    parts = [full.with_matrix(sp.csr_matrix((dense & (part == k)).astype(np.float32))) for k in range(3)]
    return full, Split(*parts, meta={"method": "test"})


def read(paths, **kw):
    return read_split(paths["train"], paths["valid"], paths["test"], **kw)


@pytest.mark.parametrize("ids", [([3, 1, 7, 20], [5, 6, 100, 2, 9]), (["u1", "u2", "x"], ["a", "b", "c", "d"])])
def test_round_trip_identical_matrices(tmp_path, ids):
    full, split = make_split(*ids, with_features=True)
    paths = write_split(split, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["items.csv", "split.json", "test.csv", "train.csv",
                                                       "users.csv", "valid.csv"]
    assert paths["train"].read_text().splitlines()[0] == "user,item"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        back = read(paths, universe=full)
    for name in ("train", "valid", "test"):
        a, b = getattr(split, name), getattr(back, name)
        assert (a.matrix != b.matrix).nnz == 0
        assert a.user_ids.tolist() == b.user_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()
    assert back.train.item_features is full.item_features
    assert back.meta["n_unknown"]["test"]["pairs"] == 0
    assert back.meta["n_overlap"] == {"train&valid": 0, "train&test": 0, "valid&test": 0}
    assert not list((tmp_path / "out").glob(".*")) and not list(tmp_path.glob(".*"))  # no temp files left
    again = read(paths)  # without a universe: the split folder's own id lists, in the same order
    for name in ("train", "valid", "test"):
        assert (getattr(again, name).matrix != getattr(split, name).matrix).nnz == 0
    assert again.train.user_ids.tolist() == list(ids[0]) and again.train.item_ids.tolist() == list(ids[1])
    assert again.meta["universe"] == str(tmp_path / "out" / "split.json")


def test_raw_ids_are_written(tmp_path):
    full, split = make_split([10, 20], [7, 8], seed=3)
    paths = write_split(split, tmp_path)
    lines = set(paths["train"].read_text().splitlines()[1:])
    rows, cols, _ = split.train.to_coo_arrays()
    assert lines == {f"{[10, 20][r]},{[7, 8][c]}" for r, c in zip(rows, cols)}


def test_universe_from_train_file_counts_unknown_users(tmp_path):
    (tmp_path / "tr.csv").write_text("user,item\n1,10\n1,11\n2,10\n")
    (tmp_path / "va.csv").write_text("user,item\n2,11\n3,10\n1,99\n3,99\n")
    (tmp_path / "te.csv").write_text("user,item\n1,10\n")
    with pytest.warns(DataWarning) as rec:
        s = read_split(tmp_path / "tr.csv", tmp_path / "va.csv", tmp_path / "te.csv")
    msgs = [str(w.message) for w in rec]
    assert any("va.csv: 1 user(s) with 2 of its 4 pairs are not in the id universe" in m and "every target is missed"
               in m for m in msgs)
    assert not any("dropped" in m for m in msgs)  # nothing is lost: user 3 is counted, item 99 kept
    assert any("1 (user, item) pairs are in both" in m and "tr.csv" in m and "te.csv" in m for m in msgs)
    # users: the training file's; items: those of all three files (item 99 has no training pair: it stays)
    assert s.train.user_ids.tolist() == [1, 2] and s.train.item_ids.tolist() == [10, 11, 99]
    assert s.valid.matrix.toarray().tolist() == [[0, 0, 1], [0, 1, 0]]
    assert s.meta["n_unknown"]["valid"] == {"pairs": 2, "users": 1, "items": 0}
    assert s.meta["unseen_users"] == {"valid": 1, "test": 0}
    assert s.meta["universe"] == "files"
    assert s.meta["n_unknown"]["test"]["pairs"] == 0
    assert s.meta["n_overlap"]["train&test"] == 1


def test_string_ids_against_int_universe(tmp_path):
    full, split = make_split([1, 2, 3], [4, 5, 6], seed=1)
    paths = write_split(split, tmp_path / "w")
    for p in ("train", "valid", "test"):  # the files alone (no split.json): a split made elsewhere
        (tmp_path / f"{p}.csv").write_bytes(paths[p].read_bytes())
    with open(tmp_path / "test.csv", "a") as fh:
        fh.write("abc,4\n")
    with pytest.warns(DataWarning, match=r"test\.csv: 1 user\(s\) with 1 of its \d+ pairs are not in the id universe"):
        back = read_split(tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "test.csv", universe=full)
    assert (back.test.matrix != split.test.matrix).nnz == 0 and back.meta["unseen_users"]["test"] == 1


def test_edited_or_mixed_parts_are_refused(tmp_path):
    full, split = make_split([1, 2, 3], [4, 5, 6], seed=1)
    paths = write_split(split, tmp_path / "a")
    with open(paths["test"], "a") as fh:
        fh.write("3,4\n")
    with pytest.raises(DataError, match=r"a/test\.csv: \d+ bytes, but .*split\.json lists \d+: this file was changed"):
        read(paths)
    other = write_split(make_split([1, 2, 3], [4, 5, 6], seed=2)[1], tmp_path / "b")
    paths = write_split(split, tmp_path / "a")  # replaces the edited folder as one unit
    paths["test"].write_bytes(other["test"].read_bytes())  # a part of another split, copied in
    with pytest.raises(DataError, match=r"test\.csv: .*comes from another split"):
        read(paths)
    paths = write_split(split, tmp_path / "a")
    with pytest.warns(DataWarning) as rec:
        read_split(paths["train"], paths["valid"], other["test"])
    assert any("split.json is not used: the three files given are not its" in str(w.message) for w in rec)


def test_write_split_refuses_a_folder_with_other_files(tmp_path):
    _, split = make_split([1, 2], [3, 4], seed=0)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds other files \(notes\.txt\)"):
        write_split(split, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        write_split(split, tmp_path / "f")


def test_empty_parts_round_trip(tmp_path):
    full, split = make_split([1, 2], [3, 4], seed=2)
    empty = full.with_matrix(sp.csr_matrix(full.shape, dtype=np.float32))
    split = Split(split.train, empty, empty)
    paths = write_split(split, tmp_path)
    back = read(paths, universe=full)
    assert back.valid.nnz == 0 and back.test.nnz == 0 and back.train.nnz == split.train.nnz


def test_ids_with_commas_and_quotes_round_trip_quoted(tmp_path):
    full, split = make_split(['a,b', 'say "hi"', "c"], ["x", "007", "7"], seed=0)
    paths = write_split(split, tmp_path)
    assert '"a,b"' in paths["train"].read_text() + paths["valid"].read_text() + paths["test"].read_text()
    back = read(paths, universe=full)
    for name in ("train", "valid", "test"):
        assert (getattr(back, name).matrix != getattr(split, name).matrix).nnz == 0
    _, nl = make_split(["a\nb"], ["x"], seed=0)
    with pytest.raises(ValueError, match="line break"):
        write_split(nl, tmp_path / "nl")


def test_zero_padded_ids_do_not_match_integers(tmp_path):
    (tmp_path / "tr.csv").write_text("user,item\n7,1\n8,1\n")
    (tmp_path / "va.csv").write_text("user,item\n007,1\n7,1\n")
    (tmp_path / "te.csv").write_text("user,item\n8,01\n")
    with pytest.warns(DataWarning) as rec:
        s = read_split(tmp_path / "tr.csv", tmp_path / "va.csv", tmp_path / "te.csv")
    assert s.meta["n_unknown"]["valid"] == {"pairs": 1, "users": 1, "items": 0}
    assert s.meta["n_unknown"]["test"] == {"pairs": 0, "users": 0, "items": 0}
    assert s.train.item_ids.tolist() == ["01", "1"]  # item "01" of the test file is not item 1: its own column
    assert s.valid.matrix.toarray().tolist() == [[0, 1], [0, 0]]
    assert s.test.matrix.toarray().tolist() == [[0, 0], [1, 0]]
    assert any("va.csv: 1 user(s) with 1 of its 2 pairs are not in the id universe" in str(w.message) for w in rec)


def test_headerless_files_by_position_and_named_header_required(tmp_path):
    for name, text in (("tr.csv", "1,10\n2,11\n"), ("va.csv", "1,11\n"), ("te.csv", "2,10\n")):
        (tmp_path / name).write_text(text)
    files = [tmp_path / n for n in ("tr.csv", "va.csv", "te.csv")]
    s = read_split(*files, user_col=0, item_col=1)
    assert s.sizes() == {"train": 2, "valid": 1, "test": 1} and s.train.user_ids.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"tr\.csv: the header has no column 'user'.*\['1', '10'\]"):
        read_split(*files)


def test_test_items_never_in_train_count_as_misses(tmp_path):
    import torch

    from metricrec.metrics import evaluate_part

    (tmp_path / "tr.csv").write_text("user,item\nu1,a\nu1,b\nu2,a\nu2,c\n")
    (tmp_path / "va.csv").write_text("user,item\nu2,b\n")
    (tmp_path / "te.csv").write_text("user,item\nu1,c\nu1,z\n")  # z: in no training pair
    s = read_split(tmp_path / "tr.csv", tmp_path / "va.csv", tmp_path / "te.csv")
    assert s.train.item_ids.tolist() == ["a", "b", "c", "z"] and s.sizes()["test"] == 2

    def scorer(users):  # c first, z (untrained) last
        return torch.tensor([[0.0, 0.0, 1.0, -1.0]] * len(users))

    metrics = evaluate_part(scorer, s, "test", ks=(1,))
    assert metrics["recall@1"] == 0.5  # 1 hit of 2 targets: z counts as a miss (dropping it would give 1.0)


def _unseen_split(tmp_path):
    """Train u1, u2 over items a, b, c, d; valid: u2 -> c and u7, who has no training pair; test: u1 -> c,
    u2 -> b, and users u8 (two pairs) and u9 (one) who have no training pair either."""
    (tmp_path / "tr.csv").write_text("user,item\nu1,a\nu1,d\nu2,a\n")
    (tmp_path / "va.csv").write_text("user,item\nu2,c\nu7,a\n")
    (tmp_path / "te.csv").write_text("user,item\nu1,c\nu2,b\nu8,a\nu8,b\nu9,c\n")
    with pytest.warns(DataWarning) as rec:
        s = read_split(tmp_path / "tr.csv", tmp_path / "va.csv", tmp_path / "te.csv")
    return s, [str(w.message) for w in rec]


def test_test_users_never_in_train_count_as_misses(tmp_path):
    import torch

    from metricrec.metrics import evaluate, evaluate_part

    s, msgs = _unseen_split(tmp_path)
    assert s.meta["unseen_users"] == {"valid": 1, "test": 2}
    assert s.meta["n_unknown"]["test"] == {"pairs": 3, "users": 2, "items": 0}
    assert any("te.csv: 2 user(s) with 3 of its 5 pairs are not in the id universe" in m for m in msgs)
    assert any("va.csv: 1 user(s) with 1 of its 2 pairs" in m for m in msgs)
    assert s.train.user_ids.tolist() == ["u1", "u2"] and s.train.item_ids.tolist() == ["a", "b", "c", "d"]
    assert s.sizes() == {"train": 3, "valid": 1, "test": 2}

    def scorer(users):  # c, d, b, a for everyone
        return torch.tensor([[0.0, 1.0, 3.0, 2.0]] * len(users))

    ranked = evaluate(scorer, s.test.matrix, (s.train.matrix + s.valid.matrix).tocsr(), ks=(1,))
    # u1 (a, d excluded) hits c; u2 (a, c excluded) ranks d above its target b: a miss, b at rank 2
    assert ranked["recall@1"] == 0.5 and ranked["mrr"] == 0.75 and ranked["n_users"] == 2
    test = evaluate_part(scorer, s, "test", ks=(1,))
    # 1 hit among 4 evaluated users (exact in binary: 0.5 * 2 / 4); dropping u8 and u9 gave 0.5
    assert test["recall@1"] == 0.25 and test["mrr"] == (1.0 + 0.5) / 4
    assert test["n_users"] == 4 and test["n_unseen_users"] == 2
    valid = evaluate_part(scorer, s, "valid", ks=(1,))
    assert valid["recall@1"] == 0.5 and valid["n_users"] == 2 and valid["n_unseen_users"] == 1  # u2 hits c
    only = evaluate_part(scorer, s, "test", ks=(1,), users=np.array([0]))  # asked-for users only
    assert only["recall@1"] == 1.0 and only["n_users"] == 1 and "n_unseen_users" not in only


def test_unknown_items_of_known_users_are_dropped_against_a_given_universe(tmp_path):
    full, split = make_split([1, 2, 3], [4, 5, 6], seed=1)
    paths = write_split(split, tmp_path / "w")
    for p in ("train", "valid", "test"):  # the files alone (no split.json)
        (tmp_path / f"{p}.csv").write_bytes(paths[p].read_bytes())
    with open(tmp_path / "test.csv", "a") as fh:
        fh.write("1,99\n")  # item 99 is not in the data set given as the universe
    with pytest.warns(DataWarning, match=r"test\.csv: dropped 1 of \d+ pairs .*\(1 unknown items\)"):
        back = read_split(tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "test.csv", universe=full)
    assert back.meta["unseen_users"]["test"] == 0 and back.meta["n_unknown"]["test"]["pairs"] == 1
    assert (back.test.matrix != split.test.matrix).nnz == 0


def test_train_command_counts_test_users_unknown_to_train(tmp_path, capsys):
    import json

    from metricrec.cli.main import main
    from metricrec.metrics import embedding_scorer, evaluate
    from metricrec.models.base import load_model

    rng = np.random.default_rng(0)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(40):
        items = rng.choice(60, 10, replace=False)
        rows["train"] += [(u, i) for i in items[:6]]
        rows["valid"] += [(u, i) for i in items[6:8]]
        rows["test"] += [(u, i) for i in items[8:]]
    rows["test"] += [(900, 1), (900, 2), (901, 3), (902, 4)]  # three users with no training pair
    files = {}
    for part, pairs in rows.items():
        files[part] = tmp_path / f"{part}.csv"
        files[part].write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs))
    out = tmp_path / "run"
    assert main(["train", "--train", str(files["train"]), "--valid", str(files["valid"]), "--test", str(files["test"]),
                 "--out", str(out), "--epochs", "2", "--factors", "8", "--no-progress", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "test.csv: 3 user(s) with 4 of its 84 pairs are not in the id universe" in err
    test = json.loads((out / "report.json").read_text())["test"]
    assert test["n_users"] == 43 and test["n_unseen_users"] == 3
    model = load_model(out / "model")
    split = read_split(files["train"], files["valid"], files["test"])
    seen = (split.train.matrix + split.valid.matrix).tocsr()
    ranked = evaluate(embedding_scorer(model.user_embeddings, model.item_embeddings), split.test.matrix, seen,
                      ks=(50,), metrics=("recall",))
    assert ranked["n_users"] == 40
    # the same scores and ranking; only the average differs: 40 ranked users' mean times 40 / 43
    assert test["recall@50"] == pytest.approx(ranked["recall@50"] * 40 / 43, abs=1e-12)
