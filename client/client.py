"""`CharLstmClient`: the synchronous Python client, one typed method per RPC.

    from charlstm.client import CharLstmClient

    with CharLstmClient("localhost:50051", token="s3cret") as client:
        for event in client.train("poet", text=open("poems.txt").read(), hidden_size=128, steps=500):
            if event.progress:
                print(event.progress.step, event.progress.train_loss)
        result = client.predict("poet", "Shall I compare thee", length=40, temperature=0.8)
        print(result.predictions[0].continuation)
        with client.stream("poet", temperature=0.8) as session:
            session.feed("O Romeo")
            for char in session.generate(100):
                print(char, end="", flush=True)

Deadlines: every unary call gives up after the client's ``timeout`` seconds, all retries
included. Streaming calls bound each wait for an expected reply instead of the whole call (see
`charlstm.client.streams`). Retries: see `charlstm.client.retry` for which calls are repeated
after UNAVAILABLE. Errors: every failure raises a `charlstm.client.errors.CharLstmError`.

Several replicas: pass a target that names all of them, a comma-separated list
(``"10.0.0.1:50051,10.0.0.2:50051"``) or a DNS name (``"dns:///charlstm:50051"``); unary calls
are then spread over the replicas by gRPC's ``round_robin``, and idempotent ones are retried on
another replica after UNAVAILABLE (`charlstm.client.balancing`). A Stream session stays on the
replica that opened it; with ``reopen_streams=True`` it is taken over by another replica, fed
with its `transcript`, when its own goes away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charlstm.client import messages
from charlstm.client.channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    Tls,
    auth_metadata,
    prepare_target,
    open_channel,
)
from charlstm.client.messages import CorpusSource
from charlstm.client.retry import DEFAULT_RETRY, NO_RETRY, Deadline, RetryPolicy, call_with_retry
from charlstm.client.streams import StreamSession, TrainEventStream, open_train_events
from charlstm.client.types import (
    Corpus,
    EvalResult,
    Job,
    Model,
    PredictResult,
    corpus_from_proto,
    eval_result_from_proto,
    job_from_proto,
    model_from_proto,
    predict_result_from_proto,
)
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc as pb_grpc

T = TypeVar("T")

__all__ = ["CharLstmClient"]


class CharLstmClient:
    """A connection to a charlstm server.

    Args:
        target: ``host:port`` (or any gRPC target, such as ``dns:///charlstm:50051``).
        token: bearer token sent as ``authorization: Bearer <token>`` with every call.
        tls: False for plaintext, True for TLS with the system's root certificates, or PEM
            root certificates (bytes) to trust.
        timeout: seconds allowed for each unary call, retries included; for streaming calls,
            the longest wait for an expected reply (None: wait forever).
        retry: backoff policy for calls that are safe to repeat (`NO_RETRY` to disable).
        max_message_bytes: largest message sent or received.
        options: extra gRPC channel arguments, such as ``[("grpc.lb_policy_name", "round_robin")]``.
        channel: an existing channel to use instead of opening one (not closed by `close`).
        reopen_streams: when a Stream session's replica goes away (UNAVAILABLE), open a new
            session (on another replica, with several) fed with the session's `transcript`
            and carry on, instead of raising. Off by default: a reopened session continues
            the same text but not the same random draws.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: Tls = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
        reopen_streams: bool = False,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = auth_metadata(token)
        self._owns_channel = channel is None
        self.reopen_streams = reopen_streams
        if channel is None:
            grpc_target, channel_args = prepare_target(target, max_message_bytes, options)
            channel = open_channel(grpc_target, tls, channel_args)
        self._channel = channel
        self._stub = pb_grpc.CharLstmStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifecycle --

    def close(self) -> None:
        """Closes the channel (cancelling calls still in flight)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> CharLstmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --

    def _unary(
        self, method: Callable[..., T], request: Any, *, idempotent: bool, timeout: float | None = None
    ) -> T:
        """One unary call under a deadline, repeated after UNAVAILABLE when ``idempotent``."""

        def attempt(remaining: float | None) -> T:
            return method(request, timeout=remaining, metadata=self._metadata)

        deadline = Deadline(self.timeout if timeout is None else timeout)
        return call_with_retry(attempt, self.retry if idempotent else NO_RETRY, deadline)

    # -- training --

    def train(
        self,
        model: str,
        text: str | None = None,
        *,
        corpus_id: str | None = None,
        resume_from_version: int | None = None,
        **hyperparameters: Any,
    ) -> TrainEventStream:
        """Starts a training job and returns its events as they happen.

        Give the corpus inline as ``text`` (up to the server's message limit) or as the
        ``corpus_id`` from `upload_corpus`. ``hyperparameters`` are named like the proto's
        Hyperparameters fields (``hidden_size=128, num_layers=2, steps=500,
        learning_rate=3e-3, optimizer="adamw", schedule="cosine", ...``); unset ones take the
        server's defaults. Waits for the job to be accepted (errors such as INVALID_ARGUMENT
        are raised here). Never retried: a repeat could start a second job.

        Closing the returned stream detaches; the job keeps running (see `watch_job`).
        """
        request = messages.train_request(model, text, corpus_id, resume_from_version, hyperparameters)
        start = lambda: self._stub.Train(request, metadata=self._metadata)  # noqa: E731
        return open_train_events(start, self.timeout, "train")

    def upload_corpus(
        self,
        source: CorpusSource | None = None,
        *,
        text: str | None = None,
        timeout: float | None = None,
    ) -> Corpus:
        """Uploads a UTF-8 corpus in 1 MiB chunks and returns it (its ``id`` is for `train` and
        `evaluate`).

        ``source`` is a path, bytes, or a file object (binary or text mode), streamed without
        reading it all into memory; or pass ``text=``. Retried after UNAVAILABLE only when the
        source can be replayed from its start (a path, bytes, text or a seekable file; not a
        pipe such as stdin): corpora are deduplicated by their hash, so a repeat is harmless.
        ``timeout`` overrides the client's for this call (large files on slow links).
        """
        if (source is None) == (text is None):
            raise ValueError("give exactly one of source or text")
        reader = messages.text_corpus_reader(text) if text is not None else messages.CorpusReader(source)  # type: ignore[arg-type]
        try:

            def attempt(remaining: float | None) -> pb.Corpus:
                return self._stub.UploadCorpus(
                    reader.chunks(), timeout=remaining, metadata=self._metadata
                )

            deadline = Deadline(self.timeout if timeout is None else timeout)
            return corpus_from_proto(
                call_with_retry(attempt, self.retry, deadline, can_retry=reader.rewind)
            )
        finally:
            reader.close()

    def get_job(self, job_id: str) -> Job:
        """One training job."""
        return job_from_proto(
            self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id), idempotent=True)
        )

    def list_jobs(self, model: str | None = None) -> list[Job]:
        """Training jobs, newest first; only ``model``'s when given."""
        response = self._unary(
            self._stub.ListJobs, pb.ListJobsRequest(model=model or ""), idempotent=True
        )
        return [job_from_proto(job) for job in response.jobs]

    def cancel_job(self, job_id: str) -> Job:
        """Cancels a queued or running job (FAILED_PRECONDITION if it has already ended)."""
        return job_from_proto(
            self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id), idempotent=False)
        )

    def watch_job(self, job_id: str) -> TrainEventStream:
        """Replays a job's events so far and follows it until it ends. Opening is retried
        after UNAVAILABLE (nothing has been delivered yet); closing the stream detaches."""
        request = pb.WatchJobRequest(job_id=job_id)
        start = lambda: self._stub.WatchJob(request, metadata=self._metadata)  # noqa: E731
        deadline = Deadline(self.timeout)
        return call_with_retry(
            lambda remaining: open_train_events(start, remaining, "watch"), self.retry, deadline
        )

    # -- inference --

    def predict(
        self,
        model: str,
        inputs: str | Sequence[str],
        *,
        next_top_k: int | None = None,
        length: int = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> PredictResult:
        """Next-character distributions and/or sampled continuations, one `Prediction` per input.

        Args:
            inputs: one text or several (predicted independently, batched on the server).
            next_top_k: how many most likely next characters to report (server default: 5
                when ``length`` is 0, else 0).
            length: characters of continuation to sample after each input.
            temperature, top_k, top_p, seed: sampling options (0 temperature = greedy).
            version, label: which version answers (default: the latest).
            timeout: overrides the client's timeout for this call.
        """
        request = messages.predict_request(
            model, inputs, next_top_k=next_top_k, length=length, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, version=version, label=label,
        )  # fmt: skip
        return predict_result_from_proto(
            self._unary(self._stub.Predict, request, idempotent=True, timeout=timeout)
        )

    def stream(
        self,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        next_top_k: int | None = None,
        chars_per_message: int | None = None,
        prefix: str = "",
    ) -> StreamSession:
        """Opens a stateful Stream session (a context manager): `feed`, `generate`, `reset`.

        The sampling options are the session's defaults for `generate`; ``next_top_k`` is how
        many next characters each feed reports (server default 5); ``chars_per_message``
        batches generated characters per reply (server default 1: each sent the moment it is
        produced); ``prefix`` is fed straight away. Sessions are never retried; a session lost
        to UNAVAILABLE can be rebuilt by feeding its `transcript` to a new one.
        """
        request = messages.stream_open(
            model, version=version, label=label, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, next_top_k=next_top_k, chars_per_message=chars_per_message,
            prefix=prefix,
        )  # fmt: skip
        start = lambda requests: self._stub.Stream(requests, metadata=self._metadata)  # noqa: E731
        return StreamSession(start, request, self.timeout, reopen=self.reopen_streams)

    def evaluate(
        self,
        model: str,
        text: str | None = None,
        *,
        corpus_id: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> EvalResult:
        """The loss of a stored model on ``text`` (or an uploaded ``corpus_id``), in nats and
        bits per character. ``timeout`` overrides the client's (long texts take a while)."""
        request = messages.evaluate_request(model, text, corpus_id, version, label)
        return eval_result_from_proto(
            self._unary(self._stub.Evaluate, request, idempotent=True, timeout=timeout)
        )

    # -- models --

    def list_models(self) -> list[Model]:
        """The stored models (without their version lists)."""
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), idempotent=True)
        return [model_from_proto(m) for m in response.models]

    def get_model(self, name: str) -> Model:
        """One model: architecture, vocabulary, versions (oldest first), labels."""
        return model_from_proto(
            self._unary(self._stub.GetModel, pb.GetModelRequest(name=name), idempotent=True)
        )

    def delete_model(self, name: str, version: int | None = None) -> list[int]:
        """Deletes one version, or the whole model; returns the deleted version numbers.
        A labelled version cannot be deleted (FAILED_PRECONDITION). Never retried."""
        request = pb.DeleteModelRequest(name=name)
        if version is not None:
            request.version = version
        return list(self._unary(self._stub.DeleteModel, request, idempotent=False).deleted_versions)

    def set_label(self, name: str, label: str, version: int) -> Model:
        """Points ``label`` (such as ``stable``) at ``version``; returns the updated model."""
        if version < 1:
            raise ValueError(f"version must be >= 1 (got {version}); use remove_label to remove a label")
        request = pb.SetLabelRequest(name=name, label=label, version=version)
        return model_from_proto(self._unary(self._stub.SetLabel, request, idempotent=True))

    def remove_label(self, name: str, label: str) -> Model:
        """Removes ``label`` from the model; returns the updated model."""
        request = pb.SetLabelRequest(name=name, label=label, version=0)
        return model_from_proto(self._unary(self._stub.SetLabel, request, idempotent=True))

    # -- health --

    def health(self, service: str = "") -> str:
        """The server's health status from the standard grpc.health.v1 service: ``SERVING``,
        ``NOT_SERVING``, ``UNKNOWN`` or ``SERVICE_UNKNOWN``. ``service`` "" asks about the
        server as a whole."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._unary(self._health.Check, request, idempotent=True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
