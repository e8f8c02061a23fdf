"""`AsyncCharLstmClient`: the asyncio flavour of `CharLstmClient`, on grpc.aio.

Same methods, arguments, return types, errors, deadlines and retries as the sync client
(see `charlstm.client.client`); unary methods are coroutines, and streams are async iterators:

    async with AsyncCharLstmClient("localhost:50051") as client:
        result = await client.predict("poet", "Shall I", length=20)
        async with client.stream("poet", temperature=0.8) as session:
            await session.feed("O Romeo")
            async for char in session.generate(100):
                print(char, end="", flush=True)
        async for event in client.train("poet", text=corpus, steps=200):
            ...

`train`/`watch_job` return an `AsyncTrainEventStream` and `stream` an `AsyncStreamSession`:
use them with ``async for``/``async with`` directly, or ``await`` them to start the call and
wait for its first reply (so that errors surface at that point). Create the client inside the
event loop that uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charlstm.client import messages
from charlstm.client.channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    Tls,
    auth_metadata,
    prepare_target,
    open_aio_channel,
)
from charlstm.client.errors import (
    CharLstmError,
    DeadlineExceededError,
    UnavailableError,
    error_for_code,
    from_rpc_error,
)
from charlstm.client.messages import CorpusSource
from charlstm.client.retry import DEFAULT_RETRY, NO_RETRY, Deadline, RetryPolicy, call_with_retry_async
from charlstm.client.streams import REOPEN_RETRY, SessionProtocol
from charlstm.client.types import (
    CharDistribution,
    Corpus,
    EvalResult,
    GeneratedChar,
    Job,
    Model,
    PredictResult,
    SessionInfo,
    TrainEvent,
    corpus_from_proto,
    eval_result_from_proto,
    job_from_proto,
    model_from_proto,
    predict_result_from_proto,
    train_event_from_proto,
)
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc as pb_grpc

T = TypeVar("T")

__all__ = ["AsyncCharLstmClient", "AsyncTrainEventStream", "AsyncStreamSession"]


async def _read(call: Any, timeout: float | None, what: str) -> Any:
    """The next message of a streaming call, or None at its end; errors as CharLstmError."""
    try:
        message = await asyncio.wait_for(call.read(), timeout)
    except asyncio.TimeoutError:
        call.cancel()
        raise DeadlineExceededError(
            f"no reply from the server within {timeout:g} s ({what}); the call was cancelled"
        ) from None
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
    return None if message is grpc.aio.EOF else message


# What grpc.aio reports, as INTERNAL, when a message cannot be sent because the call has
# already died in the transport (the server went away): a status made up on this side, not
# one the server sent. Which error a lost server gives, this or the call's own UNAVAILABLE,
# depends on which side of the loss the write lands (about 1 in 20 in the replica tests).
_SEND_FAILED_LOCALLY = "Internal error from Core"


async def _write(call: Any, request: Any) -> None:
    """Sends one message on a streaming call; errors as CharLstmError. A message that could
    not leave this process is UNAVAILABLE: the connection is lost, so a session that may be
    reopened is (the server never saw the message, so sending it again is safe)."""
    try:
        await call.write(request)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.INTERNAL and error.details() == _SEND_FAILED_LOCALLY:
            raise UnavailableError(
                "the connection to the server was lost: the request could not be sent") from error
        raise from_rpc_error(error) from error


class AsyncTrainEventStream:
    """The events of a training job (from `train` or `watch_job`): an async iterator that ends
    after the terminal event. `close()` detaches; the job keeps running on the server."""

    def __init__(
        self, start: Callable[[], Any], timeout: float | None, what: str, policy: RetryPolicy
    ) -> None:
        self._start = start
        self._timeout = timeout
        self._what = what
        self._policy = policy
        self._call: Any = None
        self._pending: TrainEvent | None = None
        self._done = False
        self.job_id: str | None = None
        """The job's id, once the stream has started."""

    async def start(self) -> AsyncTrainEventStream:
        """Starts the call and waits (up to the client's timeout) for the first event."""
        if self._call is not None:
            return self

        async def attempt(remaining: float | None) -> TrainEvent:
            call = self._start()
            try:
                message = await _read(call, remaining, self._what)
            except BaseException:
                call.cancel()
                raise
            if message is None:
                raise error_for_code(
                    grpc.StatusCode.UNKNOWN,
                    f"the server ended the {self._what} stream without any event",
                )
            self._call = call
            return train_event_from_proto(message)

        self._pending = await call_with_retry_async(attempt, self._policy, Deadline(self._timeout))
        self.job_id = self._pending.job_id
        return self

    def __await__(self) -> Generator[Any, None, AsyncTrainEventStream]:
        return self.start().__await__()

    def __aiter__(self) -> AsyncTrainEventStream:
        return self

    async def __anext__(self) -> TrainEvent:
        if self._done and self._pending is None:
            raise StopAsyncIteration
        await self.start()
        if self._pending is not None:
            event, self._pending = self._pending, None
        else:
            if self._done:
                raise StopAsyncIteration
            message = await _read(self._call, None, self._what)
            if message is None:
                self._done = True
                raise StopAsyncIteration
            event = train_event_from_proto(message)
        if event.terminal:
            self._done = True
        return event

    def close(self) -> None:
        """Stops following the job (the job itself continues)."""
        self._done = True
        self._pending = None
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncTrainEventStream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamSession(SessionProtocol):
    """A stateful Stream session (see `charlstm.client.streams.StreamSession` for the
    semantics). Open it with ``async with`` or ``await``; not safe for concurrent use by several
    tasks at once."""

    def __init__(
        self, start: Callable[[], Any], open_request: pb.StreamRequest, timeout: float | None,
        *, reopen: bool = False,
    ) -> None:
        super().__init__()
        self._start = start
        self._open_request = open_request
        self._timeout = timeout
        self._reopen = reopen
        self.reopened = 0
        """How many times the session was taken over by a new call (``reopen``)."""
        self._remaining = 0  # characters of the current generation still to come
        self._generate_request: pb.StreamRequest | None = None
        self._call: Any = None
        self.info: SessionInfo | None = None

    async def open(self) -> AsyncStreamSession:
        """Opens the session (waits for the server's `opened` reply, and the prefix's
        distribution when a prefix was given)."""
        if self._call is None:
            await self._open(self._open_request.open.prefix)
        return self

    async def _open(self, prefix: str) -> None:
        request = pb.StreamRequest()
        request.CopyFrom(self._open_request)
        request.open.prefix = prefix
        self._closed = False
        self._call = self._start()
        try:
            await _write(self._call, request)
            self.info = self._on_opened(await self._read())
            if prefix:
                await self._read_prediction()
                self.transcript = prefix
        except BaseException:
            self._abort()
            raise

    async def _take_over(self, error: CharLstmError) -> None:
        """After UNAVAILABLE: a new call fed with the transcript (see the sync session)."""
        if not self._reopen or error.code != grpc.StatusCode.UNAVAILABLE:
            raise error
        transcript = self.transcript
        await call_with_retry_async(lambda _remaining: self._open(transcript), REOPEN_RETRY,
                                    Deadline(self._timeout))
        self.reopened += 1

    def __await__(self) -> Generator[Any, None, AsyncStreamSession]:
        return self.open().__await__()

    async def __aenter__(self) -> AsyncStreamSession:
        return await self.open()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._abort()
        await self.close()

    async def feed(self, text: str) -> CharDistribution:
        """Feeds ``text``; returns the next-character distribution after it."""
        distribution = await self._request_prediction(pb.StreamRequest(feed=pb.StreamFeed(text=text)))
        self.transcript += text
        return distribution

    async def reset(self) -> CharDistribution:
        """Resets the state to zeros; returns the distribution from the empty state."""
        distribution = await self._request_prediction(pb.StreamRequest(reset=pb.StreamReset()))
        self.transcript = ""
        return distribution

    async def _request_prediction(self, request: pb.StreamRequest) -> CharDistribution:
        try:
            await self._send(request)
            return await self._read_prediction()
        except CharLstmError as error:
            await self._take_over(error)
        await self._send(request)
        return await self._read_prediction()

    async def generate(
        self,
        length: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_chars_per_message: int | None = None,
    ) -> AsyncIterator[str]:
        """Generates ``length`` characters, yielding each as it arrives (see the sync session)."""
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
        async for generated in self.generate_with_probs(
            length, **sampling, max_chars_per_message=max_chars_per_message
        ):
            yield generated.char

    async def generate_with_probs(
        self,
        length: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_chars_per_message: int | None = None,
    ) -> AsyncIterator[GeneratedChar]:
        """Like `generate`, with the probability each character was drawn with. The request is
        sent when iteration starts."""
        self._generate_request = messages.stream_generate(
            length, temperature, top_k, top_p, seed, max_chars_per_message
        )
        await self._send(self._generate_request)
        self._remaining = length
        self._generation += 1
        generation = self._generation
        self._generating = True
        # A newer action drains this generation's replies; this iterator then stops.
        while self._generating and generation == self._generation:
            for generated in await self._read_generation_reply():
                yield generated

    async def close(self) -> None:
        """Ends the session: half-closes, waits briefly for the server to finish, then cancels."""
        if self._closed or self._call is None:
            self._closed = True
            return
        if self._generating:
            self._abort()  # the server would finish the generation before seeing the half-close
            return
        self._closed = True
        try:
            await self._call.done_writing()
            grace = 2.0 if self._timeout is None else min(2.0, self._timeout)
            await asyncio.wait_for(self._drain(), grace)
        except (asyncio.TimeoutError, grpc.RpcError):
            pass
        finally:
            self._call.cancel()

    async def _drain(self) -> None:
        while await self._call.read() is not grpc.aio.EOF:
            pass

    # -- helpers --

    async def _send(self, request: pb.StreamRequest) -> None:
        if self._call is None:
            await self.open()
        if self._closed:
            raise error_for_code(grpc.StatusCode.FAILED_PRECONDITION, "the stream session is closed")
        while self._generating:  # finish an abandoned generation first
            await self._read_generation_reply()
        try:
            await _write(self._call, request)
        except CharLstmError:
            self._abort()
            raise
        except asyncio.InvalidStateError:
            # The call has already ended: report how (UNAVAILABLE lets a session be reopened).
            code, details = await self._call.code(), await self._call.details()
            self._abort()
            if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                raise error_for_code(code, details) from None
            raise error_for_code(grpc.StatusCode.ABORTED, "the stream session has ended") from None

    async def _read(self) -> pb.StreamResponse | None:
        try:
            return await _read(self._call, self._timeout, "stream session")
        except BaseException:
            self._abort()
            raise

    async def _read_prediction(self) -> CharDistribution:
        return self._on_prediction(await self._read())

    async def _read_generation_reply(self) -> list[GeneratedChar]:
        try:
            generated = self._on_generation_reply(await self._read())
        except CharLstmError as error:
            await self._take_over(error)
            if self._remaining <= 0:
                return []
            assert self._generate_request is not None
            self._generate_request.generate.length = self._remaining
            await _write(self._call, self._generate_request)  # the rest, from the rebuilt state
            self._generating = True
            return []
        self._remaining -= len(generated)
        return generated

    def _abort(self) -> None:
        self._closed = True
        self._generating = False
        if self._call is not None:
            self._call.cancel()


