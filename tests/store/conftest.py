"""Fixtures shared by the store tests: a fresh store per test and helpers to compare results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charlstm.service.store import LocalStore


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def scratch_entries(root: Path) -> list[str]:
    """What is left in the store's folder of partial writes."""
    return sorted(p.name for p in (root / "models" / ".tmp").iterdir())


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_root: Path) -> LocalStore:
    return LocalStore(store_root)
