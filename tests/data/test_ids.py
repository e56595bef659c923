"""The id rule (canonical_ids) and the one raw-id index (IdIndex)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from metricrec.data.ids import IdIndex, UnknownIdError, canonical_ids
from metricrec.data.interactions import Interactions, csr_rows

BIG = str(2**63)  # one past int64


# ---------------------------------------------------------------------- canonical_ids
@pytest.mark.parametrize("values, expected", [
    (["1", "2", "-3", "0"], [1, 2, -3, 0]),
    (["9223372036854775807", "-9223372036854775808"], [2**63 - 1, -(2**63)]),
    ([1, 2, 3], [1, 2, 3]),
    (np.array([4.0, 5.0]), [4, 5]),
    (np.array([7, 8], dtype=np.uint8), [7, 8]),
    (["1", 1], [1, 1]),  # a str and an int of the same value are one id
])
def test_all_canonical_integers_become_int64(values, expected):
    out = canonical_ids(values)
    assert out.dtype == np.int64 and out.tolist() == expected


@pytest.mark.parametrize("values, expected", [
    (["007", "7"], ["007", "7"]),
    (["+7", "7"], ["+7", "7"]),
    (["-0", "1"], ["-0", "1"]),
    ([" 7", "7"], [" 7", "7"]),
    ([BIG, "1"], [BIG, "1"]),
    ([str(-(2**63) - 1), "5"], [str(-(2**63) - 1), "5"]),
    (["1.0", "2"], ["1.0", "2"]),
    (["", "2"], ["", "2"]),
    (["u1", "u2"], ["u1", "u2"]),
])
def test_anything_else_keeps_the_exact_strings(values, expected):
    out = canonical_ids(values)
    assert out.dtype.kind == "U" and out.tolist() == expected


def test_arrow_input_and_unsigned_beyond_int64():
    assert canonical_ids(pa.chunked_array([pa.array(["1", "2"]), pa.array(["3"])])).tolist() == [1, 2, 3]
    assert canonical_ids(pa.array(["1", "x"])).tolist() == ["1", "x"]
    assert canonical_ids(pa.array([5, 6], type=pa.int32())).tolist() == [5, 6]
    big = canonical_ids(np.array([2**64 - 1, 1], dtype=np.uint64))
    assert big.tolist() == [str(2**64 - 1), "1"]
    assert canonical_ids(np.array([2**70, 3], dtype=object)).tolist() == [str(2**70), "3"]


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="non-integer"):
        canonical_ids(np.array([1.5]))
    with pytest.raises(ValueError, match="NaN"):
        canonical_ids(np.array([np.nan]))
    with pytest.raises(ValueError, match="missing"):
        canonical_ids(pa.array(["1", None]))
    with pytest.raises(TypeError):
        canonical_ids(np.array([True, False]))
    with pytest.raises(ValueError, match="one-dimensional"):
        canonical_ids(np.zeros((2, 2), dtype=np.int64))


# ---------------------------------------------------------------------- IdIndex
def test_from_values_sorted_universe_and_rows():
    idx, rows = IdIndex.from_values(["b", "a", "b", "007", "7"], name="user")
    assert idx.kind == "str" and idx.ids.tolist() == ["007", "7", "a", "b"]
    assert rows.tolist() == [3, 2, 3, 0, 1] and len(idx) == 4
    nums, rows = IdIndex.from_values(["30", "10", "30", "-5"])
    assert nums.kind == "int" and nums.ids.tolist() == [-5, 10, 30] and rows.tolist() == [2, 1, 2, 0]
    sparse, rows = IdIndex.from_values(np.array([10**15, 3, 10**15]))  # not the dense-range path
    assert sparse.ids.tolist() == [3, 10**15] and rows.tolist() == [1, 0, 1]
    offset, rows = IdIndex.from_values(np.array([10**12 + 5, 10**12 + 1, 10**12 + 5]))  # dense, far from 0
    assert offset.ids.tolist() == [10**12 + 1, 10**12 + 5] and rows.tolist() == [1, 0, 1]
    neg, rows = IdIndex.from_values(np.array([3, -2, 3, 0]))
    assert neg.ids.tolist() == [-2, 0, 3] and rows.tolist() == [2, 0, 2, 1]
    huge, rows = IdIndex.from_values([BIG, "1"])
    assert huge.kind == "str" and huge.ids.tolist() == ["1", BIG] and rows.tolist() == [1, 0]


def test_constructor_keeps_order_and_rejects_duplicates():
    idx = IdIndex([30, 10, 20], name="item")
    assert idx.ids.tolist() == [30, 10, 20] and idx.lookup([20, 30]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="item ids contain duplicates.*10"):
        IdIndex([10, 20, 10], name="item")
    with pytest.raises(ValueError, match="duplicates.*'a'"):
        IdIndex(np.array(["a", "b", "a"]))
    with pytest.raises(ValueError, match="one-dimensional"):
        IdIndex(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        IdIndex(np.array([1.5, 2.5]))
    with pytest.raises(AttributeError):
        idx.kind = "str"
    with pytest.raises(ValueError):
        idx.ids[0] = 5  # read-only


def test_lookup_query_rules_between_kinds():
    ints = IdIndex([7, 70, -1])
    assert ints.lookup("7") == 0 and ints.lookup(7) == 0 and ints.lookup("-1") == 2
    assert ints.lookup(["007", "7", "+7", "7.0", " 7", "70"], missing="mask").tolist() == [-1, 0, -1, -1, -1, 1]
    assert ints.lookup([BIG], missing="mask").tolist() == [-1]
    assert ints.lookup(pa.array(["70", "x"]), missing="mask").tolist() == [1, -1]
    strs = IdIndex(np.array(["007", "7", "x"]))
    assert strs.lookup(7) == 1 and strs.lookup("007") == 0
    assert strs.lookup(np.array([7, 8]), missing="mask").tolist() == [1, -1]
    assert isinstance(ints.lookup(np.int64(70)), int)
    assert IdIndex([]).lookup([1, 2], missing="mask").tolist() == [-1, -1]


def test_lookup_missing_raises_key_error_naming_source_count_and_first_five():
    idx = IdIndex([1, 2], name="user")
    with pytest.raises(KeyError) as err:
        idx.lookup(["9", "8", "7", "6", "5", "4", "1"], source="train.csv")
    assert isinstance(err.value, UnknownIdError)
    msg = str(err.value)
    assert msg.startswith("train.csv: 6 unknown user id(s): ")
    assert "'9', '8', '7', '6', '5'" in msg and "'4'" not in msg and "and 1 more" in msg
    with pytest.raises(ValueError, match="missing"):
        idx.lookup([1], missing="drop")


def test_lookup_is_vectorised_on_a_large_query():
    rng = np.random.default_rng(0)
    ids = rng.choice(10**9, size=200_000, replace=False)
    idx = IdIndex(ids)
    q = rng.integers(0, 200_000, 300_000)
    assert np.array_equal(idx.lookup(ids[q]), q)
    assert np.array_equal(idx.lookup(ids[q].astype(str)), q)


def test_raw_and_range_errors():
    idx = IdIndex(np.array(["a", "b", "c"]))
    assert idx.raw([2, 0]).tolist() == ["c", "a"] and idx.raw(1) == "b"
    with pytest.raises(IndexError, match="out of range"):
        idx.raw([3])
    with pytest.raises(IndexError, match="-1"):
        idx.raw(-1)


def test_json_round_trip_equality_and_bad_documents():
    for idx in (IdIndex([5, -3, 2**62]), IdIndex(np.array(["007", "é", BIG])), IdIndex([])):
        doc = json.loads(json.dumps(idx.to_json()))
        back = IdIndex.from_json(doc, n=len(idx))
        assert back == idx and back.kind == idx.kind and back.ids.tolist() == idx.ids.tolist()
    assert IdIndex([1, 2]) != IdIndex([2, 1])
    assert IdIndex([1]) != IdIndex(np.array(["1"]))
    bad = [
        ([1, 2], "expected an id document"),
        ({"kind": "float", "values": [1.0]}, "expected an id document"),
        ({"kind": "int", "values": [1, "2"]}, "integers"),
        ({"kind": "int", "values": [True]}, "integers"),
        ({"kind": "int", "values": [2**63]}, "int64"),
        ({"kind": "str", "values": ["a", 1]}, "strings"),
        ({"kind": "int", "values": [1, 1]}, "duplicates"),
    ]
    for doc, words in bad:
        with pytest.raises(ValueError, match=words):
            IdIndex.from_json(doc, where="model.json user_ids")
    with pytest.raises(ValueError, match=r"model\.json: expected 3 ids, got 2"):
        IdIndex.from_json({"kind": "int", "values": [1, 2]}, n=3, where="model.json")


# ---------------------------------------------------------------------- Interactions use it
def test_interactions_maps_and_csr_rows():
    x = Interactions.from_arrays(["007", "7", "7"], ["1", 1, "2"])
    assert x.user_ids.tolist() == ["007", "7"] and x.item_ids.tolist() == [1, 2]
    assert x.user_map == IdIndex(np.array(["007", "7"])) and x.item_map.kind == "int"
    assert x.user_index("7") == 1 and x.user_index(7) == 1 and x.item_index(["2", 1]).tolist() == [1, 0]
    with pytest.raises(KeyError, match="unknown item id"):
        x.item_index("01")
    rows, cols, _ = x.to_coo_arrays()
    assert csr_rows(x.matrix).tolist() == rows.tolist() == [0, 1, 1] and cols.tolist() == [0, 0, 1]
    big = Interactions.from_arrays([BIG, str(2**63 + 1)], ["a", "a"])
    assert big.n_users == 2  # never saturated into one user
    fixed = Interactions.from_arrays([1, 2], ["a", "b"], user_ids=["2", "1", "3"])
    assert fixed.user_ids.tolist() == [2, 1, 3] and fixed.matrix.toarray().tolist() == [[0, 1], [1, 0], [0, 0]]
