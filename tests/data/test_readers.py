import time
import warnings

import numpy as np
import pytest

from metricrec.data.interactions import DataWarning
from metricrec.data.readers import from_dataframe, read_delimited, read_inter, read_interactions, read_parquet


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def dense(x):
    return x.matrix.toarray()


def test_movielens_1m_format_with_threshold(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n\n\n")
    x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=4)
    assert x.user_ids.tolist() == [1, 2]
    assert x.item_ids.tolist() == [661, 1193]  # ids seen below the threshold stay in the universe
    assert dense(x).tolist() == [[0, 1], [0, 1]]
    assert x.timestamps.tolist() == [978300760, 978298413]
    assert x.meta["n_ratings"] == 3


def test_header_by_name_and_string_ids(tmp_path):
    p = write(tmp_path, "x.csv", "rating,user,item\n5,alice,i1\n2,bob,i2\n3,alice,i2\n")
    x = read_delimited(p, user_col="user", item_col="item", rating_col="rating", binary=False)
    assert x.user_ids.tolist() == ["alice", "bob"]
    assert x.item_ids.dtype.kind == "U"
    assert dense(x).tolist() == [[5, 3], [0, 2]]


@pytest.mark.parametrize("sep", ["\t", "|", ",", "::"])
def test_header_inferred_from_non_numeric_rating(tmp_path, sep):
    p = write(tmp_path, "x.txt", sep.join(["u", "i", "r"]) + "\n" + sep.join(["1", "2", "4.5"]) + "\n")
    x = read_delimited(p, sep=sep, rating_col=2, binary=False)
    assert x.nnz == 1 and dense(x)[0, 0] == 4.5


def test_header_inferred_from_id_names_and_absent(tmp_path):
    p = write(tmp_path, "a.csv", "user,item\nu1,i1\nu2,i1\n")
    assert read_delimited(p).user_ids.tolist() == ["u1", "u2"]
    q = write(tmp_path, "b.csv", "3,4\n5,6\n")
    x = read_delimited(q)
    assert x.user_ids.tolist() == [3, 5] and x.nnz == 2


def test_mixed_ids_become_strings(tmp_path):
    p = write(tmp_path, "x.csv", "1,10\nx7,10\n")
    x = read_delimited(p, header=False)
    assert x.user_ids.tolist() == ["1", "x7"]
    assert x.item_ids.tolist() == [10]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1,2,3\n4,5\n", 2, "expected 3 fields"),
        ("1,2,3\n4,5,6,7\n", 2, "got 4 fields"),
        ("1,2,3\n\n4,5,6\n", 2, "blank line"),
        ("1,2,3\n4,5,abc\n", 2, "'abc' is not a number"),
        ("1,2,3\n4,5,6\n7,8,nan\n", 3, "NaN"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError) as err:
        read_delimited(p, rating_col=2, header=False)
    msg = str(err.value)
    assert str(p) in msg and f"line {line}" in msg and words in msg


def test_bad_line_number_counts_header(tmp_path):
    p = write(tmp_path, "bad.csv", "user,item,rating\n1,2,3\n1,3,x\n")
    with pytest.raises(ValueError, match=r"line 3: rating 'x'"):
        read_delimited(p, rating_col="rating")


def test_bad_timestamp(tmp_path):
    p = write(tmp_path, "bad.tsv", "1\t2\t5\t100\n1\t3\t5\tsoon\n")
    with pytest.raises(ValueError, match=r"line 2: timestamp 'soon'"):
        read_delimited(p, sep="\t", rating_col=2, timestamp_col=3)


def test_float_timestamps_are_floored(tmp_path):
    p = write(tmp_path, "x.tsv", "1\t2\t5\t100.7\n1\t3\t5\t200.0\n")
    x = read_delimited(p, sep="\t", rating_col=2, timestamp_col=3)
    assert x.timestamps.tolist() == [100, 200]


@pytest.mark.parametrize("text", ["", "\n\n", "user,item,rating\n"])
def test_empty_file(tmp_path, text):
    p = write(tmp_path, "empty.csv", text)
    with pytest.raises(ValueError, match="empty.csv.*no interaction lines"):
        read_delimited(p, rating_col=2)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_delimited("/nonexistent/nope.csv")


def test_duplicates_warn_with_file_name(tmp_path):
    p = write(tmp_path, "dup.csv", "1,2,3\n1,2,5\n2,2,1\n")
    with pytest.warns(DataWarning, match=r"dup\.csv: 1 duplicate"):
        x = read_delimited(p, rating_col=2, binary=False)
    assert dense(x).tolist() == [[5], [1]]


