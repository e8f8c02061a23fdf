"""Two servers on one store directory (``--shared-store``): what one replica writes serves on the
other within ``--refresh-seconds``, and in between the store is not read on every request."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from serving_helpers import train_tiny, wait_for, wait_out_local_refresh

from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

REFRESH = 0.4


class CountingStore:
    """Wraps a store, counting ``resolve`` calls."""

    def __init__(self, store) -> None:
        self._store = store
        self.resolves = 0

    def resolve(self, *args, **kwargs):
        self.resolves += 1
        return self._store.resolve(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


def _version(stub, **ref) -> int:
    return stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="tiny", **ref), inputs=["t"]),
                        timeout=10).version


def test_a_version_saved_elsewhere_serves_within_the_refresh_period(start_server, store_dir: Path):
    servers = [start_server(shared_store=True, refresh_seconds=REFRESH) for _ in range(2)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    a, b = (charlstm_pb2_grpc.CharLstmStub(c) for c in channels)
    try:
        counting = CountingStore(servers[1].servicer.models.store)
        servers[1].servicer.models.store = counting
        assert _version(b) == 2
        before = counting.resolves
        for _ in range(20):
            assert _version(b) == 2
        assert counting.resolves - before <= 2  # remembered, not read per request

        model, _, meta = train_tiny(steps=5, seed=7)
        assert LocalStore(store_dir).save("tiny", model.state_dict(), meta) == 3  # "replica C"
        saved = time.monotonic()
        wait_for(lambda: _version(b) == 3 and _version(a) == 3, timeout=REFRESH + 5,
                 what="both servers to serve version 3")
        assert time.monotonic() - saved <= REFRESH + 1.0

        # A label moved through A: A sees it at once, B within the period.
        a.SetLabel(pb.SetLabelRequest(name="tiny", label="stable", version=2), timeout=10)
        assert _version(a, label="stable") == 2
        wait_for(lambda: _version(b, label="stable") == 2, timeout=REFRESH + 5, what="B's label")

        # A version deleted through A: B moves back to version 2 within the period.
        a.DeleteModel(pb.DeleteModelRequest(name="tiny", version=3), timeout=10)
        assert _version(a) == 2
        wait_for(lambda: _version(b) == 2, timeout=REFRESH + 5, what="B to forget version 3")
    finally:
        for channel in channels:
            channel.close()


def test_a_store_of_its_own_is_read_on_every_request(server, stub, store_dir: Path):
    assert server.config.effective_refresh_seconds == 0
    assert _version(stub) == 2
    model, _, meta = train_tiny(steps=5, seed=7)
    assert LocalStore(store_dir).save("tiny", model.state_dict(), meta) == 3
    wait_out_local_refresh(server)  # five training steps can take less than its 20 ms
    assert _version(stub) == 3
