"""One behaviour suite for every embedding model and backend (as implicit's RecommenderBaseTestMixin).

A model's test module subclasses :class:`RecommenderBehaviour` and says how to build the model;
every test here then runs against it, on synthetic data with planted clusters.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.errors import ConfigError, NotFittedError, UnknownIdError
from metricrec.metrics import evaluate_part
from metricrec.models.base import load_model
from tolerances import assert_rankings_agree


@pytest.fixture(scope="module")
def data_split():
    # weak popularity, strong clusters: what a model must find is the planted structure
    return ratio_split(generate(preset="small", seed=3, popularity_exponent=0.3, cluster_affinity=0.95), seed=0)


@pytest.fixture(scope="class")
def fitted(request, data_split):
    """The suite's model, fitted once per test class."""
    return request.cls().make(epochs=15).fit(data_split.train, data_split.valid)


class RecommenderBehaviour:
    """Subclasses define ``make(**config)`` returning an unfitted model (quiet, small); their module
    imports the ``data_split`` and ``fitted`` fixtures from here."""

    def make(self, **kw):  # pragma: no cover - overridden
        raise NotImplementedError

    def test_learns_the_planted_structure_far_above_popularity(self, fitted, data_split):
        ours = evaluate_part(fitted.scorer(), data_split, "test", ks=(20,), metrics=("recall",))["recall@20"]
        counts = np.asarray(data_split.train.matrix.sum(0)).ravel().astype(np.float32)
        import torch

        popular = evaluate_part(lambda u: torch.from_numpy(np.tile(counts, (len(u), 1))), data_split, "test",
                                ks=(20,), metrics=("recall",))["recall@20"]
        assert ours > 1.5 * popular, (ours, popular)

    def test_recommend_shapes_order_and_filters(self, fitted, data_split):
        train = data_split.train.matrix
        ids, scores = fitted.recommend(0, train[0], N=7)
        assert ids.shape == scores.shape == (7,)
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        assert not set(ids) & set(train[0].indices)  # liked items filtered
        many, many_scores = fitted.recommend(np.arange(5), train[:5], N=4)
        assert many.shape == (5, 4)
        # five users score in one GEMM, one user in a GEMV: the same list up to ties within rounding
        assert_rankings_agree(many[0], many_scores[0], ids[:4], scores[:4])
        blocked, _ = fitted.recommend(0, train[0], N=5, filter_items=ids[:2])
        assert not set(blocked) & set(ids[:2])
        only, _ = fitted.recommend(0, None, N=3, filter_already_liked_items=False, items=[1, 2, 3])
        assert sorted(only) == [1, 2, 3]

    def test_recommend_ranks_exactly_as_the_scorer(self, fitted):
        n_items = fitted.item_embeddings.shape[0]
        ids, _ = fitted.recommend(2, None, N=n_items, filter_already_liked_items=False)
        full = fitted.scorer()(np.array([2])).numpy()[0]
        assert np.allclose(np.sort(full)[::-1][:10], full[ids[:10]], atol=1e-4)

    def test_short_lists_are_padded_with_minus_one(self, fitted):
        ids, scores = fitted.recommend(0, None, N=5, filter_already_liked_items=False, items=[4, 5])
        assert list(ids[2:]) == [-1, -1, -1] and np.all(np.isneginf(scores[2:]))

    def test_similar_items_and_users_start_with_the_query(self, fitted):
        if fitted.distance != "euclidean":
            pytest.skip("only a metric puts the query first")
        assert fitted.similar_items(3, N=4)[0][0] == 3
        assert fitted.similar_users(7, N=4)[0][0] == 7

    def test_bad_input_gets_the_library_errors(self, fitted, data_split):
        with pytest.raises(UnknownIdError):
            fitted.recommend(10**6, None, filter_already_liked_items=False)
        with pytest.raises(ConfigError, match="N must be"):
            fitted.recommend(0, None, N=0, filter_already_liked_items=False)
        with pytest.raises(NotFittedError):
            self.make().recommend(0, None, filter_already_liked_items=False)

    # bitwise below: a round trip copies the bytes, and a seeded run repeated in one process runs
    # the same kernels with the same thread count, which the trainer makes deterministic
    def test_save_and_load_round_trip_exactly(self, fitted, tmp_path):
        path = fitted.save(tmp_path / "m")
        again = load_model(path)
        assert type(again) is type(fitted) and again.config == fitted.config
        assert np.array_equal(again.user_embeddings, fitted.user_embeddings)
        assert np.array_equal(again.item_embeddings, fitted.item_embeddings)
        assert again.history.best_epoch == fitted.history.best_epoch
        assert [e.loss for e in again.history.epochs] == [e.loss for e in fitted.history.epochs]

    def test_same_seed_same_model(self, data_split):
        a = self.make(epochs=2).fit(data_split.train)
        b = self.make(epochs=2).fit(data_split.train)
        assert np.array_equal(a.user_embeddings, b.user_embeddings)

    def test_fit_partial_continues_where_it_stopped(self, data_split):
        # epochs=2 throughout: the learning-rate schedule spans the config's epochs
        one = self.make(epochs=2).fit_partial(data_split.train).fit_partial(data_split.train)
        two = self.make(epochs=2).fit_partial(data_split.train, epochs=2)
        assert len(one.history.epochs) == 2 and one.last_epoch_seconds > 0
        assert np.array_equal(one.user_embeddings, two.user_embeddings)
        assert np.array_equal(one.item_embeddings, two.item_embeddings)
        full = self.make(epochs=2).fit(data_split.train)
        assert np.array_equal(full.item_embeddings, two.item_embeddings)  # same loop, same numbers

    def test_training_refuses_bad_data(self):
        with pytest.raises(ValueError, match="no positive"):
            self.make().fit(sp.csr_matrix((4, 5)))
        with pytest.raises(ConfigError):
            self.make(epochs=0)

    def test_implicit_ranking_metrics_take_the_default_ids(self, fitted, data_split):
        implicit_eval = pytest.importorskip("implicit.evaluation")
        train, test = sp.csr_matrix(data_split.train.matrix), sp.csr_matrix(data_split.test.matrix)
        got = implicit_eval.ranking_metrics_at_k(fitted, train, test, K=10, show_progress=False)
        # implicit's precision@K divides the hits by min(K, |test|); recomputed from recommend's lists
        ids, _ = fitted.recommend(np.arange(train.shape[0]), train, N=10)
        counts = np.diff(test.indptr)
        hits = sum(len(set(test[u].indices.tolist()) & set(ids[u].tolist())) for u in np.flatnonzero(counts))
        assert got["precision"] == pytest.approx(hits / np.minimum(counts, 10).sum(), rel=1e-6)

    def test_a_dataframe_with_string_ids_and_new_ids_of_any_length(self, data_split):
        pd = pytest.importorskip("pandas")
        train = data_split.train
        u, i, _ = train.to_coo_arrays()
        df = pd.DataFrame({"user": [f"U{x}" for x in train.user_ids[u]], "item": [f"I{x}" for x in train.item_ids[i]]})
        m = self.make(epochs=2).fit(df)
        n_users, n_items = m.user_embeddings.shape[0], m.item_embeddings.shape[0]
        long_item, long_user = "I-new-and-longer-than-any-known-item", "U-new-and-longer-than-any-known-user"
        assert m.add_items([long_item], m.item_embeddings[:1]).tolist() == [n_items]
        liked = [long_item, df["item"].iloc[0]]
        assert m.partial_fit_users([long_user], [liked], epochs=2).tolist() == [n_users]
        assert m.user_ids[-1] == long_user and m.item_ids[-1] == long_item
        items, _ = m.recommend_raw([long_user], N=10)[0]
        assert len(items) == 10 and not set(liked) & set(items.tolist())
        assert set(items.tolist()) <= set(m.item_ids.tolist())
