"""CML+F's defaults: row-normalised input to f (saved with it), the lambda_f rule from the features' shape."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML
from metricrec.data.interactions import Features
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.models.cml.feature_net import FeatureMLP, SparseRows
from metricrec.models.cml.feature_reg import DEFAULT_FEATURE_WEIGHT, default_feature_weight, feature_resolution


def _rows():
    return sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 0, 0, 0], [3, 3, 3, 3], [0, 5, 0, 0]], dtype=np.float32))


def test_row_norm_is_the_map_of_unit_rows_in_every_layout():
    x = _rows()
    f = FeatureMLP(4, 3, (5,), 0.0, seed=0, row_norm=True).eval()
    plain = FeatureMLP(4, 3, (5,), 0.0, seed=0).eval()
    dense = torch.from_numpy(x.toarray())
    unit = dense / dense.norm(dim=1, keepdim=True).clamp_min(1e-12)
    want = plain(unit)
    for got in (f(SparseRows(x).gather(None)), f(dense), f(dense.to_sparse_coo()),
                f(SparseRows(x).gather(torch.tensor([0, 1, 2, 3])))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # scaling a row changes nothing
    torch.testing.assert_close(f(dense * 7.0), f(dense), atol=1e-5, rtol=1e-5)
    assert f.shape_doc()["row_norm"] is True and plain.shape_doc()["row_norm"] is False


def test_resolution_and_default_weight():
    # 4 rows with features: two identical, so 3 distinct of 4
    m = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32))
    assert feature_resolution(m) == pytest.approx(3 / 4)
    assert default_feature_weight(Features(m, np.array(["a", "b"]))) == pytest.approx(DEFAULT_FEATURE_WEIGHT * 9 / 16)
    assert feature_resolution(sp.csr_matrix((3, 2))) == 0.0
    values = sp.csr_matrix(np.array([[0.5], [0.25], [0.5]], dtype=np.float32))  # values count, not just columns
    assert feature_resolution(values) == pytest.approx(2 / 3)


def test_a_model_with_row_norm_saves_and_places_items_the_same(tmp_path):
    data = generate(preset="small", seed=0)
    split = ratio_split(data, seed=0)
    m = CML(factors=8, epochs=2, batch_size=256, feature_weight=5.0, show_progress=False, verbose=False)
    m.fit(split.train, item_features=data.item_features)
    assert m.config.feature_row_norm and m._item_mlp.row_norm
    m.save(tmp_path / "m")
    back = CML.load(tmp_path / "m")
    assert back._item_mlp.row_norm
    feats = data.item_features
    np.testing.assert_allclose(back.item_vectors_from_features(feats), m.item_vectors_from_features(feats), atol=1e-6)
    # doubling every feature value places every item at the same point
    doubled = Features(feats.matrix * 2.0, feats.names)
    np.testing.assert_allclose(back.item_vectors_from_features(doubled), m.item_vectors_from_features(feats), atol=1e-5)


def test_item_features_from_python_get_the_clis_default_weight():
    data = generate(preset="small", seed=0)
    feats = data.item_features
    want = default_feature_weight(feats)
    assert want > 0
    kw = dict(factors=8, epochs=2, batch_size=256, show_progress=False, verbose=False)
    auto = CML(**kw).fit(data, item_features=feats)  # feature_weight left at 0
    assert auto.config.feature_weight == pytest.approx(want) and auto.feature_info["weight"] == pytest.approx(want)
    given = CML(feature_weight=want, **kw).fit(data, item_features=feats)
    # bitwise: the same weight, seed and kernel in one process train the same model
    assert np.array_equal(auto.item_embeddings, given.item_embeddings)
    # a weight the model chose is not the caller's: a later fit without features trains without them
    auto.fit(data.with_matrix(data.matrix))
    assert auto.config.feature_weight == 0 and auto._item_mlp is None and auto.feature_info is None
    # a weight the caller gave stays as given
    assert CML(feature_weight=2.5, **kw).fit(data, item_features=feats).feature_info["weight"] == 2.5
    with pytest.raises(ValueError, match="no item has any feature"):
        CML(**kw).fit(data, item_features=sp.csr_matrix(feats.matrix.shape, dtype=np.float32))
    with pytest.raises(TypeError, match="item_features must be"):
        CML(**kw).fit(data, item_features="tags")
