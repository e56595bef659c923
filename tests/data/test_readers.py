import bz2
import gzip
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest

from metricrec.cli.main import main
from metricrec.data.interactions import DataWarning, Interactions
from metricrec.errors import DataError
from metricrec.data.readers import from_dataframe, read_delimited, read_inter, read_interactions, read_parquet

BIG = str(2**63)


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def dense(x):
    return x.matrix.toarray()


def counts(x):
    return x.n_users, x.n_items, x.nnz


# ---------------------------------------------------------------------- basic formats
def test_movielens_1m_format_with_threshold(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n\n\n")
    x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=4)
    assert x.user_ids.tolist() == [1, 2]
    assert x.item_ids.tolist() == [661, 1193]  # ids seen below the threshold stay in the universe
    assert dense(x).tolist() == [[0, 1], [0, 1]]
    assert x.timestamps.tolist() == [978300760, 978298413]
    assert x.meta["n_ratings"] == 3


def test_multi_character_separator_keeps_other_colons(tmp_path):
    p = write(tmp_path, "x.dat", "a:1::b::3\nc:::d::4\n")
    x = read_delimited(p, sep="::", rating_col=2, binary=False)
    assert x.user_ids.tolist() == ["a:1", "c"] and x.item_ids.tolist() == [":d", "b"]  # as str.split("::")
    assert dense(x).tolist() == [[0, 3], [4, 0]]
    q = write(tmp_path, "y.dat", "1\x1f2::3::5\n")  # the first stand-in occurs: another is used
    assert read_delimited(q, sep="::", rating_col=2).user_ids.tolist() == ["1\x1f2"]


def test_header_by_name_and_string_ids(tmp_path):
    p = write(tmp_path, "x.csv", "rating,user,item\n5,alice,i1\n2,bob,i2\n3,alice,i2\n")
    x = read_delimited(p, user_col="user", item_col="item", rating_col="rating", binary=False)
    assert x.user_ids.tolist() == ["alice", "bob"]
    assert x.item_ids.dtype.kind == "U"
    assert dense(x).tolist() == [[5, 3], [0, 2]]


# ---------------------------------------------------------------------- the header rule
def test_text_over_integer_ids_is_refused_as_a_header_unless_told(tmp_path):
    p = write(tmp_path, "a.csv", "u1,itemA\n1,2\n3,4\n")
    with pytest.raises(DataError, match=r"a\.csv, line 1: looks like a header \('u1,itemA': the user id 'u1' is text"):
        read_delimited(p)  # columns by index, header not said: the check
    x = read_delimited(p, header=False)  # told so: the first line is data
    assert counts(x) == (3, 3, 3)
    assert sorted(x.user_ids.tolist()) == ["1", "3", "u1"] and "itemA" in x.item_ids.tolist()
    y = read_delimited(p, header=True)  # told so: the first line is skipped
    assert y.user_ids.tolist() == [1, 3] and y.nnz == 2 and y.meta["n_ratings"] == 2


def test_header_words_are_refused_by_position_and_data_only_when_asked_for(tmp_path):
    p = write(tmp_path, "b.csv", "user,item\nu1,i1\nu2,i1\n")
    with pytest.raises(DataError, match=r"b\.csv, line 1: looks like a header \('user,item': 'user' names a column\)"):
        read_delimited(p)  # text ids everywhere: the name decides
    x = read_delimited(p, header=False)
    assert counts(x) == (3, 2, 3) and "user" in x.user_ids.tolist()
    assert counts(read_delimited(p, header=True)) == (2, 1, 2)
    y = read_delimited(p, user_col="user", item_col="item")
    assert y.user_ids.tolist() == ["u1", "u2"] and counts(y) == (2, 1, 2)


