"""The sync client's streaming calls: training event streams and Stream sessions.

Deadlines on streams: a gRPC deadline covers a whole call, which would cut off a training job
that runs for an hour or a long generation. So streaming calls get no gRPC deadline; instead
the client bounds each *wait for a reply it expects*: the first event of Train/WatchJob, and
every reply of a Stream session (the `opened` answer, the distribution after a feed or reset,
and each message of a generation). When that wait exceeds the client's timeout the call is
cancelled and `DeadlineExceededError` is raised. After the first training event there is no
bound at all: a queued job may stay silent for a long time.

Replies are read by a daemon thread per call (`ResponseReader`) because a sync gRPC response
iterator cannot be waited on with a timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from charlstm.client.errors import CharLstmError, DeadlineExceededError, error_for_code, from_rpc_error
from charlstm.client.messages import stream_generate
from charlstm.client.retry import Deadline, RetryPolicy, call_with_retry
from charlstm.client.types import (
    CharDistribution,
    GeneratedChar,
    SessionInfo,
    TrainEvent,
    distribution_from_proto,
    generated_chars_from_proto,
    session_info_from_proto,
    train_event_from_proto,
)
from charlstm.v1 import charlstm_pb2 as pb

_END = object()  # the response stream finished with OK


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ResponseReader:
    """Reads a server-streaming call on a daemon thread, so replies can be awaited with a timeout.

    `next(timeout)` returns the next message, None once the stream has ended normally, or raises
    the call's error as a `CharLstmError` (again on every later call: the end is sticky).
    """

    def __init__(self, call: Any, what: str) -> None:
        self._call = call
        self._what = what
        self._replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._finished = threading.Event()
        self._timed_out = False
        self._thread = threading.Thread(target=self._read, name=f"charlstm-{what}-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self._replies.put(message)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer thread
            self._replies.put(_Failure(error))
        else:
            self._replies.put(_END)
        finally:
            self._finished.set()

    def next(self, timeout: float | None) -> Any:
        try:
            item = self._get(timeout)
        except queue.Empty:
            self._timed_out = True
            self._call.cancel()
            raise DeadlineExceededError(
                f"no reply from the server within {timeout:g} s ({self._what}); the call was cancelled"
            ) from None
        if item is _END or isinstance(item, _Failure):
            self._replies.put(item)  # sticky: later calls see the same end
        if item is _END:
            return None
        if isinstance(item, _Failure):
            if isinstance(item.error, grpc.RpcError):
                raise from_rpc_error(item.error)
            raise item.error
        return item

    def _get(self, timeout: float | None) -> Any:
        if timeout is not None:
            return self._replies.get(timeout=timeout)
        # Wait in slices so that Ctrl-C (KeyboardInterrupt) is noticed promptly in the main
        # thread; an item still wakes the wait at once.
        while True:
            try:
                return self._replies.get(timeout=0.5)
            except queue.Empty:
                continue

    def wait_finished(self, timeout: float | None) -> bool:
        """Waits for the response stream to end; True if it did."""
        return self._finished.wait(timeout)

    def cancel(self) -> None:
        """Cancels the call (a no-op once it has finished)."""
        self._call.cancel()


# --- training events ---------------------------------------------------------------------------


class TrainEventStream(Iterator[TrainEvent]):
    """The events of a training job as they happen (returned by `train` and `watch_job`).

    Iteration ends after the terminal event (``succeeded``, ``failed`` or ``cancelled``).
    `close()` (or leaving a ``with`` block) detaches from the job: the job keeps running on
    the server; reattach with `watch_job`, stop it with `cancel_job`.
    """

    def __init__(self, reader: ResponseReader, first: TrainEvent) -> None:
        self._reader = reader
        self._pending: TrainEvent | None = first
        self._done = False
        self.job_id: str = first.job_id
        """The job's id (known from the first event)."""

    def __iter__(self) -> TrainEventStream:
        return self

    def __next__(self) -> TrainEvent:
        if self._pending is not None:
            event, self._pending = self._pending, None
        else:
            if self._done:
                raise StopIteration
            message = self._reader.next(None)
            if message is None:
                self._done = True
                raise StopIteration
            event = train_event_from_proto(message)
        if event.terminal:
            self._done = True
        return event

    def close(self) -> None:
        """Stops following the job (the job itself continues)."""
        self._done = True
        self._pending = None
        self._reader.cancel()

    def __enter__(self) -> TrainEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_train_events(start: Callable[[], Any], timeout: float | None, what: str) -> TrainEventStream:
    """Starts a Train/WatchJob call and waits up to ``timeout`` for its first event."""
    reader = ResponseReader(start(), what)
    try:
        message = reader.next(timeout)
    except BaseException:
        reader.cancel()
        raise
    if message is None:
        raise error_for_code(
            grpc.StatusCode.UNKNOWN, f"the server ended the {what} stream without any event"
        )
    return TrainEventStream(reader, train_event_from_proto(message))


