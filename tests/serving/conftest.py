"""Fixtures of the serving tests."""

import pytest

from serving_fixtures import fit_tiny_model


@pytest.fixture(scope="session")
def tiny_model():
    return fit_tiny_model(0)
