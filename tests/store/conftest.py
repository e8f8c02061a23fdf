"""Fixtures shared by the store tests.

``backend`` and ``store`` are parametrised over both backends: ``local`` (a fresh directory) and
``s3`` (a fresh prefix on the session's SeaweedFS server, see ``tests/s3_server.py``). Tests that
are about one backend's own mechanics use ``store_root``/``LocalStore`` directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charlstm.service.store import CheckpointStore, LocalStore

from .backends import LocalBackend, S3Backend


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def scratch_entries(root: Path) -> list[str]:
    """What is left in the local store's folder of partial writes."""
    return sorted(p.name for p in (root / "models" / ".tmp").iterdir())


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def local_store(store_root: Path) -> LocalStore:
    return LocalStore(store_root)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, store_root: Path) -> LocalBackend | S3Backend:
    if request.param == "local":
        return LocalBackend(store_root)
    server = request.getfixturevalue("seaweedfs")
    return S3Backend(server, server.location())


@pytest.fixture
def store(backend: LocalBackend | S3Backend) -> CheckpointStore:
    return backend.open()