# --- Stream sessions ---------------------------------------------------------------------------

_CLOSE = object()  # ends the request iterator: half-closes the call
# Reopening a session lost to UNAVAILABLE: a few quick attempts, bounded by the client timeout.
REOPEN_RETRY = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=1.0)


def unexpected_reply(reply: pb.StreamResponse | None, expected: str) -> CharLstmError:
    """The error for a reply that breaks the session protocol."""
    if reply is None:
        return error_for_code(
            grpc.StatusCode.ABORTED, f"the server ended the session while {expected} was expected"
        )
    got = reply.WhichOneof("event")
    return error_for_code(
        grpc.StatusCode.UNKNOWN, f"protocol error: got a {got!r} reply while {expected} was expected"
    )


class SessionProtocol:
    """What a Stream session's replies mean, shared by the sync and asyncio sessions (which
    only differ in how they send and wait): each ``_on_*`` method checks one reply against the
    protocol and updates the session's state; a reply out of protocol aborts the session.

    Attributes:
        next: the next-character distribution after the latest feed/reset/prefix.
        position: characters fed since the last reset, generated ones included (the server's
            count after each feed or reset, kept up to date during generation).
        transcript: all text that determines the current state (fed and generated since the
            last reset). Feeding it to a new session reproduces this one's state.
    """

    def __init__(self) -> None:
        self._closed = False
        self._generation = 0  # id of the latest generation; stale iterators stop
        self._generating = False  # replies of the latest generation are still to be read
        self.next: CharDistribution = []
        self.position = 0
        self.transcript = ""

    def _abort(self) -> None:
        """Gives up on the session after an error: no further action can succeed."""
        raise NotImplementedError

    def _on_opened(self, reply: pb.StreamResponse | None) -> SessionInfo:
        if reply is None or reply.WhichOneof("event") != "opened":
            raise unexpected_reply(reply, "'opened'")
        return session_info_from_proto(reply.opened)

    def _on_prediction(self, reply: pb.StreamResponse | None) -> CharDistribution:
        if reply is None or reply.WhichOneof("event") != "prediction":
            self._abort()
            raise unexpected_reply(reply, "'prediction'")
        self.position = reply.prediction.position
        self.next = distribution_from_proto(reply.prediction.next)
        return self.next

    def _on_generation_reply(self, reply: pb.StreamResponse | None) -> list[GeneratedChar]:
        """One reply of the current generation: its characters, or [] at its end."""
        kind = reply.WhichOneof("event") if reply is not None else None
        if kind == "chars":
            generated = generated_chars_from_proto(reply.chars)
            self.transcript += reply.chars.text
            self.position += len(generated)  # generated characters are fed back in
            return generated
        if kind == "end":
            self._generating = False
            return []
        self._abort()
        raise unexpected_reply(reply, "'chars' or 'end'")


