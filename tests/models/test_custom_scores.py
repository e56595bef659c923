"""The retrieval hooks of a model whose user-item score is not a distance between two vectors.

A toy model (CML's tables, its score replaced by a made-up pair score: the max over two halves of the
user row, as a model with two vectors per user would score) checks that exact retrieval ranks the
model's scores with the same filters, chunking and padding as the plain path, that ``recommend``,
``recommend_raw`` and ``recommend_vectors`` all go through the hooks, and that approximate
retrieval is refused by default with a message naming the model.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.errors import ConfigError
from metricrec.models import retrieval_api
from metricrec.models.cml.model import CML
from metricrec.models.retrieval import top_n, top_n_of_scores


class _TwoHalves(CML):
    """CML's tables read as two (d/2)-vectors per user and per item; score = max of the halves' dot."""

    model_name = ""  # not registered: a test double
    custom_user_scores = True

    def _query_scores(self, q):
        item = self.item_embeddings
        h = item.shape[1] // 2
        return np.maximum(q[:, :h] @ item[:, :h].T, q[:, h:] @ item[:, h:].T).astype(np.float32)


def _slow_top(scores, n, liked=(), blocked=(), only=None):
    """Best n by a sort of (-score, index) over the allowed columns; -1/-inf padded."""
    allowed = [j for j in range(len(scores)) if j not in liked and j not in blocked and (only is None or j in only)]
    best = sorted(allowed, key=lambda j: (-scores[j], j))[:n]
    ids = best + [-1] * (n - len(best))
    vals = [scores[j] for j in best] + [-np.inf] * (n - len(best))
    return np.array(ids), np.array(vals, dtype=np.float32)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    m = _TwoHalves(factors=8, epochs=1, show_progress=False, verbose=False)
    train = sp.random(30, 40, density=0.2, random_state=1, format="csr")
    m.fit(train)
    # replace the tables by arbitrary ones: the hooks, not the training, are under test
    m._user.copy_(m._user.new_tensor(rng.normal(size=(30, 8)).astype(np.float32)))
    m._item.copy_(m._item.new_tensor(rng.normal(size=(40, 8)).astype(np.float32)))
    return m, train


def test_top_n_of_scores_matches_a_slow_sort_with_filters_and_padding():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 9)).astype(np.float32)
    s[0, 3] = s[0, 5]  # a tie: the lower index first
    excl = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 1, 1], [2, 0, 8])), shape=(4, 9))
    ids, vals = top_n_of_scores(s.copy(), 12, exclude=excl, filter_ids=np.array([4]), only_ids=None)
    for r in range(4):
        want_ids, want_vals = _slow_top(s[r], 12, liked=set(excl[r].indices), blocked={4})
        assert np.array_equal(ids[r], want_ids)
        assert np.array_equal(vals[r], want_vals)
    only_ids, _ = top_n_of_scores(s.copy(), 3, only_ids=np.array([1, 6]))
    assert np.array_equal(only_ids[0][:2], _slow_top(s[0], 2, only={1, 6})[0]) and only_ids[0][2] == -1


def test_top_n_of_scores_ranks_as_top_n_for_a_dot_model():
    # the plain path's ranking, computed from the same scores: the same ids, bitwise the same scores
    rng = np.random.default_rng(4)
    q, cand = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    want = top_n(q, cand, 7, distance="dot")
    got = top_n_of_scores(q @ cand.T, 7)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_recommend_goes_through_the_model_scores(toy):
    m, train = toy
    scores = m._query_scores(m.user_embeddings)
    ids, vals = m.recommend(np.arange(30), train, N=6, filter_items=[0, 1])
    for u in range(30):
        want_ids, want_vals = _slow_top(scores[u], 6, liked=set(train[u].indices), blocked={0, 1})
        assert np.array_equal(ids[u], want_ids)
        np.testing.assert_array_equal(vals[u], want_vals)  # the same float32 products, ranked, not recomputed
    one, _ = m.recommend(3, train[3], N=6, filter_items=[0, 1])
    assert np.array_equal(one, ids[3])
    raw = m.recommend_raw([3], N=6)[0][0]
    assert np.array_equal(raw, _slow_top(scores[3], 6, liked=set(train[3].indices))[0])


def test_score_blocks_are_chunked_and_the_result_is_the_same(toy, monkeypatch):
    m, train = toy
    whole = m.recommend_vectors(m.user_embeddings, 5, exclude=train)
    calls = []
    real = m._query_scores
    monkeypatch.setattr(m, "_query_scores", lambda q: calls.append(len(q)) or real(q))
    monkeypatch.setattr(retrieval_api, "SCORE_BLOCK_BYTES", 4 * 40 * 7)  # 7 users per block
    chunked = m.recommend_vectors(m.user_embeddings, 5, exclude=train)
    assert calls == [7, 7, 7, 7, 2]
    assert np.array_equal(chunked[0], whole[0]) and np.array_equal(chunked[1], whole[1])


def test_approximate_is_refused_by_default_naming_the_model(toy):
    m, train = toy
    with pytest.raises(ConfigError, match="_TwoHalves .*exact retrieval"):
        m.recommend(0, train[0], N=3, approximate=True)


def test_similar_items_stays_a_plain_distance(toy):
    m, _ = toy
    ids, _ = m.similar_items(2, N=3)
    assert ids[0] == 2  # the item itself first: the item table's own Euclidean ranking
