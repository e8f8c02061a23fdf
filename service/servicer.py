"""``CharLstmServicer``: the ``charlstm.v1.CharLstm`` service, composed from its RPC groups.

Each group is a mixin with thin methods (``rpc_training``, ``rpc_inference``, ``rpc_models``);
this class only builds the shared parts they use from the server's configuration.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from charlstm.service.batching import BatchingStepper
from charlstm.service.config import ServerConfig
from charlstm.service.corpora import CorpusStore
from charlstm.service.inference import Stepper
from charlstm.service.jobs import JobManager
from charlstm.service.metrics import Metrics
from charlstm.service.model_cache import ModelCache
from charlstm.service.prompt_cache import PromptCache
from charlstm.service.rpc_inference import InferenceRpcs
from charlstm.service.rpc_models import ModelRpcs
from charlstm.service.rpc_training import TrainingRpcs
from charlstm.service.sessions import SessionRegistry
from charlstm.service.shared_jobs import SharedCorpusStore, SharedJobManager
from charlstm.service.demo_models import install_demo_models
from charlstm.service.store import CheckpointStore, open_store
from charlstm.v1 import charlstm_pb2_grpc

__all__ = ["CharLstmServicer"]


class CharLstmServicer(TrainingRpcs, InferenceRpcs, ModelRpcs, charlstm_pb2_grpc.CharLstmServicer):
    """Every RPC of ``charlstm.v1.CharLstm``.

    Store layout under ``config.store``: the checkpoint store owns ``models/``; corpora live in
    ``corpora/`` and job records in ``jobs/``. On a shared store (``config.store_is_shared``)
    job records, corpora and job leases are the store's records instead (``shared_jobs``).

    Call :meth:`start` before serving (it starts the job scheduler, which resumes interrupted
    jobs) and :meth:`shutdown` when draining.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        metrics: Metrics | None = None,
        store: CheckpointStore | None = None,
        stepper: Stepper | None = None,
    ):
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store if store is not None else open_store(config.store, config.s3_settings())
        if config.demo_models:
            install_demo_models(self.store)
        if config.store_is_shared:
            self.corpora, self.jobs = _shared_jobs(config, self.store, self.metrics)
        else:
            root = Path(config.store)
            self.corpora = CorpusStore(root / "corpora", max_bytes=config.max_corpus_bytes)
            self.jobs = JobManager(
                self.store, self.corpora, state_dir=root / "jobs", max_jobs=config.max_jobs,
                max_queued=config.max_queued_jobs, metrics=self.metrics,
                store_location=config.store, train_ranks=config.train_ranks,
            )
        if stepper is None:
            stepper = Stepper() if config.batching == "off" else BatchingStepper(
                max_batch_size=config.max_batch_size,
                max_wait=config.batch_max_wait_ms / 1000.0, metrics=self.metrics,
            )
        self.stepper = stepper
        self.models = ModelCache(self.store, capacity=config.model_cache_size,
                                 metrics=self.metrics, refresh_seconds=config.effective_refresh_seconds,
                                 recheck_seconds=config.local_refresh_ms / 1000.0)
        self.prompts = PromptCache(config.prompt_cache_size)
        # A checkpoint written by this server's own jobs serves at once, without a refresh.
        self.jobs.on_checkpoint = self.models.forget
        self.sessions = SessionRegistry(
            max_sessions=config.max_streams, idle_timeout=config.idle_timeout,
            stepper=self.stepper, metrics=self.metrics,
        )

    def start(self) -> None:
        """Start background work: the training-job scheduler."""
        self.jobs.start()

    def begin_shutdown(self) -> None:
        """Refuse new Stream sessions and end the idle ones (UNAVAILABLE)."""
        self.sessions.shutdown()

    def end_streams(self) -> None:
        """The grace period is over: stop generations in progress (UNAVAILABLE)."""
        self.sessions.stop_generations()

    def shutdown_jobs(self, grace_seconds: float) -> None:
        """Stop running jobs with a checkpoint so the next start resumes them."""
        self.jobs.shutdown(grace_seconds)


def _shared_jobs(config: ServerConfig, store: CheckpointStore,
                 metrics: Metrics) -> tuple[SharedCorpusStore, SharedJobManager]:
    """Corpora and jobs kept in the store's records, for replicas sharing the store."""
    replica = config.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    scheme, sep, _ = config.store.partition("://")
    if sep and scheme != "file":
        # No local store directory: the corpora the workers read are cached in a temp dir.
        cache = Path(tempfile.gettempdir()) / f"charlstm-{replica}" / "corpora"
    else:
        cache = Path(config.store.removeprefix("file://")) / "corpora"
    corpora = SharedCorpusStore(store, cache, max_bytes=config.max_corpus_bytes)
    jobs = SharedJobManager(
        store, corpora, replica_id=replica, lease_seconds=config.lease_seconds,
        sync_seconds=config.refresh_seconds, max_jobs=config.max_jobs,
        max_queued=config.max_queued_jobs, metrics=metrics, store_location=config.store,
        train_ranks=config.train_ranks,
    )
    return corpora, jobs
