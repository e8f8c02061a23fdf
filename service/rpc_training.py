"""The training RPCs: Train, UploadCorpus, GetJob, ListJobs, CancelJob and WatchJob.

Each method checks the request, turns it into plain values and hands it to the core
(:class:`~charlstm.service.jobs.JobManager`, :class:`~charlstm.service.corpora.CorpusStore`);
the ``*_to_proto`` converters at the bottom turn the core's records and events back into
messages. Errors are raised as :mod:`.errors` types and mapped to statuses by
:func:`errors.rpc_errors`.
"""

from __future__ import annotations

from typing import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from charlstm.v1 import charlstm_pb2 as pb

from . import errors, hyperparameters
from .corpora import CorpusInfo, check_corpus_id
from .errors import rpc_errors
from .jobs import Job, JobEvent, JobState, Subscription
from .store import InvalidName, ModelNotFound, validate_name

class TrainingRpcs:
    """Mixin for the servicer, which sets ``self.jobs``, ``self.corpora``, ``self.config``,
    ``self.metrics`` (and ``self.store``, or ``self.jobs.store`` is used)."""

    # -- Train ------------------------------------------------------------------------------

    @rpc_errors
    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainEvent]:
        """Start a job and stream its events; the job outlives the call."""
        model = _model_name(request.model)
        resume_from, resumed = self._resume_source(model, request)
        base = _stored_hyperparameters(resumed, model, resume_from) if resumed else None
        hp = hyperparameters.resolve(
            request.hyperparameters if request.HasField("hyperparameters") else None, base=base
        )
        if resumed:
            hyperparameters.check_resumable_with(hp, resumed, resume_from)
        corpus, field = self._training_corpus(request, resumed)
        if resumed:
            _check_same_corpus_length(corpus, resumed, resume_from, field)
        hyperparameters.check_corpus_fits(corpus.characters, hp.train, field)
        job = self.jobs.submit(
            model=model,
            corpus_id=corpus.id,
            corpus_characters=corpus.characters,
            hyperparameters=hp,
            resume_from_version=resume_from,
        )
        yield from self._follow(job.id, context)

    def _resume_source(self, model: str, request: pb.TrainRequest) -> tuple[int, dict | None]:
        """The version to resume from and its metadata, or (0, None) for a fresh start."""
        if not request.HasField("resume_from_version") or request.resume_from_version == 0:
            return 0, None
        version = request.resume_from_version
        if version < 0:
            raise errors.InvalidArgument(
                f"resume_from_version must be a version number >= 1, or 0 for a fresh start "
                f"(got {version})", field="resume_from_version")
        try:
            versions = self._store().list_versions(model)
        except ModelNotFound:
            raise errors.NotFound(f"model {model!r} not found: nothing to resume from",
                                  field="resume_from_version") from None
        info = next((v for v in versions if v.version == version), None)
        if info is None:
            raise errors.NotFound(f"model {model!r} has no version {version}",
                                  field="resume_from_version")
        if not info.resumable:
            raise errors.FailedPrecondition(
                f"version {version} of {model!r} was saved without training state, so it cannot "
                "be resumed; start a fresh job instead")
        return version, info.metadata

    def _training_corpus(self, request: pb.TrainRequest, resumed: dict | None) -> tuple[CorpusInfo, str]:
        """The corpus to train on and the request field that named it (for errors)."""
        which = request.WhichOneof("corpus")
        if which == "text":
            corpus = self.corpora.put_text(request.text, field="text")
            field = "text"
        elif which == "corpus_id":
            corpus = self.corpora.info(check_corpus_id(request.corpus_id))
            field = "corpus_id"
        elif resumed and self._stored_corpus(resumed):
            corpus = self.corpora.info(resumed["corpus"]["sha256"])
            field = "resume_from_version"  # the corpus comes with the version
        else:
            raise errors.InvalidArgument(
                "a training corpus is required: set text (inline) or corpus_id (from UploadCorpus)",
                field="text")
        return corpus, field

    def _stored_corpus(self, metadata: dict) -> bool:
        sha = (metadata.get("corpus") or {}).get("sha256")
        try:
            return isinstance(sha, str) and self.corpora.exists(sha)
        except errors.ServiceError:
            return False

    # -- UploadCorpus -----------------------------------------------------------------------

    @rpc_errors
    def UploadCorpus(self, request_iterator: Iterator[pb.CorpusChunk],
                     context: grpc.ServicerContext) -> pb.Corpus:
        """Store the concatenated chunks as one corpus (deduplicated by sha256)."""
        info = self.corpora.put_chunks((chunk.data for chunk in request_iterator), field="data")
        return pb.Corpus(
            id=info.id,
            size_bytes=info.size_bytes,
            characters=info.characters,
            distinct_characters=info.distinct_characters,
            already_existed=info.already_existed,
        )

    # -- jobs -------------------------------------------------------------------------------

    @rpc_errors
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_proto(self.jobs.get(request.job_id))

    @rpc_errors
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        model = _model_name(request.model) if request.model else None
        return pb.ListJobsResponse(jobs=[job_to_proto(j) for j in self.jobs.list(model)])

    @rpc_errors
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_proto(self.jobs.cancel(request.job_id))

    @rpc_errors
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainEvent]:
        self.jobs.get(request.job_id)  # NOT_FOUND before the stream starts
        yield from self._follow(request.job_id, context)

    # -- helpers ----------------------------------------------------------------------------

    def _follow(self, job_id: str, context: grpc.ServicerContext) -> Iterator[pb.TrainEvent]:
        """Stream a job's events until it ends or the caller goes away."""
        subscription: Subscription = self.jobs.subscribe(job_id)
        # When the client disconnects, the callback ends the subscription so this generator
        # (blocked waiting for the next event) wakes up and returns: nothing is left behind.
        context.add_callback(subscription.close)
        try:
            for event in subscription:
                if event.kind == "interrupted":
                    version = event.data.get("last_version") or 0
                    where = f"from version {version}" if version else "from the start"
                    when = ("on another replica" if self.config.store_is_shared
                            else "when the server starts again")
                    raise errors.Unavailable(
                        f"the server is shutting down; job {job_id} resumes {where} {when} "
                        "(reattach with WatchJob)")
                yield event_to_proto(event)
        finally:
            subscription.close()

    def _store(self):
        return getattr(self, "store", None) or self.jobs.store


