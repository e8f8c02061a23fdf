"""Fixtures shared by every test folder.

- ``seaweedfs``: (session) a real SeaweedFS S3 server on 127.0.0.1 (see ``s3_server.py``);
  tests that use it are skipped, with the reason, only when ``weed`` cannot start.
- ``mpirun``: the ``mpirun -np`` prefix for tests marked ``mpi`` (without ``-np``'s value). They
  skip, saying what to install, when OpenMPI's mpirun or mpi4py is missing, unless
  ``CHARLSTM_REQUIRE_MPI=1`` (set by ``.ci/run``) makes that a failure. As root it also sets the
  two variables OpenMPI wants before it runs as root (CI runs as root).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
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


@pytest.fixture
def mpirun(monkeypatch) -> list[str]:
    missing = None
    if shutil.which("mpirun") is None:
        missing = "mpirun not found: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)"
    elif importlib.util.find_spec("mpi4py") is None:
        missing = "mpi4py not installed: pip install 'charlstm[mpi]'"
    if missing:
        if os.environ.get("CHARLSTM_REQUIRE_MPI") == "1":
            pytest.fail(f"CHARLSTM_REQUIRE_MPI=1 but {missing}")
        pytest.skip(missing)
    cmd = [shutil.which("mpirun"), "--oversubscribe", "-np"]
    if os.geteuid() == 0:
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return cmd
