"""The shared behaviour suite on CML, once per backend."""

import numpy as np
import pytest

from metricrec import CML
from metricrec.training.backends import BACKENDS, NUMBA, TORCH
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401


class TestCMLTorch(RecommenderBehaviour):
    def make(self, **kw):
        return CML(factors=16, batch_size=500, kernel=TORCH, show_progress=False, verbose=False, **kw)


@pytest.mark.skipif(not BACKENDS[NUMBA].available(), reason="numba is not installed")
class TestCMLNumba(RecommenderBehaviour):
    def make(self, **kw):
        return CML(factors=16, batch_size=500, kernel=NUMBA, show_progress=False, verbose=False, **kw)


def test_fit_partial_carries_the_random_stream_of_cml_f(data_split):
    """CML+F's dropout draws from torch's RNG: epoch by epoch it must continue, not restart."""
    kw = dict(factors=8, batch_size=500, feature_weight=1.0, feature_hidden=(16,), feature_dropout=0.5, kernel=TORCH,
              show_progress=False, verbose=False)
    one = CML(**kw).fit_partial(data_split.train, epochs=2)
    two = CML(**kw).fit_partial(data_split.train).fit_partial(data_split.train)
    assert np.array_equal(one.item_embeddings, two.item_embeddings)
