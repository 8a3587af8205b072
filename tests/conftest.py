"""Shared pytest configuration: hypothesis profile, kernel/thread restore."""

from __future__ import annotations

import os
from collections.abc import Iterator

import dynquant as dq
import numpy as np
import pytest
from dynquant import _core
from hypothesis import HealthCheck, settings

# Modest example counts keep the whole suite well under three minutes on a
# shared two-core machine; DYNQUANT_HYPOTHESIS_EXAMPLES raises them locally.
settings.register_profile(
    "dynquant",
    max_examples=int(os.environ.get("DYNQUANT_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("dynquant")


@pytest.fixture(autouse=True)
def _restore_kernel_and_threads() -> Iterator[None]:
    """Tests that force a kernel path, a GEMM form or a thread count must
    not leak it."""
    before = dq.kernel_info()
    yield
    _core.set_gemm_form("auto")
    after = dq.kernel_info()
    if after.isa != before.isa:
        dq.set_kernel(before.isa)  # e.g. the path DYNQUANT_KERNEL chose for this run
    if after.threads != before.threads:
        dq.set_num_threads(0)
        if dq.kernel_info().threads != before.threads:
            dq.set_num_threads(before.threads)


@pytest.fixture
def two_threads() -> None:
    """Two worker threads whatever the machine or RAYON_NUM_THREADS, for
    tests of the parallel paths (restored by the fixture above)."""
    dq.set_num_threads(2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
