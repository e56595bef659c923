"""Id maps that grow: new users and items with ids of any length or kind keep their exact ids,
through recommend_raw and a save/load round trip (no pickle)."""

import zipfile

import numpy as np
import pytest

from metricrec import CML, Interactions
from metricrec.data.synthetic import generate
from metricrec.errors import DataError
from metricrec.models import load_model
from tolerances import SCORE_ATOL, assert_top_k_of

LONG_USER = "U-a-much-longer-id-than-any-trained-one"


@pytest.fixture(scope="module")
def data():
    """Planted clusters under string ids 'U1'..'U300' and 'I1'..'I200' (widths 2 to 4)."""
    base = generate(preset="small", seed=1, popularity_exponent=0.3, cluster_affinity=0.95)
    users = np.array([f"U{k + 1}" for k in range(base.n_users)])
    items = np.array([f"I{k + 1}" for k in range(base.n_items)])
    return Interactions(base.matrix, users, items)


def _fitted(data):
    return CML(factors=8, batch_size=500, epochs=3, show_progress=False, verbose=False).fit(data)


def _hand_scores(model, row):
    """Negative Euclidean distances of a user to every item, in float64 from the tables."""
    u = model.user_embeddings[row].astype(np.float64)
    return -np.sqrt(((model.item_embeddings.astype(np.float64) - u) ** 2).sum(1))


def test_new_users_keep_ids_longer_than_any_known_one(data):
    m = _fitted(data)
    before = m.user_ids.copy()
    n = len(before)
    liked = [["I1", "I2"], ["I3"], ["I4", "I5", "I6"]]
    rows = m.partial_fit_users(["U1", LONG_USER, "newbie"], liked, epochs=2)
    assert rows.tolist() == [int(np.flatnonzero(before == "U1")[0]), n, n + 1]
    assert m.user_ids[n:].tolist() == [LONG_USER, "newbie"]  # not cut to the old width ('U-a-')
    assert np.array_equal(m.user_ids[:n], before)
    assert m.user_index([LONG_USER, "newbie", "U300"]).tolist() == [n, n + 1, int(np.flatnonzero(before == "U300")[0])]
    # the new user's list: its liked items left out, the rest ranked by distance (checked by hand)
    items, scores = m.recommend_raw([LONG_USER], N=10)[0]
    assert len(items) == 10 and "I3" not in items.tolist()
    ref = _hand_scores(m, n)
    ref[m.item_index(["I3"])] = -np.inf
    assert_top_k_of(m.item_index(items.tolist()), ref)
    np.testing.assert_allclose(scores, ref[m.item_index(items.tolist())], rtol=0, atol=SCORE_ATOL)
    assert m.user_items[n].indices.tolist() == m.item_index(["I3"]).tolist()


def test_new_items_keep_long_ids_and_can_be_recommended(data):
    m = _fitted(data)
    n_items = len(m.item_ids)
    user_vec = m.user_embeddings[0]
    cols = m.add_items(["Item-with-a-long-new-id", "J"], np.stack([user_vec, -user_vec]))
    assert cols.tolist() == [n_items, n_items + 1]
    assert m.item_ids[n_items:].tolist() == ["Item-with-a-long-new-id", "J"]
    items, scores = m.recommend_raw(["U1"], N=3)[0]
    assert items[0] == "Item-with-a-long-new-id" and scores[0] == pytest.approx(0.0, abs=1e-5)
    # a new user who liked the new item: it is filtered from their own list, found by its full id
    m.partial_fit_users(["brand-new-user"], [["Item-with-a-long-new-id", "I7"]], epochs=2)
    got, _ = m.recommend_raw(["brand-new-user"], N=20)[0]
    assert not {"Item-with-a-long-new-id", "I7"} & set(got.tolist())


def test_int_like_ids_join_a_map_of_strings_as_their_text(data):
    m = _fitted(data)
    n = len(m.user_ids)
    rows = m.partial_fit_users([123456789012, "987654321", "007"], [["I1"], ["I2"], ["I3"]], epochs=2)
    assert sorted(rows.tolist()) == [n, n + 1, n + 2]
    assert m.user_ids[rows].tolist() == ["123456789012", "987654321", "007"]  # full text, not 'U300'-wide
    # the id rule: an int finds the text of its decimal digits, "007" stays its own id
    got = m.user_index([123456789012, "123456789012", 987654321, "007"]).tolist()
    assert got == [rows[0], rows[0], rows[1], rows[2]]
    assert m.user_items[rows[2]].indices.tolist() == m.item_index(["I3"]).tolist()
    a, b = m.recommend_raw([123456789012], N=5)[0], m.recommend_raw(["123456789012"], N=5)[0]
    assert a[0].tolist() == b[0].tolist()


def test_a_map_of_integer_ids_refuses_a_string_and_stays_as_it_was():
    m = CML(factors=8, batch_size=500, epochs=2, show_progress=False, verbose=False)
    m.fit(generate(preset="small", seed=2))
    n, ids = m.user_embeddings.shape[0], m.user_ids.copy()
    with pytest.raises(DataError, match="'newbie' is not one"):
        m.partial_fit_users([10**15, "newbie"], [[0], [1]], epochs=1)  # names the one that is no integer
    assert m.user_embeddings.shape[0] == n and np.array_equal(m.user_ids, ids)
    rows = m.partial_fit_users([10**15], [[m.item_ids[0]]], epochs=1)  # a long integer fits
    assert rows.tolist() == [n] and m.user_ids[-1] == 10**15 and m.user_ids.dtype == np.int64


@pytest.mark.parametrize("target", ["m", "m.npz"])
def test_long_new_ids_survive_save_and_load_without_pickle(data, tmp_path, target):
    m = _fitted(data)
    m.partial_fit_users([LONG_USER], [["I1", "I2"]], epochs=2)
    m.add_items(["Item-with-a-long-new-id"], m.user_embeddings[-1][None, :])
    path = m.save(tmp_path / target)
    weights = path / "weights.npz" if path.is_dir() else path
    with np.load(weights, allow_pickle=False) as z:  # every array plain numbers: nothing to unpickle
        assert all(z[k].dtype.kind in "biuf" for k in z.files)
    with zipfile.ZipFile(weights) as z:
        assert all(name.endswith(".npy") for name in z.namelist())
    again = load_model(path)
    assert np.array_equal(again.user_ids, m.user_ids) and np.array_equal(again.item_ids, m.item_ids)
    assert again.user_ids[-1] == LONG_USER and again.item_ids[-1] == "Item-with-a-long-new-id"
    got, want = again.recommend_raw([LONG_USER], N=5)[0], m.recommend_raw([LONG_USER], N=5)[0]
    assert got[0].tolist() == want[0].tolist() and np.array_equal(got[1], want[1])  # the same bytes, same kernel
    assert "I1" not in got[0].tolist() and "Item-with-a-long-new-id" == got[0][0]
    # and the loaded map grows again, past the longest id it was saved with
    again.partial_fit_users([LONG_USER + "-and-more"], [["I3"]], epochs=1)
    assert again.user_ids[-1] == LONG_USER + "-and-more"