def test_names_need_a_header_and_unknown_names_are_an_error(tmp_path):
    p = write(tmp_path, "h.csv", "uid,iid\n1,2\n")
    with pytest.raises(ValueError) as err:
        read_delimited(p, user_col="user", item_col="item")
    msg = str(err.value)
    assert "h.csv" in msg and "'user'" in msg and "['uid', 'iid']" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="need a header line"):
        read_delimited(p, user_col="uid", item_col="iid", header=False)
    with pytest.raises(ValueError, match="h.csv: item_col|h.csv: item=5 is out of range"):
        read_delimited(p, item_col=5)


# ---------------------------------------------------------------------- the id rule
def test_zero_padded_ids_are_distinct_users(tmp_path):
    p = write(tmp_path, "z.csv", "007,a\n7,a\n7,b\n")
    x = read_delimited(p)
    assert x.user_ids.tolist() == ["007", "7"] and counts(x) == (2, 2, 3)
    assert x.user_index("7") == 1 and x.user_index(7) == 1 and x.user_index("007") == 0


def test_ids_beyond_int64_are_kept_distinct(tmp_path):
    a, b = str(2**63), str(2**64 + 5)
    p = write(tmp_path, "big.csv", f"{a},1\n{b},1\n{a},2\n-{b},2\n")
    x = read_delimited(p)
    assert counts(x) == (3, 2, 4)
    assert sorted(x.user_ids.tolist()) == sorted([a, b, "-" + b])
    assert x.item_ids.tolist() == [1, 2]


def test_string_one_from_a_file_is_integer_one_from_arrays(tmp_path):
    p = write(tmp_path, "one.csv", "1,10\n2,10\n")
    from_file = read_delimited(p)
    from_arrays = Interactions.from_arrays([1, 2], [10, 10])
    assert from_file.user_ids.dtype == np.int64
    assert from_file.user_ids.tolist() == from_arrays.user_ids.tolist() == [1, 2]
    assert (dense(from_file) == dense(from_arrays)).all()
    fixed = read_delimited(p, user_ids=[2, 1, 3], item_ids=np.array(["10"]))
    assert fixed.user_ids.tolist() == [2, 1, 3] and dense(fixed).tolist() == [[1], [1], [0]]
    with pytest.warns(DataWarning, match="1 duplicate"):  # "1" and 1: one user, one pair
        assert Interactions.from_arrays(["1", 1, "01"], ["a", "a", "a"]).n_users == 2


def test_mixed_ids_become_strings(tmp_path):
    p = write(tmp_path, "x.csv", "1,10\nx7,10\n")
    x = read_delimited(p, header=False)
    assert x.user_ids.tolist() == ["1", "x7"]
    assert x.item_ids.tolist() == [10]


# ---------------------------------------------------------------------- bytes: BOM, quotes, compression
def test_bom_is_skipped_with_and_without_header(tmp_path):
    p = write(tmp_path, "bom.csv", b"\xef\xbb\xbfuser,item\r\n5,6\r\n7,8\r\n")
    x = read_delimited(p, user_col="user", item_col="item")
    assert x.user_ids.tolist() == [5, 7] and counts(x) == (2, 2, 2)
    q = write(tmp_path, "bom2.csv", b"\xef\xbb\xbf5,6\n")
    assert read_delimited(q).user_ids.tolist() == [5]


def test_quoted_fields_hold_the_separator(tmp_path):
    p = write(tmp_path, "q.csv", 'user,item,rating\n"Smith, J.","a ""b""",4\n"Smith, J.",c,"5"\nx,c,3\n')
    x = read_delimited(p, user_col="user", item_col="item", rating_col="rating", binary=False)
    assert x.user_ids.tolist() == ["Smith, J.", "x"] and x.item_ids.tolist() == ['a "b"', "c"]
    assert dense(x).tolist() == [[4, 5], [0, 3]]
    y = read_delimited(write(tmp_path, "noq.tsv", '"a\tb\n'), sep="\t", quoting=False)
    assert y.user_ids.tolist() == ['"a']


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "bz2":
        return bz2.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("suffix, codec", [(".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd")])
