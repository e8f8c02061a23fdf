"""Fixtures shared by every test folder.

- ``seaweedfs``: (session) a real SeaweedFS S3 server on 127.0.0.1 (see ``s3_server.py``);
  tests that use it are skipped, with the reason, only when ``weed`` cannot start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s3_server import SeaweedFS, SeaweedUnavailable, start_seaweedfs


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except SeaweedUnavailable as exc:
        pytest.skip(f"SeaweedFS is not available: {exc}")
    try:
        yield server
    finally:
        server.stop()