def test_crlf_and_undecodable(tmp_path):
    p = write(tmp_path, "crlf.csv", "1,2\r\n3,4\r\n")
    assert read_delimited(p).nnz == 2
    q = tmp_path / "latin.csv"
    q.write_bytes(b"1,caf\xe9\n2,tea\n")
    with pytest.raises(ValueError, match=r"latin\.csv, line 1: cannot decode"):
        read_delimited(q)
    assert read_delimited(q, encoding="iso-8859-1").item_ids.tolist() == ["café", "tea"]


def test_fixed_universe(tmp_path):
    p = write(tmp_path, "x.csv", "1,2\n")
    x = read_delimited(p, user_ids=[0, 1, 2], item_ids=[2, 9])
    assert dense(x).tolist() == [[0, 0], [1, 0], [0, 0]]
    with pytest.raises(KeyError, match="unknown user"):
        read_delimited(p, user_ids=[5])


def test_agrees_with_slow_reference_on_random_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    u, i, r = rng.integers(0, 300, n), rng.integers(0, 200, n), rng.integers(1, 6, n)
    p = write(tmp_path, "r.dat", "".join(f"{a}::{b}::{c}::{k}\n" for k, (a, b, c) in enumerate(zip(u, i, r))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=3, binary=False)
    ref = {}
    for a, b, c in zip(u, i, r):  # slow reference: max rating per pair among kept ones
        if c >= 3:
            ref[(a, b)] = max(ref.get((a, b), 0), c)
    got = {(x.user_ids[a], x.item_ids[b]): v for a, b, v in zip(*x.to_coo_arrays())}
    assert got == ref


def test_one_million_lines_is_fast(tmp_path):
    rng = np.random.default_rng(1)
    n = 1_000_000
    cols = [rng.integers(1, 6041, n), rng.integers(1, 3953, n), rng.integers(1, 6, n), rng.integers(9e8, 1e9, n)]
    text = "\n".join("::".join(map(str, row)) for row in zip(*(c.tolist() for c in cols))) + "\n"
    p = write(tmp_path, "big.dat", text)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=4)
    elapsed = time.perf_counter() - t
    assert x.meta["n_ratings"] == n
    assert elapsed < 5.0, elapsed  # about 0.7 s on a quiet machine; loose bound for shared CI


def test_read_inter(tmp_path):
    p = write(
        tmp_path, "d.inter",
        "item_id:token\tuser_id:token\trating:float\ttimestamp:float\n10\t1\t5.0\t881250949\n11\t2\t2.0\t881250950\n",
    )
    x = read_inter(p, min_rating=4)
    assert x.user_ids.tolist() == [1, 2] and x.item_ids.tolist() == [10, 11]
    assert dense(x).tolist() == [[1, 0], [0, 0]]
    assert read_interactions(p).nnz == 2
    q = write(tmp_path, "e.inter", "user_id:token\tofficial:token\n1\t2\n")
    with pytest.raises(ValueError, match="item_id"):
        read_inter(q)


def test_read_interactions_dispatch(tmp_path):
    assert read_interactions(write(tmp_path, "a.tsv", "1\t2\n")).nnz == 1
    assert read_interactions(write(tmp_path, "a.csv", "1,2\n3,4\n")).nnz == 2
    with pytest.raises(ValueError, match="sep"):
        read_interactions(write(tmp_path, "a.dat", "1::2\n"))
    assert read_interactions(tmp_path / "a.dat", sep="::").nnz == 1


def test_from_dataframe_and_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["a", "b", "a"], "i": [1, 2, 2], "r": [5.0, 3.0, 4.0]})
    x = from_dataframe(df, "u", "i", "r", min_rating=4)
    assert x.user_ids.tolist() == ["a", "b"] and x.item_ids.tolist() == [1, 2]
    assert dense(x).tolist() == [[1, 1], [0, 0]]
    bad = df.assign(r=[5.0, np.nan, 4.0])
    with pytest.raises(ValueError, match=r"column 'r'.*row 1"):
        from_dataframe(bad, "u", "i", "r")
    with pytest.raises(ValueError, match=r"column 'u'.*row 2"):
        from_dataframe(df.assign(u=["a", "b", None]), "u", "i")
    with pytest.raises(KeyError, match="nope"):
        from_dataframe(df, "nope", "i")
    pytest.importorskip("pyarrow")
    path = tmp_path / "x.parquet"
    df.to_parquet(path)
    y = read_parquet(path, "u", "i", "r", min_rating=4)
    assert (dense(y) == dense(x)).all()
    assert read_interactions(path, user_col="u", item_col="i").nnz == 3
