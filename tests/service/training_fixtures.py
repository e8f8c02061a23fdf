"""Helpers shared by the training tests: tiny hyperparameters, a learnable corpus, polling.

Models stay tiny (H=16, one layer, windows of 16 x 4 characters) so a spawned worker trains a
few hundred steps in well under a second; most of a job's time is the worker starting up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from charlstm.service import hyperparameters
from charlstm.service.corpora import CorpusStore
from charlstm.service.jobs import JobManager
from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb

import serving_helpers

T = TypeVar("T")

# Repetitive enough that a 16-unit LSTM learns it within a hundred steps.
CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 150


def tiny_hyperparameters(**overrides) -> pb.Hyperparameters:
    """A small, fast model; ``overrides`` replace any field (e.g. steps, checkpoint_every)."""
    fields = dict(embedding_size=8, hidden_size=16, num_layers=1, seq_len=16, batch_size=4,
                  steps=120, eval_every=40, learning_rate=0.01, checkpoint_every=50)
    fields.update(overrides)
    if "epochs" in overrides:
        fields.pop("steps")
    return pb.Hyperparameters(**fields)


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """``serving_helpers.wait_for`` with a longer default: a job's worker process has to start."""
    return serving_helpers.wait_for(check, timeout=timeout, what=what)


class ManagerHarness:
    """A JobManager on a fresh store under ``root`` (without a gRPC server)."""

    def __init__(self, root: Path, *, max_jobs: int = 1):
        self.root = root
        self.store = LocalStore(root)
        self.corpora = CorpusStore(root / "corpora", max_bytes=10_000_000)
        self.max_jobs = max_jobs
        self.managers: list[JobManager] = []

    def manager(self) -> JobManager:
        """A started manager (a "server start"); each call is a restart on the same store."""
        manager = JobManager(self.store, self.corpora, state_dir=self.root / "jobs",
                             max_jobs=self.max_jobs)
        manager.start()
        self.managers.append(manager)
        return manager

    def submit(self, manager: JobManager, model: str = "tiny", text: str = CORPUS, **overrides):
        corpus = self.corpora.put_text(text)
        resolved = hyperparameters.resolve(tiny_hyperparameters(**overrides))
        return manager.submit(model=model, corpus_id=corpus.id, corpus_characters=corpus.characters,
                              hyperparameters=resolved)

    def close(self) -> None:
        for manager in self.managers:
            manager.shutdown(5.0)