def test_compressed_files(tmp_path, suffix, codec):
    text = b"user,item,rating\n1,10,5\n2,10,3\n2,11,4\n"
    p = write(tmp_path, "r.csv" + suffix, _compress(text, codec))
    x = read_interactions(p, user_col="user", item_col="item", rating_col="rating", min_rating=4)
    assert counts(x) == (2, 2, 2) and dense(x).tolist() == [[1, 0], [0, 1]]
    bad = write(tmp_path, "bad.csv" + suffix, b"not compressed at all")
    with pytest.raises(ValueError, match="bad.csv"):
        read_interactions(bad)


# ---------------------------------------------------------------------- bad lines: one line naming file and line
@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1,2,3\n4,5\n", 2, "expected 3 fields"),
        ("1,2,3\n4,5,6,7\n", 2, "got 4 fields"),
        ("1,2,3\n\n4,5,6\n", 2, "blank line"),
        ("1,2,3\n4,5,abc\n", 2, "'abc' is not a number"),
        ("1,2,3\n4,5,\n", 2, "'' is not a number"),
        ("1,2,3\n4,5,6\n7,8,nan\n", 3, "NaN"),
        ("1,2,3\n4,5,6\n7,8,-inf\n", 3, "NaN or infinite"),
        ("1,2,3\n,5,6\n", 2, "empty user id"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError) as err:
        read_delimited(p, rating_col=2, header=False)
    msg = str(err.value)
    assert str(p) in msg and f"line {line}" in msg and words in msg and "\n" not in msg


def test_bad_line_deep_in_a_large_file_is_numbered(tmp_path):
    rows = [f"{k % 97},{k % 13},{k % 5}" for k in range(300_000)]
    rows[250_000] = "1,2"
    p = write(tmp_path, "big.csv", "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"big\.csv, line 250001: expected 3 fields.*got 2 fields \(1 bad line"):
        read_delimited(p, rating_col=2)
    rows[250_000] = "1,2,x"
    p = write(tmp_path, "big.csv", "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"big\.csv, line 250001: rating 'x' is not a number"):
        read_delimited(p, rating_col=2)


def test_bad_line_number_counts_header(tmp_path):
    p = write(tmp_path, "bad.csv", "user,item,rating\n1,2,3\n1,3,x\n")
    with pytest.raises(ValueError, match=r"line 3: rating 'x'"):
        read_delimited(p, user_col="user", item_col="item", rating_col="rating")


def test_bad_timestamp(tmp_path):
    p = write(tmp_path, "bad.tsv", "1\t2\t5\t100\n1\t3\t5\tsoon\n")
    with pytest.raises(ValueError, match=r"line 2: timestamp 'soon'"):
        read_delimited(p, sep="\t", rating_col=2, timestamp_col=3)


def test_float_timestamps_are_floored_and_ratings_may_have_spaces(tmp_path):
    p = write(tmp_path, "x.tsv", "1\t2\t 5\t100.7\n1\t3\t4.5 \t200\n")
    x = read_delimited(p, sep="\t", rating_col=2, timestamp_col=3, binary=False)
    assert x.timestamps.tolist() == [100, 200] and dense(x).tolist() == [[5, 4.5]]


@pytest.mark.parametrize("text, header, words", [
    ("", None, "empty.csv: file is empty"),
    ("\n\n", None, "empty.csv: file is empty"),
    (b"\xef\xbb\xbf", None, "empty.csv: file is empty"),
    ("user,item,rating\n", True, "empty.csv: file has a header line but no interaction lines"),
])
def test_empty_file(tmp_path, text, header, words):
    p = write(tmp_path, "empty.csv", text)
    with pytest.raises(ValueError, match=words):
        read_delimited(p, rating_col=2, header=header)


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
    q.write_bytes(b"1,tea\n2,caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.csv, line 2: cannot decode"):
        read_delimited(q)
    assert read_delimited(q, encoding="iso-8859-1").item_ids.tolist() == ["café", "tea"]


def test_fixed_universe(tmp_path):
    p = write(tmp_path, "x.csv", "1,2\n")
    x = read_delimited(p, user_ids=[0, 1, 2], item_ids=[2, 9])
    assert dense(x).tolist() == [[0, 0], [1, 0], [0, 0]]
    with pytest.raises(KeyError, match="x.csv: 1 unknown user id"):
        read_delimited(p, user_ids=[5])


def test_agrees_with_slow_reference_on_random_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    u, i, r = rng.integers(0, 300, n), rng.integers(0, 200, n), rng.integers(1, 6, n)
    p = write(tmp_path, "r.dat", "".join(f"{a}::{b}::{c}::{k}\n" for k, (a, b, c) in enumerate(zip(u, i, r))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=3, binary=False)
    ref, latest = {}, {}
    for k, (a, b, c) in enumerate(zip(u, i, r)):  # slow reference: max rating, latest time per kept pair
        if c >= 3:
            ref[(a, b)] = max(ref.get((a, b), 0), c)
            latest[(a, b)] = k
    rows, cols, vals = x.to_coo_arrays()
    got = {(x.user_ids[a], x.item_ids[b]): v for a, b, v in zip(rows, cols, vals)}
    assert got == ref
    assert {(x.user_ids[a], x.item_ids[b]): t for a, b, t in zip(rows, cols, x.timestamps)} == latest


def test_one_million_lines_is_fast(tmp_path):
    rng = np.random.default_rng(1)
    n = 1_000_000
    cols = [rng.integers(1, 6041, n), rng.integers(1, 3953, n), rng.integers(1, 6, n), rng.integers(9e8, 1e9, n)]
    text = "\n".join(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(
        cols[0].astype(str), "::"), cols[1].astype(str)), "::"), cols[2].astype(str)), "::"),
        cols[3].astype(str)).tolist()) + "\n"
    p = write(tmp_path, "big.dat", text)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x = read_delimited(p, sep="::", rating_col=2, timestamp_col=3, min_rating=4)
    elapsed = time.perf_counter() - t
    assert x.meta["n_ratings"] == n
    assert x.nnz == len(set(zip(cols[0][cols[2] >= 4].tolist(), cols[1][cols[2] >= 4].tolist())))
    assert elapsed < 5.0, elapsed  # about 0.5 s on a quiet machine; loose bound for shared CI


