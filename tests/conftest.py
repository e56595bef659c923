"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test problem is tiny: one thread is fastest, and immune to a busy machine
    (OpenMP threads waiting on each other turn a 0.3 s fit into tens of seconds there)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
