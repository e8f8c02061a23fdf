"""``--max-connection-age``: the server closes client connections after that age (GOAWAY), so a
client balancing over replicas reconnects and finds new ones; calls keep succeeding."""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc


def _peers(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {r.fields["peer"] for r in caplog.records
            if r.name == "charlstm.access" and "peer" in getattr(r, "fields", {})}


@pytest.mark.parametrize("age,reconnects", [(0.3, True), (0.0, False)])
def test_connections_are_recycled_after_the_maximum_age(start_server, caplog, age, reconnects):
    caplog.set_level(logging.INFO, logger="charlstm.access")
    server = start_server(max_connection_age=age, max_connection_age_grace=0.2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            # wait_for_ready: a call made while the channel reconnects waits instead of failing.
            stub.ListModels(pb.ListModelsRequest(), timeout=5, wait_for_ready=True)
            time.sleep(0.05)
    peers = _peers(caplog)
    assert (len(peers) >= 2) == reconnects, peers  # one client port per connection