# ---------------------------------------------------------------------- .inter, parquet, DataFrame, dispatch
INTER = "item_id:token\tuser_id:token\trating:float\ttimestamp:float\n10\t1\t5.0\t881250949\n11\t2\t2.0\t881250950\n"


def test_read_inter(tmp_path):
    p = write(tmp_path, "d.inter", INTER)
    x = read_inter(p, min_rating=4)
    assert x.user_ids.tolist() == [1, 2] and x.item_ids.tolist() == [10, 11]
    assert dense(x).tolist() == [[1, 0], [0, 0]] and x.timestamps.tolist() == [881250949]
    assert counts(read_interactions(p)) == (2, 2, 2)
    assert counts(read_interactions(p, user_col=None, item_col="item_id", rating_col=None, min_rating=4)) == (2, 2, 1)
    q = write(tmp_path, "e.inter", "user_id:token\tofficial:token\n1\t2\n")
    with pytest.raises(ValueError, match=r"e\.inter: the header has no column 'item_id'.*\['user_id', 'official'\]"):
        read_inter(q)
    r = write(tmp_path, "f.inter.gz", gzip.compress(b"user_id:token\titem_id:token\n007\t1\n7\t1\n"))
    y = read_interactions(r)
    assert y.user_ids.tolist() == ["007", "7"] and y.nnz == 2
    with pytest.raises(ValueError, match="needs a rating field"):
        read_interactions(r, min_rating=4)


