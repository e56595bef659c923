"""steam-200k (and its authors' split), filmtrust, amazon-beauty and amazon-toys: the parsers on fixtures in
the exact formats of the real files, the real files' checked counts (shared/data/README.md) when present,
and a truncated or edited file as one DataError naming it."""

import re
import shutil
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from fixtures_datasets import SHARED_DATA
from metricrec.cli.main import main
from metricrec.data.datasets import available_datasets, dataset_description, load_dataset, load_dataset_split
from metricrec.data.interactions import DataWarning
from metricrec.data.splits import leave_k_out
from metricrec.errors import DataError

NEW = ("steam-200k", "filmtrust", "amazon-beauty", "amazon-toys")
FILES = {"steam-200k": "users.dat", "filmtrust": "ratings.txt", "amazon-beauty": "Beauty.txt",
         "amazon-toys": "Toys_and_Games.txt"}
# The formats: CollMetric count lists (0-based), FilmTrust's comma lines without a final newline (user 2 rates
# item 1 twice), S3-Rec's "user item item ..." sequences in time order.
STEAM_USERS = "2 0 3\n1 1\n3 2 0 3\n"
FILMTRUST = "1,1,2\n1,2,4\n1,3,3.5\n2,1,1\n2,1,3\n3,2,0.5"
S3REC = "1 1 2 3 4 5\n2 6 7 8 9 10 4 11\n3 4 12 13 2 1\n"


def write(root, name, text, file=None):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (file or FILES[name])).write_text(text)
    return folder


def save_parts(folder, parts, names=("user_train_matrix.npz", "user_val_matrix.npz", "user_test_matrix.npz")):
    for name, dense in zip(names, parts):  # as the authors saved them: COO of float64 ones
        sp.save_npz(folder / name, sp.coo_matrix(np.asarray(dense, dtype=np.float64)))


def test_every_data_set_is_registered_with_its_positive_rule():
    assert set(NEW) < set(available_datasets())
    for name in available_datasets():
        assert "positives:" in dataset_description(name)
    assert "every rating" in dataset_description("filmtrust") and "3,757 users" in dataset_description("steam-200k")


# ---------------------------------------------------------------- fixtures (no shared data needed)
def test_steam_users_dat_fixture(tmp_path):
    write(tmp_path, "steam-200k", STEAM_USERS)
    x = load_dataset("steam-200k", tmp_path, verify=False)
    assert x.shape == (3, 4) and x.nnz == 6 and x.meta["n_duplicates"] == 0
    assert x.matrix.toarray().tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 1]]
    assert x.timestamps is None and x.meta["dataset"] == "steam-200k"
    with pytest.raises(DataError, match="steam-200k has no ratings"):
        load_dataset("steam-200k", tmp_path, verify=False, min_rating=4)


def test_steam_split_fixture_is_read_without_pickle_and_checked(tmp_path):
    folder = write(tmp_path, "steam-200k", STEAM_USERS)
    train, valid, test = [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]], [[0, 0, 0, 1], [0] * 4, [0, 0, 1, 0]], \
        [[0] * 4, [0] * 4, [0] * 4]
    save_parts(folder, (train, valid, test))
    s = load_dataset_split("steam-200k", tmp_path, verify=False)
    assert s.sizes() == {"train": 4, "valid": 2, "test": 0} and s.meta["method"] == "predefined"
    assert s.train.matrix.toarray().tolist() == train and s.valid.matrix.toarray().tolist() == valid
    assert s.train.shape == (3, 4) and s.meta["verified"] == []

    save_parts(folder, (train, valid, [[0, 0, 0, 1], [0] * 4, [0] * 4]))  # (0, 3) in valid and test
    with pytest.raises(DataError, match=r"user_val_matrix\.npz and .*user_test_matrix\.npz share 1 \(user, game\)"):
        load_dataset_split("steam-200k", tmp_path, verify=False)
    save_parts(folder, (train, [[0, 0, 0, 1], [0] * 4, [0] * 4], test))  # (2, 2) in no part
    with pytest.raises(DataError, match="differ from users.dat in 1 .*parts 5 pairs, users.dat 6"):
        load_dataset_split("steam-200k", tmp_path, verify=False)
    sp.save_npz(folder / "user_test_matrix.npz", sp.coo_matrix(np.ones((2, 4))))
    with pytest.raises(DataError, match=r"user_test_matrix\.npz: shape \(2, 4\), but users\.dat gives \(3, 4\)"):
        load_dataset_split("steam-200k", tmp_path, verify=False)
    np.savez(folder / "user_test_matrix.npz", format=np.array([{"x": 1}], dtype=object))  # needs pickle to load
    with pytest.raises(DataError, match=r"user_test_matrix\.npz: not a scipy sparse \.npz archive.*allow_pickle"):
        load_dataset_split("steam-200k", tmp_path, verify=False)
    (folder / "user_test_matrix.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing user_test_matrix\.npz in"):
        load_dataset_split("steam-200k", tmp_path, verify=False)
    with pytest.raises(ValueError, match="'filmtrust' ships no predefined split.*steam-200k"):
        load_dataset_split("filmtrust", tmp_path)


