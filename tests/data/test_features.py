"""Feature network f and the item-feature readers (metricrec.data.features)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.data.features import as_features, describe_features, filter_min_count, normalize_rows, read_item_features
from metricrec.models.cml.feature_net import FeatureMLP, SparseRows, feature_row_tensor, mlp_from_arrays, mlp_to_arrays
from metricrec.data.interactions import DataWarning, Features
from metricrec.errors import DataError
from metricrec.serialization import ModelFormatError


def _random_csr(n_rows=7, n_cols=5, density=0.4, seed=0):
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=np.float32)
    m.data[:] = np.random.default_rng(seed).uniform(0.5, 2.0, m.nnz)
    return m


# ---------------------------------------------------------------------- SparseRows / FeatureMLP
def test_sparse_rows_gather_matches_scipy_row_selection():
    m = _random_csr(9, 6, 0.5, seed=1)
    m = sp.csr_matrix(sp.diags(np.r_[np.ones(3), 0.0, np.ones(5)]) @ m)  # an empty row in the middle
    m.eliminate_zeros()
    assert m[3].nnz == 0
    rows = np.array([8, 3, 0, 3, 5])
    idx, val, off = SparseRows(m).gather(torch.from_numpy(rows))
    sub = m[rows]
    assert idx.tolist() == sub.indices.tolist()
    assert np.allclose(val.numpy(), sub.data)
    assert off.tolist() == sub.indptr[:-1].tolist()


def test_linear_mlp_is_x_w_plus_b_for_sparse_csr_coo_and_dense_inputs():
    m = _random_csr(6, 5, 0.5, seed=2)
    f = FeatureMLP(5, 3, hidden=(), dropout=0.0, seed=0)
    w = f.input["weight"].detach().numpy().astype(np.float64)
    b = f.input["bias"].detach().numpy().astype(np.float64)
    expected = m.toarray().astype(np.float64) @ w + b
    dense = torch.from_numpy(m.toarray())
    out_tuple = f(SparseRows(m).gather(None)).detach().numpy()
    out_dense = f(dense).detach().numpy()
    out_coo = f(dense.to_sparse()).detach().numpy()
    out_csr = f(dense.to_sparse_csr()).detach().numpy()
    for out in (out_tuple, out_dense, out_coo, out_csr):
        assert out.shape == (6, 3)
        assert np.allclose(out, expected, atol=1e-5)


def test_mlp_with_hidden_layer_matches_a_hand_forward_pass_and_dropout_only_in_training():
    m = _random_csr(8, 5, 0.5, seed=3)
    f = FeatureMLP(5, 4, hidden=(6,), dropout=0.5, seed=1).eval()
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in f.state_dict().items()}
    h = np.maximum(m.toarray() @ sd["input.weight"] + sd["input.bias"], 0)
    expected = h @ sd["layers.0.weight"].T + sd["layers.0.bias"]
    assert np.allclose(f(SparseRows(m).gather(None)).detach().numpy(), expected, atol=1e-5)
    torch.manual_seed(0)
    f.train()
    a = f(SparseRows(m).gather(None)).detach().numpy()
    assert not np.allclose(a, expected, atol=1e-5)  # dropout active while training


def test_mlp_rejects_bad_shapes():
    with pytest.raises(ValueError, match="positive"):
        FeatureMLP(0, 3)
    with pytest.raises(ValueError, match="dropout"):
        FeatureMLP(4, 3, dropout=1.0)
    with pytest.raises(ValueError, match="expected 4 feature columns"):
        FeatureMLP(4, 3)(torch.zeros(2, 5))


def test_mlp_arrays_round_trip_and_corruption_is_reported():
    f = FeatureMLP(5, 3, hidden=(4,), dropout=0.2, seed=0)
    arrays = mlp_to_arrays(f, "item_mlp.")
    assert set(arrays) == {"item_mlp.input.weight", "item_mlp.input.bias", "item_mlp.layers.0.weight",
                           "item_mlp.layers.0.bias"}
    doc = {"names": [f"f{k}" for k in range(5)], "mlp": f.shape_doc()}
    g, names, _ = mlp_from_arrays(arrays, doc, "item_mlp.", 3, "model")
    x = torch.rand(3, 5)
    assert torch.equal(f.eval()(x), g(x)) and names.tolist() == doc["names"]
    bad = dict(arrays)
    bad["item_mlp.layers.0.bias"] = np.zeros(2, np.float32)
    with pytest.raises(ModelFormatError, match="layers.0.bias"):
        mlp_from_arrays(bad, doc, "item_mlp.", 3, "model")
    with pytest.raises(ModelFormatError, match="names"):  # the message names the bad key
        mlp_from_arrays(arrays, {**doc, "names": ["a"]}, "item_mlp.", 3, "model")


# ---------------------------------------------------------------------- helpers
def test_filter_min_count_keeps_columns_on_enough_rows():
    m = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32))
    f = filter_min_count(Features(m, np.array(["a", "b", "c"])), 2)
    assert f.names.tolist() == ["a", "b"] and f.matrix.toarray().tolist() == [[1, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError, match="empty feature set"):
        filter_min_count(Features(m, np.array(["a", "b", "c"])), 4)


def test_normalize_rows_and_describe():
    m = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]], np.float32))
    f = normalize_rows(Features(m, np.array(list("abcd"))))
    assert np.allclose(f.matrix.toarray(), [[0.5**0.5, 0.5**0.5, 0, 0], [0, 0, 0, 0], [0.6, 0, 0, 0.8]])
    d = describe_features(f)
    assert d == {"n_features": 4, "n_rows": 3, "n_rows_with_features": 2, "nnz": 4, "mean_features_per_row": 2.0}


def test_as_features_accepts_sparse_and_dense_and_checks_rows():
    dense = np.array([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    f = as_features(dense, 3)
    assert f.matrix.toarray().tolist() == dense.tolist() and f.names.tolist() == ["f0", "f1"]
    assert as_features(sp.csr_matrix(dense), 3).matrix.nnz == 2
    with pytest.raises(ValueError, match="has 3 rows, expected 4"):
        as_features(dense, 4)
    with pytest.raises(ValueError, match="NaN"):
        as_features(np.array([[np.nan]]), 1)
    with pytest.raises(ValueError, match="empty feature set"):
        as_features(np.zeros((3, 0)), 3)
    with pytest.raises(TypeError):
        as_features("tags", 3)


def test_feature_row_tensor_from_dict_sparse_and_array():
    names = np.array(["genre=Drama", "genre=Comedy", "year=1990s"])
    t = feature_row_tensor({"genre=Comedy": 1, "year=1990s": 0.5}, names)
    assert t.tolist() == [[0.0, 1.0, 0.5]]
    assert feature_row_tensor(sp.csr_matrix([[1.0, 0, 0]]), names).tolist() == [[1.0, 0, 0]]
    assert feature_row_tensor(np.array([0, 0, 2.0]), names).tolist() == [[0, 0, 2.0]]
    with pytest.raises(KeyError, match="genre=Horror"):
        feature_row_tensor({"genre=Horror": 1}, names)
    with pytest.raises(ValueError, match="empty"):
        feature_row_tensor(np.zeros(3), names)
    with pytest.raises(ValueError, match="3 values"):
        feature_row_tensor(np.ones(4), names)


# ---------------------------------------------------------------------- CSV reader
def _write(tmp_path, text, name="feats.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_item_features_multi_hot_values_header_and_int_ids(tmp_path):
    p = _write(tmp_path, "item,feature,value\n10,genre=Drama\n10,year,1.5\n7,genre=Drama,\n\n7, genre=Comedy \n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair here
        f = read_item_features(p, np.array([7, 10]), item_col="item", feature_col="feature", value_col="value")
    assert f.names.tolist() == ["genre=Comedy", "genre=Drama", "year"]
    assert f.matrix.toarray().tolist() == [[1, 1, 0], [0, 1, 1.5]]
    with pytest.warns(DataWarning, match="1 of 3 items have no feature"):
        f = read_item_features(p, np.array([7, 10, 12]), header=True)  # header skipped, columns by position
    assert f.matrix.toarray().tolist() == [[1, 1, 0], [0, 1, 1.5], [0, 0, 0]]


def test_zero_padded_item_ids_are_not_the_integer(tmp_path):
    p = _write(tmp_path, "007,a\n7,b\n")
    with pytest.warns(DataWarning, match=r"1 rows for 1 unknown item id\(s\) dropped \(e\.g\. '007'; first at line 1\)"):
        f = read_item_features(p, np.array([7, 8]))
    assert f.names.tolist() == ["b"] and f.matrix.toarray().tolist() == [[1], [0]]
    g = read_item_features(p, np.array(["007", "7"]))
    assert g.matrix.toarray().tolist() == [[1, 0], [0, 1]]


def test_a_header_by_position_is_refused_unless_told_and_names_must_exist(tmp_path):
    p = _write(tmp_path, "item,feature\n1,a\n")
    with pytest.raises(DataError, match=r"feats\.csv, line 1: looks like a header \('item,feature'"):
        read_item_features(p, np.array([1]))  # positional columns: never read as an item named 'item'
    f = read_item_features(p, np.array([1]), header=True)
    assert f.names.tolist() == ["a"] and f.matrix.toarray().tolist() == [[1]]
    with pytest.warns(DataWarning, match="unknown item id.*'item'"):  # header=False: the first line is data
        f = read_item_features(p, np.array([1]), header=False)
    assert f.names.tolist() == ["a"]
    q = _write(tmp_path, "a,count\nb,time\n", "words.csv")  # feature names are never taken for column names
    assert read_item_features(q, np.array(["a", "b"])).names.tolist() == ["count", "time"]
    with pytest.raises(ValueError, match=r"feats\.csv: the header has no column 'item_id'.*\['item', 'feature'\]"):
        read_item_features(p, np.array([1]), item_col="item_id", feature_col="feature")


def test_feature_file_bom_quotes_and_gzip(tmp_path):
    import gzip

    p = tmp_path / "f.csv.gz"
    p.write_bytes(gzip.compress('\ufeffitem,feature\n"a,1",x\nb,"y, z"\n'.encode()))
    f = read_item_features(p, np.array(["a,1", "b"]), item_col="item", feature_col="feature", value_col="value")
    assert f.names.tolist() == ["x", "y, z"] and f.matrix.toarray().tolist() == [[1, 0], [0, 1]]


def test_read_item_features_string_ids_and_min_count(tmp_path):
    p = _write(tmp_path, "a,x\nb,x\nb,y\nc,x\n")
    f = read_item_features(p, np.array(["a", "b", "c"]), min_count=2)
    assert f.names.tolist() == ["x"] and f.matrix.toarray().ravel().tolist() == [1, 1, 1]


def test_unknown_items_are_counted_and_dropped(tmp_path):
    p = _write(tmp_path, "1,a\n99,a\n98,b\n99,c\n2,b\n")
    with pytest.warns(DataWarning, match=r"3 rows for 2 unknown item id\(s\) dropped .*first at line 2"):
        f = read_item_features(p, np.array([1, 2]))
    assert f.names.tolist() == ["a", "b"] and f.matrix.toarray().tolist() == [[1, 0], [0, 1]]


def test_duplicate_pairs_are_counted_and_the_last_value_kept(tmp_path):
    p = _write(tmp_path, "1,a,1\n1,a,3\n2,a\n1,a,2\n")
    with pytest.warns(DataWarning, match="2 duplicate"):
        f = read_item_features(p, np.array([1, 2]))
    assert f.matrix.toarray().ravel().tolist() == [2.0, 1.0]


def test_items_without_features_are_counted(tmp_path):
    p = _write(tmp_path, "1,a\n")
    with pytest.warns(DataWarning, match="3 of 4 items have no feature"):
        read_item_features(p, np.array([1, 2, 3, 4]))


def test_nan_value_is_an_error_naming_file_and_line(tmp_path):
    p = _write(tmp_path, "1,a,1\n2,b,nan\n")
    with pytest.raises(ValueError, match=r"feats\.csv, line 2: value 'nan' is NaN"):
        read_item_features(p, np.array([1, 2]))
    p = _write(tmp_path, "1,a,inf\n", "inf.csv")
    with pytest.raises(ValueError, match=r"inf\.csv, line 1"):
        read_item_features(p, np.array([1]))


def test_malformed_rows_are_errors_naming_the_line(tmp_path):
    with pytest.raises(ValueError, match="line 2: value 'high' is not a number"):
        read_item_features(_write(tmp_path, "1,a\n1,b,high\n"), np.array([1]))
    with pytest.raises(ValueError, match="line 1: expected 2 or 3 fields separated by ',', got 4 fields"):
        read_item_features(_write(tmp_path, "1,a,1,2\n", "f2.csv"), np.array([1]))
    with pytest.raises(ValueError, match="line 3: expected 2 or 3 fields separated by ',', got 1 fields"):
        read_item_features(_write(tmp_path, "1,a\n1,b,2\nx\n", "f4.csv"), np.array([1]))
    with pytest.raises(ValueError, match="line 2: empty feature name"):
        read_item_features(_write(tmp_path, "1,a\n1, \n", "f3.csv"), np.array([1]))


def test_empty_feature_sets_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no feature rows"):
        read_item_features(_write(tmp_path, ""), np.array([1]))
    with pytest.raises(ValueError, match="no feature rows"):
        read_item_features(_write(tmp_path, "item,feature\n\n", "h.csv"), np.array([1]), header=True)
    with pytest.warns(DataWarning, match="unknown"):
        with pytest.raises(ValueError, match="none of the 1 rows names a known item"):
            read_item_features(_write(tmp_path, "5,a\n", "u.csv"), np.array([1]))
    with pytest.raises(FileNotFoundError):
        read_item_features(tmp_path / "missing.csv", np.array([1]))
