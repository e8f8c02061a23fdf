"""Replicas of ``charlstm serve`` as real processes on one store, so that a test can SIGKILL one.

Every replica gets ``--shared-store`` (job records, corpora and leases in the store's records),
a short ``--refresh-seconds`` and ``--lease-seconds`` so that the tests are quick, its own
``--replica-id`` and a free port, read from its JSON start-up log line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

T = TypeVar("T")

# Repetitive enough that a 16-unit LSTM learns it within a hundred steps.
CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 150
REFRESH_SECONDS = 0.5
LEASE_SECONDS = 3.0


def tiny_hyperparameters(**overrides) -> pb.Hyperparameters:
    """A small, fast model (a worker trains hundreds of steps a second)."""
    fields = dict(embedding_size=8, hidden_size=16, num_layers=1, seq_len=16, batch_size=4,
                  steps=120, eval_every=40, learning_rate=0.01, checkpoint_every=50)
    fields.update(overrides)
    return pb.Hyperparameters(**fields)


class Replica:
    """``charlstm serve --shared-store`` in a child process on 127.0.0.1 and a free port."""

    def __init__(self, store: str | Path, name: str, *extra: str, env: dict | None = None):
        self.name = name
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charlstm.service.server", "--host", "127.0.0.1",
             "--port", "0", "--store", str(store), "--shared-store",
             "--refresh-seconds", str(REFRESH_SECONDS), "--lease-seconds", str(LEASE_SECONDS),
             "--replica-id", name, "--grace-period", "2", "--log-format", "json", *(extra or ("--metrics-port", "off"))],
            stderr=subprocess.PIPE, text=True, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )
        self.port = self._read_port()
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = charlstm_pb2_grpc.CharLstmStub(self.channel)

    def _read_port(self) -> int:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if '"server_started"' in line:
                started = json.loads(line)
                self.metrics_port = started.get("metrics_port")
                return int(started["port"])
        raise AssertionError(f"replica {self.name} did not start (exit code "
                             f"{self.process.wait()}):\n{''.join(self.log[-20:])}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def events(self, name: str) -> list[dict]:
        """This replica's JSON log lines whose event is ``name``."""
        found = []
        for line in list(self.log):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == name:
                found.append(entry)
        return found

    def kill(self) -> None:
        """SIGKILL: no drain, no checkpoint, no lease release."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.channel.close()

    def stop(self) -> None:
        """SIGTERM and wait for the drain (the channel stays open: calls may still be read)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