class AsyncCharLstmClient:
    """The asyncio client; arguments as `charlstm.client.CharLstmClient`."""

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
        channel: grpc.aio.Channel | None = None,
        reopen_streams: bool = False,
    ) -> None:
        self.target = target
        self.reopen_streams = reopen_streams
        self.timeout = timeout
        self.retry = retry
        self._metadata = auth_metadata(token)
        self._owns_channel = channel is None
        if channel is None:
            grpc_target, channel_args = prepare_target(target, max_message_bytes, options)
            channel = open_aio_channel(grpc_target, tls, channel_args)
        self._channel = channel
        self._stub = pb_grpc.CharLstmStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        """Closes the channel."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncCharLstmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self, method: Callable[..., Any], request: Any, *, idempotent: bool, timeout: float | None = None
    ) -> Any:
        async def attempt(remaining: float | None) -> Any:
            return await method(request, timeout=remaining, metadata=self._metadata)

        deadline = Deadline(self.timeout if timeout is None else timeout)
        return await call_with_retry_async(attempt, self.retry if idempotent else NO_RETRY, deadline)

    # -- training --

    def train(
        self,
        model: str,
        text: str | None = None,
        *,
        corpus_id: str | None = None,
        resume_from_version: int | None = None,
        **hyperparameters: Any,
    ) -> AsyncTrainEventStream:
        """Starts a training job (never retried); see `CharLstmClient.train`."""
        request = messages.train_request(model, text, corpus_id, resume_from_version, hyperparameters)
        start = lambda: self._stub.Train(request, metadata=self._metadata)  # noqa: E731
        return AsyncTrainEventStream(start, self.timeout, "train", NO_RETRY)

    async def upload_corpus(
        self,
        source: CorpusSource | None = None,
        *,
        text: str | None = None,
        timeout: float | None = None,
    ) -> Corpus:
        """Uploads a corpus in 1 MiB chunks; see `CharLstmClient.upload_corpus`. File reads run
        in a worker thread so the event loop is not blocked."""
        if (source is None) == (text is None):
            raise ValueError("give exactly one of source or text")
        reader = messages.text_corpus_reader(text) if text is not None else messages.CorpusReader(source)  # type: ignore[arg-type]

        async def chunks() -> AsyncIterator[pb.CorpusChunk]:
            iterator = reader.chunks()
            while (chunk := await asyncio.to_thread(next, iterator, None)) is not None:
                yield chunk

        async def attempt(remaining: float | None) -> pb.Corpus:
            return await self._stub.UploadCorpus(chunks(), timeout=remaining, metadata=self._metadata)

        try:
            deadline = Deadline(self.timeout if timeout is None else timeout)
            response = await call_with_retry_async(
                attempt, self.retry, deadline, can_retry=reader.rewind
            )
            return corpus_from_proto(response)
        finally:
            reader.close()

    async def get_job(self, job_id: str) -> Job:
        """One training job."""
        return job_from_proto(
            await self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id), idempotent=True)
        )

    async def list_jobs(self, model: str | None = None) -> list[Job]:
        """Training jobs, newest first; only ``model``'s when given."""
        response = await self._unary(
            self._stub.ListJobs, pb.ListJobsRequest(model=model or ""), idempotent=True
        )
        return [job_from_proto(job) for job in response.jobs]

    async def cancel_job(self, job_id: str) -> Job:
        """Cancels a queued or running job."""
        request = pb.CancelJobRequest(job_id=job_id)
        return job_from_proto(await self._unary(self._stub.CancelJob, request, idempotent=False))

    def watch_job(self, job_id: str) -> AsyncTrainEventStream:
        """Replays a job's events and follows it; opening is retried after UNAVAILABLE."""
        request = pb.WatchJobRequest(job_id=job_id)
        start = lambda: self._stub.WatchJob(request, metadata=self._metadata)  # noqa: E731
        return AsyncTrainEventStream(start, self.timeout, "watch", self.retry)

    # -- inference --

    async def predict(
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
        """Next-character distributions and/or continuations; see `CharLstmClient.predict`."""
        request = messages.predict_request(
            model, inputs, next_top_k=next_top_k, length=length, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, version=version, label=label,
        )  # fmt: skip
        response = await self._unary(self._stub.Predict, request, idempotent=True, timeout=timeout)
        return predict_result_from_proto(response)

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
    ) -> AsyncStreamSession:
        """A Stream session, opened by ``async with`` or ``await``; see `CharLstmClient.stream`."""
        request = messages.stream_open(
            model, version=version, label=label, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, next_top_k=next_top_k, chars_per_message=chars_per_message,
            prefix=prefix,
        )  # fmt: skip
        start = lambda: self._stub.Stream(metadata=self._metadata)  # noqa: E731
        return AsyncStreamSession(start, request, self.timeout, reopen=self.reopen_streams)

    async def evaluate(
        self,
        model: str,
        text: str | None = None,
        *,
        corpus_id: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> EvalResult:
        """The loss of a stored model on a text; see `CharLstmClient.evaluate`."""
        request = messages.evaluate_request(model, text, corpus_id, version, label)
        return eval_result_from_proto(
            await self._unary(self._stub.Evaluate, request, idempotent=True, timeout=timeout)
        )

    # -- models --

    async def list_models(self) -> list[Model]:
        """The stored models (without their version lists)."""
        response = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), idempotent=True)
        return [model_from_proto(m) for m in response.models]

    async def get_model(self, name: str) -> Model:
        """One model with its versions and labels."""
        return model_from_proto(
            await self._unary(self._stub.GetModel, pb.GetModelRequest(name=name), idempotent=True)
        )

    async def delete_model(self, name: str, version: int | None = None) -> list[int]:
        """Deletes one version or the whole model; never retried."""
        request = pb.DeleteModelRequest(name=name)
        if version is not None:
            request.version = version
        return list(
            (await self._unary(self._stub.DeleteModel, request, idempotent=False)).deleted_versions
        )

    async def set_label(self, name: str, label: str, version: int) -> Model:
        """Points ``label`` at ``version``."""
        if version < 1:
            raise ValueError(f"version must be >= 1 (got {version}); use remove_label to remove a label")
        request = pb.SetLabelRequest(name=name, label=label, version=version)
        return model_from_proto(await self._unary(self._stub.SetLabel, request, idempotent=True))

    async def remove_label(self, name: str, label: str) -> Model:
        """Removes ``label``."""
        request = pb.SetLabelRequest(name=name, label=label, version=0)
        return model_from_proto(await self._unary(self._stub.SetLabel, request, idempotent=True))

    async def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name, such as ``SERVING``."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health.Check, request, idempotent=True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
