"""The shared behaviour suite on CML, once per backend."""

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