def test_inter_parquet_and_gzip_through_the_cli(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    inter = write(tmp_path, "d.inter", INTER + "12\t1\t4.0\t881250951\n")
    assert main(["data", "stats", "--interactions", str(inter), "--min-rating", "4"]) == 0
    out = capsys.readouterr().out
    assert "users         2" in out and "items         3" in out and "positives     2" in out
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"user": ["a", "b", "a"], "item": [1, 2, 2]}).to_parquet(pq)
    assert main(["data", "stats", "--interactions", str(pq), "--user-col", "user", "--item-col", "item"]) == 0
    out = capsys.readouterr().out
    assert "users         2" in out and "interactions  3" in out
    gz = write(tmp_path, "d.csv.gz", gzip.compress(b"1,2\n1,3\n4,2\n"))
    assert main(["data", "stats", "--interactions", str(gz)]) == 0
    assert "interactions  3" in capsys.readouterr().out
    bad = write(tmp_path, "bad.csv", "1,2\n3\n")
    assert main(["data", "stats", "--interactions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 2: expected 2 fields" in err and "Traceback" not in err and "Arrow" not in err


def test_read_interactions_dispatch(tmp_path):
    assert read_interactions(write(tmp_path, "a.tsv", "1\t2\n")).nnz == 1
    assert read_interactions(write(tmp_path, "a.csv", "1,2\n3,4\n")).nnz == 2
    with pytest.raises(ValueError, match="sep"):
        read_interactions(write(tmp_path, "a.dat", "1::2\n"))
    assert read_interactions(tmp_path / "a.dat", sep="::").nnz == 1


def test_from_dataframe_id_rule_and_errors():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["a", "b", "a"], "i": [1, 2, 2], "r": [5.0, 3.0, 4.0]})
    x = from_dataframe(df, "u", "i", "r", min_rating=4)
    assert x.user_ids.tolist() == ["a", "b"] and x.item_ids.tolist() == [1, 2]
    assert dense(x).tolist() == [[1, 1], [0, 0]]
    mixed = pd.DataFrame({"u": pd.Series(["1", 1, "007"], dtype=object), "i": ["x", "y", "x"]})
    y = from_dataframe(mixed, "u", "i")
    assert y.user_ids.tolist() == ["007", "1"] and counts(y) == (2, 2, 3)  # "1" and 1 are one user
    assert from_dataframe(pd.DataFrame({"u": [1.0, 2.0], "i": [3, 3]}), "u", "i").user_ids.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"column 'r'.*row 1"):
        from_dataframe(df.assign(r=[5.0, np.nan, 4.0]), "u", "i", "r")
    with pytest.raises(ValueError, match=r"column 'r' row 2: 'high' is not a number"):
        from_dataframe(df.assign(r=pd.Series([5, 3, "high"], dtype=object)), "u", "i", "r")
    with pytest.raises(ValueError, match=r"column 'u'.*row 2"):
        from_dataframe(df.assign(u=["a", "b", None]), "u", "i")
    with pytest.raises(KeyError, match="nope"):
        from_dataframe(df, "nope", "i")


def test_parquet_without_pandas_path(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    table = pa.table({"u": ["007", "7", "7"], "i": pa.array([1, 1, 2], pa.int32()), "r": [5.0, 3.0, 4.0],
                      "t": pa.array([10, 20, 30], pa.int64())})
    pq.write_table(table, path)
    y = read_parquet(path, "u", "i", "r", "t", min_rating=4)
    assert y.user_ids.tolist() == ["007", "7"] and y.item_ids.tolist() == [1, 2]
    assert dense(y).tolist() == [[1, 0], [0, 1]] and y.timestamps.tolist() == [10, 30]
    assert counts(read_interactions(path, user_col="u", item_col="i")) == (2, 2, 3)
    assert counts(read_parquet(path, 0, 1)) == (2, 2, 3)
    with pytest.raises(ValueError, match=r"x\.parquet: no column 'user'.*\['u', 'i', 'r', 't'\]"):
        read_parquet(path, "user", "i")
    pq.write_table(pa.table({"u": ["a", None], "i": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet: column 'u' has 1 missing value\(s\), first at row 1"):
        read_parquet(tmp_path / "n.parquet", "u", "i")
    write(tmp_path, "fake.parquet", "u,i\n1,2\n")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        read_parquet(tmp_path / "fake.parquet", "u", "i")