class StreamSession(SessionProtocol):
    """A stateful session on one model: the server keeps the LSTM state between calls.

    Obtained from `CharLstmClient.stream`; use it as a context manager (or call `close`).
    Not thread-safe: one action at a time. Every wait for a reply is bounded by the client's
    timeout (see the module docstring).

    Attributes:
        info: the session id and the model version serving it.
        next, position, transcript: see `SessionProtocol`.
    """

    def __init__(
        self,
        start_call: Callable[[Iterator[Any]], Any],
        open_request: pb.StreamRequest,
        timeout: float | None,
        *,
        reopen: bool = False,
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._start_call = start_call
        self._open_request = open_request
        self._reopen = reopen
        self.reopened = 0
        """How many times the session was taken over by a new call (``reopen``)."""
        self._remaining = 0  # characters of the current generation still to come
        self._generate_request: pb.StreamRequest | None = None
        self._open(open_request.open.prefix)

    def _open(self, prefix: str) -> None:
        """Starts the call, sends ``open`` (with ``prefix``) and reads its replies."""
        request = pb.StreamRequest()
        request.CopyFrom(self._open_request)
        request.open.prefix = prefix
        self._closed = False
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader = ResponseReader(self._start_call(iter(self._requests.get, _CLOSE)), "stream session")
        try:
            self._requests.put(request)
            self.info: SessionInfo = self._on_opened(self._reader.next(self._timeout))
            if prefix:
                self._read_prediction()
                self.transcript = prefix
        except BaseException:
            self._abort()
            raise

    def _take_over(self, error: CharLstmError) -> None:
        """After UNAVAILABLE: a new call (gRPC picks a replica that is up) fed with the
        transcript, so that the session's state is what it was. Raises ``error`` if the
        session cannot be reopened, or if reopening is off."""
        if not self._reopen or error.code != grpc.StatusCode.UNAVAILABLE:
            raise error
        transcript = self.transcript
        deadline = Deadline(self._timeout)
        # The first attempt may still be routed to the dying replica: retried with backoff.
        call_with_retry(lambda _remaining: self._open(transcript), REOPEN_RETRY, deadline)
        self.reopened += 1

    # -- actions --    # -- actions --

    def feed(self, text: str) -> CharDistribution:
        """Feeds ``text`` into the state; returns the next-character distribution after it."""
        self._before_action()
        distribution = self._request_prediction(pb.StreamRequest(feed=pb.StreamFeed(text=text)))
        self.transcript += text
        return distribution

    def reset(self) -> CharDistribution:
        """Resets the state to zeros; returns the distribution from the empty state."""
        self._before_action()
        distribution = self._request_prediction(pb.StreamRequest(reset=pb.StreamReset()))
        self.transcript = ""
        return distribution

    def _request_prediction(self, request: pb.StreamRequest) -> CharDistribution:
        """Sends ``request`` and reads its distribution, taking the session over elsewhere
        (once) if its replica went away."""
        try:
            self._requests.put(request)
            return self._read_prediction()
        except CharLstmError as error:
            self._take_over(error)
        self._requests.put(request)
        return self._read_prediction()

    def generate(
        self,
        length: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_chars_per_message: int | None = None,
    ) -> Iterator[str]:
        """Generates ``length`` characters, yielding each one as it arrives. Each is fed back
        into the state. Giving any sampling option replaces the session's sampling options as a
        whole for this generation (the ones not given take the server's defaults, not the
        session's); giving none uses the session's.

        ``max_chars_per_message`` (1-256) lets the server put the characters it has already
        produced into one message, up to that many, when this client reads slower than the
        model generates; no character waits for others. Unset: the session's
        ``chars_per_message``."""
        generated = self.generate_with_probs(
            length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            max_chars_per_message=max_chars_per_message,
        )
        return (g.char for g in generated)

    def generate_with_probs(
        self,
        length: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_chars_per_message: int | None = None,
    ) -> Iterator[GeneratedChar]:
        """Like `generate`, yielding each character with the probability it was drawn with.

        The request is sent at once; abandoning the iterator early is fine (the rest of the
        generation is read, and fed into `transcript`, before the next action)."""
        self._before_action()
        self._generate_request = stream_generate(
            length, temperature, top_k, top_p, seed, max_chars_per_message
        )
        self._remaining = length
        self._requests.put(self._generate_request)
        self._generation += 1
        self._generating = True
        return self._generated(self._generation)

    def _generated(self, generation: int) -> Iterator[GeneratedChar]:
        while self._generating and generation == self._generation:
            yield from self._read_generation_reply()

    def _read_generation_reply(self) -> list[GeneratedChar]:
        try:
            generated = self._on_generation_reply(self._next_reply())
        except CharLstmError as error:
            self._take_over(error)
            if self._remaining <= 0:
                return []
            # The rest of the generation, from the state the transcript rebuilt.
            assert self._generate_request is not None
            self._generate_request.generate.length = self._remaining
            self._requests.put(self._generate_request)
            self._generating = True
            return []
        self._remaining -= len(generated)
        return generated

    def close(self) -> None:
        """Ends the session: half-closes the call so the server finishes it cleanly, then
        cancels it if the server has not ended it within a short while."""
        if self._closed:
            return
        if self._generating:
            # The server would finish the whole generation before seeing the half-close.
            self._abort()
            return
        self._closed = True
        self._requests.put(_CLOSE)
        grace = 2.0 if self._timeout is None else min(2.0, self._timeout)
        self._reader.wait_finished(grace)
        self._reader.cancel()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._abort()  # an error or Ctrl-C: do not wait for the server
        self.close()

    # -- helpers --

    def _before_action(self) -> None:
        if self._closed:
            raise error_for_code(grpc.StatusCode.FAILED_PRECONDITION, "the stream session is closed")
        # Finish an abandoned generation: its replies come before the next action's.
        while self._generating:
            self._read_generation_reply()

    def _next_reply(self) -> pb.StreamResponse | None:
        try:
            return self._reader.next(self._timeout)
        except BaseException:
            self._abort()
            raise

    def _read_prediction(self) -> CharDistribution:
        return self._on_prediction(self._next_reply())

    def _abort(self) -> None:
        """Gives up on the session after an error: no further action can succeed."""
        self._closed = True
        self._generating = False
        self._requests.put(_CLOSE)
        self._reader.cancel()