def test_filmtrust_fixture_thresholds_and_counts_duplicates(tmp_path):
    write(tmp_path, "filmtrust", FILMTRUST)
    with pytest.warns(DataWarning, match="ratings.txt: 1 duplicate"):
        x = load_dataset("filmtrust", tmp_path, verify=False)
    assert x.user_ids.tolist() == [1, 2, 3] and x.item_ids.tolist() == [1, 2, 3]
    assert x.matrix.toarray().tolist() == [[1, 1, 1], [1, 0, 0], [0, 1, 0]]  # every rating, 0.5 included
    assert x.meta["n_ratings"] == 6 and x.meta["n_positives"] == 5 and x.meta["n_duplicates"] == 1
    assert x.meta["min_rating"] == 0.5
    y = load_dataset("filmtrust", tmp_path, verify=False, min_rating=3)
    assert y.shape == (3, 3)  # the universe is every rated id: a threshold never changes the shape
    assert y.matrix.toarray().tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]] and y.meta["n_duplicates"] == 0


def test_filmtrust_bad_line_names_file_and_line(tmp_path):
    write(tmp_path, "filmtrust", "1,1,2\n1,2,four")
    with pytest.raises(ValueError, match=r"ratings\.txt, line 2: rating 'four' is not a number"):
        load_dataset("filmtrust", tmp_path, verify=False)


def test_s3rec_fixture_keeps_the_order_as_timestamps(tmp_path):
    write(tmp_path, "amazon-beauty", S3REC)
    x = load_dataset("amazon-beauty", tmp_path, verify=False)
    assert x.user_ids.tolist() == [1, 2, 3] and x.item_ids.tolist() == list(range(1, 14))
    assert x.nnz == 17 and x.meta["n_duplicates"] == 0
    row = x.matrix.indptr
    by_user = [dict(zip(x.item_ids[x.matrix.indices[row[u]:row[u + 1]]].tolist(),
                        x.timestamps[row[u]:row[u + 1]].tolist())) for u in range(3)]
    assert by_user[2] == {4: 0, 12: 1, 13: 2, 2: 3, 1: 4}  # position in the sequence
    split = leave_k_out(x, 1, mode="latest")
    test_items = [x.item_ids[split.test.matrix[u].indices].tolist() for u in range(3)]
    valid_items = [x.item_ids[split.valid.matrix[u].indices].tolist() for u in range(3)]
    assert test_items == [[5], [11], [1]] and valid_items == [[4], [4], [2]]


def test_s3rec_bad_files_name_file_and_line(tmp_path):
    write(tmp_path, "amazon-toys", "1 1 2\n2 3 x\n")
    with pytest.raises(DataError, match=r"Toys_and_Games\.txt, line 2: 'x' is not an integer"):
        load_dataset("amazon-toys", tmp_path, verify=False)
    write(tmp_path, "amazon-toys", "1 1 2\n2 3 4\n1 5\n")
    with pytest.raises(DataError, match=r"Toys_and_Games\.txt, line 3: user 1 already has line 1"):
        load_dataset("amazon-toys", tmp_path, verify=False)
    with pytest.raises(DataError, match="amazon-toys has no ratings"):
        load_dataset("amazon-toys", tmp_path, verify=False, min_rating=2)


