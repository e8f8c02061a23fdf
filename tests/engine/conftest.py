"""Fixtures for the engine tests (helpers live in engine_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine.blas import blas_threads


@pytest.fixture(autouse=True)
def _single_blas_thread(request):
    """The quick tests use small matrices, for which one BLAS thread is as fast as two and is
    not slowed down many times over by busy neighbours on a shared machine. Slow tests
    choose for themselves."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    with blas_threads(1):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
