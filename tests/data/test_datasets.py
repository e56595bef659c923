import warnings

import numpy as np
import pytest

from fixtures_datasets import SHARED_DATA, write_ml100k, write_ml1m
from metricrec.data.datasets import (
    available_datasets, item_titles, load_dataset, read_item_tags, resolve_data_dir,
)
from metricrec.data.datasets.citeulike import load_citeulike_a
from metricrec.data.datasets.movielens import read_ml1m_movies, read_ml1m_users
from metricrec.data.interactions import DataWarning


def feature_names(feats, row):
    m = feats.matrix
    return set(feats.names[m.indices[m.indptr[row]:m.indptr[row + 1]]].tolist())


# ---------------------------------------------------------------- registry and data dir
def test_available():
    assert available_datasets() == ["amazon-beauty", "amazon-toys", "citeulike-a", "filmtrust", "ml-100k", "ml-1m",
                                    "steam-200k"]
    with pytest.raises(ValueError, match="unknown data set 'ml-20m'.*ml-100k"):
        load_dataset("ml-20m")


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("METRICREC_DATA", str(b))
    assert resolve_data_dir(a) == a
    assert resolve_data_dir() == b
    monkeypatch.delenv("METRICREC_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "metricrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / ".cache" / "metricrec"


def test_missing_explicit_data_dir(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("METRICREC_DATA", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="gone.*METRICREC_DATA"):
        load_dataset("ml-100k")


def test_download_false_names_url_dir_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("ml-1m", tmp_path, download=False)
    msg = str(err.value)
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in msg
    assert str(tmp_path / "ml-1m") in msg and "ratings.dat" in msg and "movies.dat" in msg


def test_citeulike_absent_names_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"users\.dat, item-tag\.dat.*citeulike-a"):
        load_dataset("citeulike-a", tmp_path)


# ---------------------------------------------------------------- MovieLens fixtures
def test_ml1m_fixture(tmp_path):
    write_ml1m(tmp_path)
    x = load_dataset("ml-1m", tmp_path, verify=False)
    assert x.user_ids.tolist() == [1, 2, 3]
    assert x.item_ids.tolist() == [661, 914, 1193, 3408]  # rated movies only (3952 has no rating)
    assert x.matrix.toarray().tolist() == [[0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    assert x.meta["n_ratings"] == 6 and x.meta["n_positives"] == 4 and x.meta["min_rating"] == 4
    assert x.timestamps.tolist() == [978300760, 978298413, 978299039, 978297867]
    assert feature_names(x.item_features, 0) == {"genre=Animation", "genre=Children's", "genre=Musical", "year=1990s"}
    assert feature_names(x.item_features, 1) == {"genre=Musical", "genre=Romance", "year=1960s"}
    assert feature_names(x.user_features, 1) == {"age=56+", "gender=M", "occupation=self-employed"}
    assert load_dataset("ml-1m", tmp_path, min_rating=1, verify=False).nnz == 6
    assert item_titles("ml-1m", tmp_path)[914] == "My Fair Lady (1964)"


def test_ml1m_bad_ratings_line(tmp_path):
    folder = write_ml1m(tmp_path)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 2: expected 4 fields"):
        load_dataset("ml-1m", tmp_path, verify=False)


def test_ml100k_fixture(tmp_path):
    write_ml100k(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # every rated id has a feature row: no warning
        x = load_dataset("ml-100k", tmp_path, verify=False)
    assert x.user_ids.tolist() == [22, 186, 196] and x.item_ids.tolist() == [242, 302]
    assert x.matrix.toarray().tolist() == [[1, 0], [0, 0], [0, 1]]
    assert x.meta["n_ratings"] == 4 and x.meta["n_positives"] == 2
    assert feature_names(x.item_features, 0) == {"genre=Comedy", "year=1990s"}
    assert feature_names(x.user_features, 1) == {"age=35-44", "gender=F", "occupation=executive"}
    assert feature_names(x.user_features, 2) == {"age=45-49", "gender=M", "occupation=writer"}
    assert item_titles("ml-100k", tmp_path)[999] == "Café Nowhere (1989)"


# ---------------------------------------------------------------- citeulike fixtures
def test_citeulike_fixture(tmp_path):
    folder = tmp_path / "citeulike-a"
    folder.mkdir()
    (folder / "users.dat").write_text("2 0 3\n1 1\n0\n2 3 3\n")
    (folder / "item-tag.dat").write_text("1 7\n2 7 9\n0\n1 9\n0\n")
    with pytest.warns(DataWarning, match="1 duplicate"):
        x = load_citeulike_a(folder)
    assert x.shape == (4, 5)
    assert x.matrix.toarray().tolist() == [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0] * 5, [0, 0, 0, 1, 0]]
    assert x.item_features.names.tolist() == ["tag=7", "tag=9"]
    assert x.item_features.matrix.toarray().tolist() == [[1, 0], [1, 1], [0, 0], [0, 1], [0, 0]]
    tags5 = read_item_tags(folder / "item-tag.dat", min_count=2)
    assert tags5.names.tolist() == ["tag=7", "tag=9"]
    assert read_item_tags(folder / "item-tag.dat", min_count=3).n_features == 0


def test_citeulike_bad_count_and_item(tmp_path):
    folder = tmp_path / "citeulike-a"
    folder.mkdir()
    (folder / "item-tag.dat").write_text("0\n0\n")
    (folder / "users.dat").write_text("1 0\n3 0 1\n")
    with pytest.raises(ValueError, match=r"users\.dat, line 2: the count says 3 values but the line has 2"):
        load_citeulike_a(folder)
    (folder / "users.dat").write_text("1 0\n1 5\n")
    with pytest.raises(ValueError, match=r"users\.dat, line 2: item id 5 outside 0\.\.1"):
        load_citeulike_a(folder)
    (folder / "users.dat").write_text("1 0\n1 x\n")
    with pytest.raises(ValueError, match=r"users\.dat, line 2: 'x' is not an integer"):
        load_citeulike_a(folder)


# ---------------------------------------------------------------- real data (skipped when absent)
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} absent")


@needs_shared
def test_real_ml100k():
    x = load_dataset("ml-100k", SHARED_DATA, download=False)
    assert x.shape == (943, 1682)
    assert x.meta["n_ratings"] == 100_000 and x.nnz == x.meta["n_positives"] == 55_375
    assert x.item_features.n_features == 19 + 8  # 19 genres, decades 1920s..1990s
    assert x.item_features.matrix.shape == (1682, 27)
    assert feature_names(x.item_features, 0) == {"genre=Animation", "genre=Children's", "genre=Comedy", "year=1990s"}
    assert x.user_features.matrix.shape[0] == 943
    assert load_dataset("ml-100k", SHARED_DATA, min_rating=1, download=False).nnz == 100_000


@needs_shared
def test_real_citeulike():
    x = load_dataset("citeulike-a", SHARED_DATA)
    assert x.shape == (5551, 16980) and x.nnz == 204_986
    assert x.item_features.n_features == 46_390 and x.item_features.matrix.nnz == 239_253
    assert read_item_tags(SHARED_DATA / "citeulike-a" / "item-tag.dat", min_count=5).n_features < 46_390


@needs_shared
def test_real_ml1m_side_files():
    folder = SHARED_DATA / "ml-1m"
    if not (folder / "movies.dat").is_file():
        pytest.skip("ml-1m movies.dat absent")
    ids, titles, feats = read_ml1m_movies(folder / "movies.dat")
    assert len(ids) == 3883 and ids.max() == 3952 and titles[0] == "Toy Story (1995)"
    assert feats[0] == ["genre=Animation", "genre=Children's", "genre=Comedy", "year=1990s"]
    assert all(any(f.startswith("year=") for f in row) for row in feats)
    uids, ufeats = read_ml1m_users(folder / "users.dat")
    assert np.array_equal(uids, np.arange(1, 6041))
    assert ufeats[0] == ["age=under-18", "gender=F", "occupation=K-12 student"]


def test_ml100k_rated_item_without_features_warns(tmp_path):
    folder = write_ml100k(tmp_path)
    (folder / "u.data").write_text("196\t242\t3\t881250949\n196\t555\t5\t881250950\n")
    with pytest.warns(DataWarning, match="ml-100k items: 1 of 2 ids have no feature row"):
        x = load_dataset("ml-100k", tmp_path, verify=False)
    assert x.item_ids.tolist() == [242, 555]
    assert x.item_features.matrix[1].nnz == 0 and x.item_features.matrix[0].nnz == 2


def test_movielens_side_file_errors_name_file_and_line(tmp_path):
    folder = write_ml100k(tmp_path)
    good = (folder / "u.item").read_bytes()
    (folder / "u.item").write_bytes(good.replace(b"|0|1|0\n", b"|0|2|0\n"))
    with pytest.raises(ValueError, match=r"u\.item, line 2: genre flags must be 0 or 1"):
        load_dataset("ml-100k", tmp_path, verify=False)
    (folder / "u.item").write_bytes(good.replace(b"|0|1|0\n", b"|0|1\n"))
    with pytest.raises(ValueError, match=r"u\.item, line 2: expected 8 fields separated by '\|', got 7"):
        load_dataset("ml-100k", tmp_path, verify=False)
    folder = write_ml1m(tmp_path)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::57::16::70072\n")
    with pytest.raises(ValueError, match=r"users\.dat, line 2: unknown age code 57"):
        read_ml1m_users(folder / "users.dat")
    folder = write_ml1m(tmp_path)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n01::661::3::978302109\n")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 2: user id '01' is not an integer"):
        load_dataset("ml-1m", tmp_path, verify=False)
    (folder / "ratings.dat").write_text("1::1193::five::978300760\n")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 1: rating 'five' is not a number"):
        load_dataset("ml-1m", tmp_path, verify=False)
