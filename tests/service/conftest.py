"""Fixtures for the service tests: real servers on free loopback ports, over a store holding
small trained models (written straight through the engine and store APIs, so these tests do
not depend on the training RPCs).

- ``model_template``: (session) a store directory with model ``tiny`` (versions 1 and 2,
  label ``stable`` -> 1) and model ``other`` (version 1). Tests get copies, never the template.
- ``store_dir``: a fresh copy of the template for one test.
- ``start_server(**config)``: starts a server on 127.0.0.1:0 (metrics on a free port) over
  ``store_dir``; every server started is stopped at the end of the test.
- ``server``, ``channel``, ``stub``: one default server and a raw ``CharLstmStub`` to it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from serving_helpers import train_tiny

from charlstm.service.config import ServerConfig
from charlstm.service.server import RunningServer, create_server
from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2_grpc


@pytest.fixture(scope="session")
def model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template-store")
    store = LocalStore(root)
    model, _, meta = train_tiny(steps=150, seed=0)
    assert store.save("tiny", model.state_dict(), meta) == 1
    model2, _, meta2 = train_tiny(steps=60, seed=1)
    assert store.save("tiny", model2.state_dict(), meta2) == 2
    store.set_label("tiny", "stable", 1)
    other, _, meta3 = train_tiny("abcabcabd " * 50, steps=20, seed=2)
    assert store.save("other", other.state_dict(), meta3) == 1
    return root


@pytest.fixture
def store_dir(model_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(model_template, target)
    return target


@pytest.fixture
def start_server(store_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(**overrides) -> RunningServer:
        settings = dict(host="127.0.0.1", port=0, metrics_port=0, store=str(store_dir),
                        grace_period=2.0, max_workers=0, max_streams=16,
                        demo_models=False)  # the demo model has its own tests
        settings.update(overrides)
        running = create_server(ServerConfig(**settings))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(0.5)


@pytest.fixture
def server(start_server) -> RunningServer:
    return start_server()


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> charlstm_pb2_grpc.CharLstmStub:
    return charlstm_pb2_grpc.CharLstmStub(channel)
