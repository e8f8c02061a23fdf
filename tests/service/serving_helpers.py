"""Helpers for the serving tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import time
import urllib.request
from typing import Callable, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab
from charlstm.service.server import RunningServer
from charlstm.v1 import charlstm_pb2 as pb

T = TypeVar("T")

# Repetitive enough that a 24-unit LSTM learns much of it in a couple of hundred steps.
CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 80
TINY = dict(embedding_size=8, hidden_size=24, num_layers=2)


def train_tiny(text: str = CORPUS, *, steps: int = 150, seed: int = 0) -> tuple[CharLSTM, Vocab, dict]:
    """A small model trained for ``steps`` on ``text``, and the store metadata describing it."""
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, **TINY)
    model = CharLSTM(config, seed=seed)
    train = TrainConfig(seq_len=16, batch_size=8, steps=steps, learning_rate=0.01, seed=seed,
                        eval_every=steps, val_fraction=0.1)
    trainer = Trainer(model, vocab, text, train)
    last = None
    for last in trainer.run():
        pass
    assert last is not None
    metadata = {
        "model_config": config.to_dict(),
        "vocab": vocab.chars,
        "train_config": train.to_dict(),
        "metrics": {"step": last.step, "train_loss": last.train_loss, "val_loss": last.val_loss,
                    "best_val_loss": trainer.best_val_loss},
        "val_curve": [[last.step, last.val_loss]],
        "corpus": {"sha256": "0" * 64, "characters": len(text)},
        "job_id": None,
    }
    return model, vocab, metadata


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_out_local_refresh(running: RunningServer) -> None:
    """Sleep ``--local-refresh-ms``: a version another tool saved beside a server on its own
    store is served within that time of the server's last look, not necessarily at once."""
    time.sleep(running.config.local_refresh_ms / 1000)


def scrape(running: RunningServer) -> dict[str, float]:
    """The server's /metrics over HTTP, as {sample line name with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def ref(name: str = "tiny", version: int | None = None, label: str | None = None) -> pb.ModelRef:
    if version is not None:
        return pb.ModelRef(name=name, version=version)
    if label is not None:
        return pb.ModelRef(name=name, label=label)
    return pb.ModelRef(name=name)


def status_details(err: grpc.RpcError):
    """(code, message, [(field, description), ...]) of a failed call, from google.rpc.Status."""
    status = rpc_status.from_call(err)
    fields = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend((v.field, v.description) for v in bad.field_violations)
    return err.code(), err.details(), fields


class Requests:
    """A request stream the test writes to while the call runs (for bidirectional calls)."""

    def __init__(self, *first):
        import queue

        self._queue = queue.Queue()
        for message in first:
            self.send(message)

    def send(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """Half-close: the server sees the end of the request stream."""
        self._queue.put(None)

    def __iter__(self):
        while (message := self._queue.get()) is not None:
            yield message


def active_streams(running: RunningServer) -> float:
    return scrape(running).get("charlstm_active_streams", 0.0)


def generated_chars(running: RunningServer) -> float:
    return scrape(running).get("charlstm_generated_chars_total", 0.0)
