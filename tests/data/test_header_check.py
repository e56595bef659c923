"""The header check of the text readers (metricrec.data.header_check) and the file-kind check of
read_bytes: a header line never becomes a row of data, a FIFO or a directory is named, never waited on."""

import os
import re

import numpy as np
import pytest

from fifo_guard import make_fifo, within
from metricrec.data.delimited import read_bytes, read_columns, require_regular_file
from metricrec.data.features import read_item_features
from metricrec.data.header_check import normalized
from metricrec.data.readers import read_delimited, read_interactions, read_parquet
from metricrec.data.split_files import read_split
from metricrec.errors import DataError

BIG = ["12345678901234567890123", "12345678901234567890124", "12345678901234567890125"]

#: name -> (bytes, the first line as the error quotes it). Each holds a header and the 3 pairs
#: (1,2) (2,3) (3,1) -- or the same over BIG user ids -- so 3 users, 3 items, 3 pairs.
HEADERS = {
    "plain": (b"user,item\n1,2\n2,3\n3,1\n", "user,item"),
    "bom": (b"\xef\xbb\xbfuser,item\n1,2\n2,3\n3,1\n", "user,item"),
    "crlf": (b"user,item\r\n1,2\r\n2,3\r\n3,1\r\n", "user,item"),
    "bom+crlf": (b"\xef\xbb\xbfuser,item\r\n1,2\r\n2,3\r\n3,1\r\n", "user,item"),
    "quoted": (b'"user","item"\n1,2\n2,3\n3,1\n', '"user","item"'),
    "named columns": (b"user_id,item_id,rating\n1,2,5\n2,3,4\n3,1,3\n", "user_id,item_id,rating"),
    "spaced names": (b" User ID , Item-ID \n1,2\n2,3\n3,1\n", " User ID , Item-ID "),
    "unknown words over integers": (b"kto,co\n1,2\n2,3\n3,1\n", "kto,co"),
    "huge ids": (("user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(BIG, (2, 3, 1)))).encode(), "user,item"),
    "unknown words over huge ids": (("a,b\n" + "".join(f"{u},{i}\n" for u, i in zip(BIG, (2, 3, 1)))).encode(),
                                    "a,b"),
}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def counts(x):
    return x.n_users, x.n_items, x.nnz


@pytest.mark.parametrize("case", list(HEADERS))
def test_a_header_is_refused_skipped_or_data_but_never_silently_data(case, tmp_path):
    data, shown = HEADERS[case]
    path = _write(tmp_path, "h.csv", data)
    with pytest.raises(DataError) as err:
        read_delimited(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 1: looks like a header ({shown!r}: ") and "\n" not in msg
    assert msg.endswith("pass --header / header=True to skip it as a header, "
                        "or --no-header / header=False to read it as data")
    skipped = read_delimited(path, header=True)
    assert counts(skipped) == (3, 3, 3) and skipped.meta["n_ratings"] == 3
    assert set(skipped.item_ids.tolist()) == {1, 2, 3}
    as_data = read_delimited(path, header=False)  # asked for: the header line is one more pair
    first = shown.split(",")[0].strip().strip('"')
    assert counts(as_data) == (4, 4, 4) and first in [str(u).strip() for u in as_data.user_ids.tolist()]


def test_the_reason_is_named(tmp_path):
    with pytest.raises(DataError, match=r"'user' names a column"):
        read_delimited(_write(tmp_path, "a.csv", HEADERS["plain"][0]))
    with pytest.raises(DataError, match=r"the user id 'kto' is text, every other line's an integer"):
        read_delimited(_write(tmp_path, "b.csv", HEADERS["unknown words over integers"][0]))
    with pytest.raises(DataError, match=r"'rating' names a column"):  # a column that is not read counts too
        read_delimited(_write(tmp_path, "c.csv", "kto,co,rating\nu1,i1,5\nu2,i2,4\n"))
    with pytest.raises(DataError, match=r"the item id 'co' is text"):  # one id column suffices
        read_delimited(_write(tmp_path, "d.csv", "u0,co\nu1,1\nu2,2\n"))


def test_names_given_for_the_columns_read_the_header_as_a_header(tmp_path):
    path = _write(tmp_path, "h.csv", HEADERS["named columns"][0])
    x = read_delimited(path, user_col="user_id", item_col="item_id", rating_col="rating", binary=False)
    assert counts(x) == (3, 3, 3) and x.matrix.sum() == 12
    assert counts(read_delimited(path, user_col="user_id", item_col=1)) == (3, 3, 3)  # one name: a header


@pytest.mark.parametrize("text, expected", [
    ("u1,i1\nu2,i2\nu3,i1\n", (3, 2, 3)),  # text ids all through: no header
    ("u1,i1\nu2,i2\n5,6\n", (3, 3, 3)),  # text below the first line too, in both id columns
    ("1,2\n2,3\n3,1\n", (3, 3, 3)),  # integers all through
    ("1,a\nx,b\n", (2, 2, 2)),  # integers first, text later: not a header
    ("alice,1\n", (1, 1, 1)),  # one line: nothing to compare it with, and no column name
    ("007,1\n7,2\n", (2, 2, 2)),  # zero-padded integers are integers here
    ("u1,count\nu2,time\n", None),  # item ids that are column words ... are refused (see below)
])
def test_files_without_a_header_read_as_before(text, expected, tmp_path):
    path = _write(tmp_path, "d.csv", text)
    if expected is None:
        with pytest.raises(DataError, match="'count' names a column"):
            read_delimited(path)
        assert counts(read_delimited(path, header=False)) == (2, 2, 2)  # ... until told they are data
    else:
        assert counts(read_delimited(path)) == expected


def test_only_the_first_line_is_looked_at(tmp_path):
    path = _write(tmp_path, "d.csv", "1,2\nuser,item\n3,4\n")  # a second header-like line is data
    x = read_delimited(path)
    assert counts(x) == (3, 3, 3) and "user" in x.user_ids.tolist()


def test_normalized_field_names():
    assert normalized(' "User ID" ') == "user_id"
    assert normalized("item-id") == "item_id"
    assert normalized("user_id:token") == "user_id"  # a RecBole typed name
    assert normalized("user:5") == "user:5"  # an id with a colon is not a typed name


def test_item_feature_and_split_files_by_position(tmp_path):
    feats = _write(tmp_path, "f.csv", "item,feature,value\n1,a,1\n2,b,2\n")
    with pytest.raises(DataError, match=r"f\.csv, line 1: looks like a header \('item,feature,value'"):
        read_item_features(feats, np.array([1, 2]))
    f = read_item_features(feats, np.array([1, 2]), header=True)
    assert f.names.tolist() == ["a", "b"] and f.matrix.toarray().tolist() == [[1, 0], [0, 2]]
    parts = [_write(tmp_path, f"{p}.csv", f"user,item\n1,{k}\n2,{k}\n")
             for k, p in enumerate(("train", "valid", "test"))]
    with pytest.raises(DataError, match=r"train\.csv, line 1: looks like a header"):
        read_split(*parts, user_col=0, item_col=1)
    split = read_split(*parts, user_col=0, item_col=1, header=True)
    assert split.train.nnz == 2 and split.train.user_ids.tolist() == [1, 2]
    assert read_split(*parts).train.nnz == 2  # the default: columns by name, the header is a header


def test_the_check_is_off_for_fixed_formats(tmp_path):
    path = _write(tmp_path, "u.data", "user\titem\n1\t2\n")  # MovieLens-style readers say header=False
    t = read_columns(path, {"user": 0, "item": 1}, sep="\t", header=False)
    assert t.n_rows == 2 and t.columns["user"][0].as_py() == "user"
    inter = _write(tmp_path, "x.inter", "user_id:token\titem_id:token\n1\t2\n")
    assert counts(read_interactions(inter, header=None)) == (1, 1, 1)  # .inter: always its typed header


# ---------------------------------------------------------------------- not a regular file
def test_require_regular_file_says_what_a_path_is(tmp_path):
    ok = _write(tmp_path, "a.csv", "1,2\n")
    assert require_regular_file(ok) == str(ok) and read_bytes(ok) == b"1,2\n"
    with pytest.raises(FileNotFoundError, match=re.escape(f"file not found: {tmp_path / 'nope'}")):
        require_regular_file(tmp_path / "nope")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: is a directory, not a regular file")):
        require_regular_file(tmp_path)
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(DataError, match="dangling.csv: is a symbolic link to .*gone.csv'?, which does not exist"):
        read_bytes(tmp_path / "dangling.csv")
    if os.path.exists("/dev/zero"):  # a device is never read (it would never end)
        with pytest.raises(DataError, match=re.escape("/dev/zero: is a character device, not a regular file")):
            read_bytes("/dev/zero")


READERS = {
    "read_interactions": lambda p: read_interactions(p, sep=","),
    "read_interactions (.csv suffix)": lambda p: read_interactions(p),
    "read_delimited": read_delimited,
    "read_parquet": lambda p: read_parquet(p, "user", "item"),
    "read_item_features": lambda p: read_item_features(p, np.array([1])),
    "read_split": lambda p: read_split(p, p, p),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_a_fifo_is_named_and_never_waited_on(reader, tmp_path):
    fifo = make_fifo(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{fifo}: is a FIFO (named pipe), not a regular file")):
        within(lambda: READERS[reader](fifo), fifo)


@pytest.mark.parametrize("reader", list(READERS))
def test_a_directory_is_named(reader, tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{folder}: is a directory, not a regular file")):
        READERS[reader](folder)


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"file not found: {tmp_path / 'no.csv'}")):
        read_interactions(tmp_path / "no.csv")
