"""``model.fit(DataFrame)``: columns found by name, the same model as from the same interactions
built by hand, clear errors for what is missing."""

import sys

import numpy as np
import pytest

from metricrec import CML, Interactions
from metricrec.data.synthetic import generate
from metricrec.errors import DataError, UnknownIdError
from metricrec.models.bpr import BPR
from metricrec.models.frames import is_dataframe

pd = pytest.importorskip("pandas")


def _quiet(cls=CML, **kw):
    return cls(factors=8, batch_size=500, epochs=2, show_progress=False, verbose=False, **kw)


@pytest.fixture(scope="module")
def frame():
    """The planted-cluster data as rows: string users, integer items, a rating, an unused column."""
    data = generate(preset="small", seed=1, popularity_exponent=0.3, cluster_affinity=0.95)
    u, i, _ = data.to_coo_arrays()
    rng = np.random.default_rng(0)
    return pd.DataFrame({"user": [f"u{x}" for x in data.user_ids[u]], "item": data.item_ids[i],
                         "rating": rng.integers(1, 6, size=u.size).astype(float), "title": "t"})


@pytest.mark.parametrize("cls", [CML, BPR])
def test_a_dataframe_trains_the_model_its_interactions_train(frame, cls):
    by_hand = Interactions.from_arrays(frame["user"].to_numpy(), frame["item"].to_numpy())
    a, b = _quiet(cls).fit(frame), _quiet(cls).fit(by_hand)
    # bitwise: the same matrix, seed and kernel in one process
    assert np.array_equal(a.user_embeddings, b.user_embeddings) and np.array_equal(a.item_embeddings, b.item_embeddings)
    assert np.array_equal(a.user_ids, by_hand.user_ids) and np.array_equal(a.item_ids, by_hand.item_ids)
    liked = set(frame.loc[frame["user"] == "u5", "item"].tolist())
    items, _ = a.recommend_raw(["u5"], N=10)[0]
    assert len(items) == 10 and not liked & set(items.tolist())


def test_other_names_of_the_columns_and_weights(frame):
    renamed = frame.rename(columns={"user": "userId", "item": "item_id", "rating": "weight"})
    zero = renamed.copy()
    zero.loc[zero.index[:40], "weight"] = 0.0  # a weight of 0 is no positive, as a zero matrix entry
    m = _quiet().fit(zero)
    assert m.user_items.nnz == len(frame) - 40
    first = zero.iloc[0]
    assert m.item_index([first["item_id"]])[0] not in m.user_items[m.user_index([first["userId"]])[0]].indices


def test_a_validation_frame_is_read_in_the_training_ids(frame):
    valid = frame.iloc[::5]
    train = frame.drop(valid.index)
    m = CML(factors=8, batch_size=500, epochs=3, patience=0, lr_schedule="constant", show_progress=False,
            verbose=False).fit(train, valid)
    # validated on the frame's rows: every user with a held-out row counts
    assert len(m.history.epochs) == 3 and m.history.epochs[-1].valid["n_users"] == valid["user"].nunique()
    stranger = pd.DataFrame({"user": ["nobody"], "item": [frame["item"].iloc[0]]})
    with pytest.raises(UnknownIdError, match="nobody"):
        _quiet().fit(train, stranger)
    with pytest.raises(TypeError, match="valid is a DataFrame"):
        _quiet().fit(Interactions.from_arrays(train["user"], train["item"]).matrix, valid)


def test_missing_or_ambiguous_columns_are_named(frame):
    with pytest.raises(DataError, match=r"no item column \(one of 'item', 'item_id', 'itemId'\).*'movie'"):
        _quiet().fit(frame.rename(columns={"item": "movie"}))
    with pytest.raises(DataError, match="2 user columns \\('user', 'user_id'\\)"):
        _quiet().fit(frame.assign(user_id=frame["user"]))
    with pytest.raises(ValueError, match="'rating'.*missing"):
        _quiet().fit(frame.assign(rating=np.where(np.arange(len(frame)) == 3, np.nan, frame["rating"])))
    with pytest.raises(TypeError, match="pandas DataFrame"):
        _quiet().fit([[0, 1]])


def test_without_pandas_the_error_says_how_to_install_it(frame, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # "import pandas" now fails
    assert is_dataframe(frame) and not is_dataframe(frame.to_numpy())
    with pytest.raises(ImportError, match=r"metricrec\[pandas\]"):
        _quiet().fit(frame)