@pytest.mark.parametrize("name,text", [("steam-200k", STEAM_USERS), ("filmtrust", FILMTRUST),
                                       ("amazon-beauty", S3REC), ("amazon-toys", S3REC)])
def test_a_file_other_than_the_official_one_is_a_data_error(tmp_path, name, text):
    folder = write(tmp_path, name, text)
    where = re.escape(str(folder / FILES[name]))
    with pytest.raises(DataError, match=rf"{where}: {len(text)} bytes, but the official {name} {FILES[name]} "
                                        r"has [0-9,]+ \(truncated.*--no-verify"):
        load_dataset(name, tmp_path)


def test_missing_files_are_named(tmp_path):
    for name in NEW:
        with pytest.raises(FileNotFoundError, match=rf"data set '{name}': missing {FILES[name]} in"):
            load_dataset(name, tmp_path)


# ---------------------------------------------------------------- real data (skipped when absent)
def needs(name):
    return pytest.mark.skipif(not (SHARED_DATA / name / FILES[name]).is_file(), reason=f"shared {name} absent")


@needs("steam-200k")
def test_real_steam_200k_and_its_split():
    x = load_dataset("steam-200k", SHARED_DATA)
    assert x.shape == (3757, 5113) and x.nnz == 115_139 and x.meta["n_duplicates"] == 0
    assert (x.matrix.getnnz(axis=1) > 0).all() and (x.matrix.getnnz(axis=0) > 0).all()
    s = load_dataset_split("steam-200k", SHARED_DATA)
    assert s.sizes() == {"train": 67_653, "valid": 21_728, "test": 25_758}
    assert s.meta["verified"] == ["user_train_matrix.npz", "user_val_matrix.npz", "user_test_matrix.npz"]
    union = s.train.matrix + s.valid.matrix + s.test.matrix
    assert union.max() == 1 and (union != x.matrix).nnz == 0  # disjoint, and exactly users.dat


@needs("filmtrust")
def test_real_filmtrust():
    with pytest.warns(DataWarning, match="3 duplicate"):
        x = load_dataset("filmtrust", SHARED_DATA)
    assert x.shape == (1508, 2071) and x.meta["n_ratings"] == 35_497
    assert x.nnz == x.meta["n_positives"] == 35_494 and x.meta["n_duplicates"] == 3
    lines_308 = sum(line.startswith("308,") for line in (SHARED_DATA / "filmtrust" / "ratings.txt").open())
    assert x.matrix[x.user_index(308)].nnz == lines_308 - 3  # items 207, 235 and 12 rated twice: once each
    with pytest.warns(DataWarning):
        assert load_dataset("filmtrust", SHARED_DATA, min_rating=3).nnz == 24_188


@pytest.mark.parametrize("name,counts", [("amazon-beauty", (22_363, 12_101, 198_502)),
                                         ("amazon-toys", (19_412, 11_924, 167_597))])
def test_real_s3rec(name, counts):
    if not (SHARED_DATA / name / FILES[name]).is_file():
        pytest.skip(f"shared {name} absent")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # no repeated pair in Beauty and Toys
        x = load_dataset(name, SHARED_DATA)
    assert (x.n_users, x.n_items, x.nnz) == counts and x.meta["n_duplicates"] == 0
    assert x.user_ids.tolist() == list(range(1, counts[0] + 1)) and x.item_ids.tolist() == list(range(1, counts[1] + 1))
    assert x.matrix.getnnz(axis=1).min() >= 5  # 5-core
    assert x.timestamps.min() == 0 and x.timestamps.max() == x.matrix.getnnz(axis=1).max() - 1