def _stored_hyperparameters(metadata: dict, model: str, version: int) -> hyperparameters.ResolvedHyperparameters:
    try:
        return hyperparameters.from_checkpoint_metadata(metadata)
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise errors.FailedPrecondition(
            f"version {version} of {model!r} does not record how it was trained ({exc}), so it "
            "cannot be resumed") from None


def _check_same_corpus_length(corpus: CorpusInfo, metadata: dict, version: int, field: str) -> None:
    # The training state's data position is only meaningful on the text it was captured on
    # (the engine checks the length); say so now rather than fail the job later.
    stored = (metadata.get("corpus") or {}).get("characters")
    if stored is not None and stored != corpus.characters:
        raise errors.InvalidArgument(
            f"{field} must be the corpus version {version} was trained on ({stored} characters, "
            f"got {corpus.characters}); leave text and corpus_id unset to use it", field=field)


def _model_name(name: str) -> str:
    try:
        return validate_name(name, "model")
    except InvalidName as exc:
        raise errors.InvalidArgument(str(exc), field="model") from None


# -- converters: the core's records and events -> messages -----------------------------------

_STATES = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
    JobState.INTERRUPTED: pb.JOB_STATE_INTERRUPTED,
}


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def job_to_proto(job: Job) -> pb.Job:
    """The ``Job`` message of a job record."""
    message = pb.Job(
        id=job.id,
        model=job.model,
        state=_STATES[job.state],
        hyperparameters=hyperparameters.to_proto(job.hyperparameters),
        corpus_id=job.corpus_id,
        last_version=job.last_version,
        error=job.error,
        created=timestamp(job.created),
        resumed_from_version=job.resumed_from_version,
        resumable=job.resumable or job.state is JobState.INTERRUPTED,
    )
    if job.progress is not None:
        message.progress.CopyFrom(progress_to_proto(job.progress))
    if job.started is not None:
        message.started.CopyFrom(timestamp(job.started))
    if job.finished is not None:
        message.finished.CopyFrom(timestamp(job.finished))
    return message


def progress_to_proto(p: dict) -> pb.TrainProgress:
    message = pb.TrainProgress(
        step=p["step"],
        total_steps=p["total_steps"],
        epoch=p["epoch"],
        train_loss=p["train_loss"],
        chars_per_second=p["chars_per_second"],
        learning_rate=p["learning_rate"],
        grad_norm=p["grad_norm"],
        elapsed_seconds=p["elapsed_seconds"],
        eta_seconds=p["eta_seconds"],
    )
    if p.get("val_loss") is not None:
        message.val_loss = p["val_loss"]
    return message


def event_to_proto(event: JobEvent) -> pb.TrainEvent:
    """The ``TrainEvent`` of a job event (not for ``interrupted``, which ends the stream)."""
    message = pb.TrainEvent(job_id=event.job_id, time=timestamp(event.time))
    d = event.data
    if event.kind == "accepted":
        message.accepted.job.CopyFrom(job_to_proto(d["job"]))
    elif event.kind == "progress":
        message.progress.CopyFrom(progress_to_proto(d))
    elif event.kind == "checkpoint":
        message.checkpoint.version = d["version"]
        message.checkpoint.step = d["step"]
        if d.get("val_loss") is not None:
            message.checkpoint.val_loss = d["val_loss"]
    elif event.kind == "succeeded":
        message.succeeded.version = d["version"]
        message.succeeded.best_version = d.get("best_version") or 0
        if d.get("best_val_loss") is not None:
            message.succeeded.best_val_loss = d["best_val_loss"]
        if d.get("final_train_loss") is not None:
            message.succeeded.final_train_loss = d["final_train_loss"]
    elif event.kind == "failed":
        message.failed.reason = d["reason"]
        message.failed.resumable = bool(d.get("resumable"))
        message.failed.last_version = d.get("last_version") or 0
    elif event.kind == "cancelled":
        message.cancelled.last_version = d.get("last_version") or 0
    else:
        raise ValueError(f"no TrainEvent for a {event.kind!r} event")
    return message
