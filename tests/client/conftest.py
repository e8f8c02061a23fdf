"""Fixtures for the client tests.

- ``fake``: a scripted fake server (``client_fakes.py``) for unit tests of errors and retries.
- ``live``: (session) a real charlstm server started in-process on 127.0.0.1 and a free port,
  over a fresh store, with model ``tiny`` trained through the real CLI (``charlstm train
  --json``; H=16, 40 steps, so versions 1 and 2). Tests that change models use models of their
  own.
  ``live.run(...)``/``live.json(...)`` run ``python -m charlstm.client.cli`` against it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client_fakes import FakeServer
from client_live import ROOT, TINY, Live


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from charlstm.service.config import ServerConfig
    from charlstm.service.server import create_server

    store = tmp_path_factory.mktemp("client-store")
    # Two job slots: the tests that leave a long job running must not hold up the others.
    config = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=-1, store=str(store), max_jobs=2, grace_period=1.0,
        demo_models=False,
    )
    running = create_server(config)
    corpus = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    corpus.write_text(
        (ROOT / "samples" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8"
    )
    live = Live(target=f"127.0.0.1:{running.port}", corpus=corpus, train_events=[])
    try:
        live.train_events = live.json(
            "train",
            "tiny",
            str(corpus),
            *TINY,
            "--steps",
            "40",
            "--eval-every",
            "10",
            "--checkpoint-every",
            "20",
        )
        yield live
    finally:
        running.stop(1.0)
