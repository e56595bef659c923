"""The sampler's compiled kernels come from numba's on-disk cache in a second process (they were
closures once, which numba cannot cache: every process compiled them again, ~1.6 s)."""

import subprocess
import sys

import pytest

pytest.importorskip("numba")

_PROBE = """
import numpy as np, scipy.sparse as sp
from metricrec.training.sampling import PositiveSet
from metricrec.training import sampling_kernels as k
m = sp.random(30, 40, density=0.2, format="csr", random_state=0)
PositiveSet(m)  # builds its filter with the compiled kernel
print(sum(k.build.stats.cache_hits.values()))
"""


def test_a_second_process_loads_the_sampler_kernels_from_the_cache():
    runs = [subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert int(runs[1].stdout.split()[-1]) >= 1