@pytest.mark.parametrize("name", NEW)
def test_real_edited_or_truncated_copy_is_a_data_error(tmp_path, name):
    if not (SHARED_DATA / name / FILES[name]).is_file():
        pytest.skip(f"shared {name} absent")
    shutil.copytree(SHARED_DATA / name, tmp_path / name)
    path = tmp_path / name / FILES[name]
    raw = bytearray(path.read_bytes())
    raw[0] = ord("7")  # the first id (1 or 2 in each file): same size, other content
    path.write_bytes(bytes(raw))
    where = re.escape(str(path))
    with pytest.raises(DataError, match=rf"{where}: sha256 \w+ differs from the official {name} {FILES[name]}"):
        load_dataset(name, tmp_path)
    path.write_bytes(bytes(raw[:raw.rindex(b"\n", 0, len(raw) // 2) + 1]))  # whole lines
    with pytest.raises(DataError, match=rf"{where}: [0-9,]+ bytes, but the official .* \(truncated"):
        load_dataset(name, tmp_path)


@needs("steam-200k")
def test_real_steam_edited_split_file_is_a_data_error(tmp_path):
    shutil.copytree(SHARED_DATA / "steam-200k", tmp_path / "steam-200k")
    path = tmp_path / "steam-200k" / "user_val_matrix.npz"
    raw = bytearray(path.read_bytes())
    raw[-30] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"user_val_matrix\.npz: sha256 \w+ differs from the official steam-200k"):
        load_dataset_split("steam-200k", tmp_path)


@pytest.mark.parametrize("name,lines", [
    ("steam-200k", ["users         3,757", "items         5,113", "interactions  115,139"]),
    ("filmtrust", ["users         1,508", "items         2,071", "ratings       35,497",
                   "positives     35,494 (rating >= 0.5)"]),
    ("amazon-beauty", ["users         22,363", "items         12,101", "interactions  198,502"]),
    ("amazon-toys", ["users         19,412", "items         11,924", "interactions  167,597"]),
])
def test_real_data_stats_cli(name, lines, capsys):
    if not (SHARED_DATA / name / FILES[name]).is_file():
        pytest.skip(f"shared {name} absent")
    assert main(["data", "stats", "--dataset", name, "--data-dir", str(SHARED_DATA), "--no-download"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "files verified" in out[0] and all(line in out for line in lines)


def test_real_ml1m_without_ratings_is_one_line_naming_it(capsys):
    folder = SHARED_DATA / "ml-1m"
    if not (folder / "movies.dat").is_file() or (folder / "ratings.dat").is_file():
        pytest.skip("needs the shared ml-1m folder without ratings.dat")
    with pytest.raises(FileNotFoundError, match=r"'ml-1m': missing ratings\.dat in .*ml-1m and download=False"):
        load_dataset("ml-1m", SHARED_DATA, download=False)
    assert main(["data", "stats", "--dataset", "ml-1m", "--data-dir", str(SHARED_DATA), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ratings.dat" in err and "Traceback" not in err


def test_train_split_predefined_uses_the_published_parts(tmp_path, capsys):
    """``--split predefined``: steam-200k's own parts reach the trainer unchanged (and ``evaluate`` rebuilds
    them); a data set without one, or a flag that would change them, is one clear line."""
    folder = write(tmp_path, "steam-200k", STEAM_USERS)
    train, valid, test = [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], [[0, 0, 0, 1], [0] * 4, [0, 0, 1, 0]], \
        [[0] * 4, [0] * 4, [0, 0, 0, 1]]
    save_parts(folder, (train, valid, test))
    out = tmp_path / "run"
    base = ["train", "--dataset", "steam-200k", "--data-dir", str(tmp_path), "--no-download", "--no-verify",
            "--factors", "4", "--epochs", "2", "--no-progress", "--out", str(out)]
    assert main(base + ["--split", "predefined"]) == 0
    import json
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["split"]["method"] == "predefined" and report["data"]["args"]["split"] == "predefined"
    assert report["data"]["sizes"] == {"train": 3, "valid": 2, "test": 1}
    assert main(["evaluate", "--model", str(out)]) == 0
    capsys.readouterr()
    write(tmp_path, "filmtrust", FILMTRUST)
    for argv, match in (
            (["train", "--dataset", "filmtrust", "--data-dir", str(tmp_path), "--no-verify", "--split", "predefined",
              "--out", str(tmp_path / "f")], "filmtrust ships no split.*steam-200k"),
            (["train", "--dataset", "steam-200k", "--data-dir", str(tmp_path), "--no-verify", "--split", "predefined",
              "--min-rating", "2", "--out", str(tmp_path / "g")], "steam-200k has no ratings")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(match, err.strip().splitlines()[-1]) and "Traceback" not in err
