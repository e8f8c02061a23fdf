"""Stream sessions: the LSTM state a client keeps on the server, and their lifetime.

- :class:`StreamSession` holds one session's model, state (h, c), sampler and position, and
  does feed / generate / reset in plain types (no gRPC).
- :class:`RequestReader` reads a call's requests in the thread serving the call. A session
  waiting for its next request is that one thread blocked in gRPC's request iterator: nothing
  else (an idle session costs the pool thread and its few objects).
- :class:`SessionRegistry` counts open sessions against ``--max-streams``, keeps the
  ``active_streams`` gauge, and bounds every wait for a request: one reaper thread per server
  ends a call whose wait outlives ``idle_timeout`` with DEADLINE_EXCEEDED, and on shutdown
  every waiting call with UNAVAILABLE (``DRAIN_SETTLE`` after the drain starts, or at once at
  the end of the grace period), cancelling it in gRPC core with that status
  (:func:`~charlstm.service.call_ending.end_call`), so a call never ends silently.

Nothing reads a session's requests while it generates: requests sent meanwhile wait in gRPC
(flow control) and are answered in order afterwards; a cancelled call is noticed through the
session's ``closed`` flag (set by the call's termination callback) and the context.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from charlstm.engine import LSTMState, Sampler, SamplingOptions, Vocab, top_chars
from charlstm.service.call_ending import end_call
from charlstm.service.errors import (
    DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable,
)
from charlstm.service.inference import Stepper
from charlstm.service.metrics import Metrics
from charlstm.service.model_cache import LoadedModel

log = logging.getLogger("charlstm.service.sessions")

__all__ = ["StreamSession", "RequestReader", "SessionRegistry", "CLOSED"]


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: What :meth:`SessionRegistry.next_request` returns when the client has finished sending.
CLOSED = _Marker("CLOSED")
_SHUTTING_DOWN = "the server is shutting down; open the session again (elsewhere or later)"
#: Seconds after the drain starts at which a session waiting for a request ends.
DRAIN_SETTLE = 0.2
_REAPER_LINGER = 10.0  # seconds the reaper thread outlives the last wait it watched


class StreamSession:
    """One client's running conversation with one model version.

    ``position`` counts the characters fed since the last reset, generated ones included
    (generation feeds each character back in).
    """

    def __init__(
        self,
        session_id: str,
        loaded: LoadedModel,
        *,
        sampling: SamplingOptions,
        next_top_k: int,
        chars_per_message: int,
        stepper: Stepper,
    ):
        self.id = session_id
        self.loaded = loaded
        self.sampling = sampling
        self._sampler: Sampler | None = None  # made on first use: many sessions sit idle
        self.next_top_k = next_top_k
        self.chars_per_message = chars_per_message
        self._stepper = stepper
        self.position = 0
        # (L, 1, H); None stands for the zero state, allocated only when first stepped (an
        # idle session then costs no state at all: many sessions sit idle).
        self._state: LSTMState | None = None
        self._probs: np.ndarray | None = None  # (1, V) after the last character fed
        self.last_activity = time.monotonic()
        self.closed = False  # set once, by SessionRegistry.close: any work on it stops

    @property
    def sampler(self) -> Sampler:
        """One sampler for the session's own options, kept, so a seeded session replays
        exactly."""
        if self._sampler is None:
            self._sampler = Sampler(self.sampling)
        return self._sampler

    @property
    def vocab(self) -> Vocab:
        return self.loaded.vocab

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def _distribution(self) -> tuple[np.ndarray, LSTMState]:
        """The next-character probabilities (1, V) and the state they belong to.

        Before anything is fed, this is the engine's convention for an empty prompt: one step
        with UNK_ID from the zero state. It is computed on demand and not kept, so text fed
        afterwards starts from the zero state, exactly like Predict with that text.
        """
        if self._probs is not None and self._state is not None:
            return self._probs, self._state
        ids = np.array([Vocab.UNK_ID], dtype=np.int64)
        return self._stepper.step(self.loaded.model, ids, self._current_state())

    def _current_state(self) -> LSTMState:
        return self._state if self._state is not None else self.loaded.model.zero_state(1)

    def prediction(self) -> tuple[int, list[tuple[str, float]]]:
        """``(position, top next characters)`` for the current state."""
        if self.next_top_k <= 0:
            return self.position, []
        probs, _ = self._distribution()
        return self.position, top_chars(probs[0], self.vocab, self.next_top_k)

    def feed(self, text: str) -> tuple[int, list[tuple[str, float]]]:
        """Advance the state through ``text``; returns :meth:`prediction` afterwards."""
        if text:
            ids = self.vocab.encode(text)[:, None]  # (T, 1)
            self._probs, self._state = self._stepper.feed(self.loaded.model, ids,
                                                          self._current_state())
            self.position += len(text)
        return self.prediction()

    def reset(self) -> tuple[int, list[tuple[str, float]]]:
        """Back to the zero state, as if nothing had been fed."""
        self._state = None
        self._probs = None
        self.position = 0
        return self.prediction()

    def generate(
        self,
        length: int,
        sampler: Sampler | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        chunk: int = 1,
    ) -> Iterator[tuple[str, float, int]]:
        """Sample up to ``length`` characters, feeding each back in; yields ``(char, prob,
        ready)`` as soon as each is drawn, ``ready`` being how many more are already drawn
        (the batch loop runs ahead of a slow reader; always 0 unbatched). ``chunk``: the
        caller sends characters in groups of this many (see ``Generation.chunk``).

        ``should_stop()`` is polled after each character; when it fires (the call is over: the
        session is closing, the client cancelled or the server drains) the generation is
        abandoned and the session's state is left as it was before it: the session is not used
        again. A generation that runs to its end commits the state after its last character.
        """
        sampler = sampler or self.sampler
        probs, state = self._distribution()
        chars = char_table(self.vocab)
        generation = self._stepper.generate(self.loaded.model, probs, state, [sampler], length)
        generation.chunk = chunk
        finished = False
        try:
            for ids, p in generation:
                if should_stop() or self.closed:
                    return
                yield chars[ids[0]], float(p[0]), generation.ready()
                self.position += 1
            finished = True
        finally:
            if not finished:  # stopped, or the consumer closed us (a cancelled call)
                generation.stop()
        self._probs, self._state = generation.probs, generation.state
        self.touch()


_CHAR_TABLES: dict[str, list[str]] = {}


def char_table(vocab: Vocab) -> list[str]:
    """``table[id]`` is the character of ``id`` (``Vocab.decode`` of one id costs ~9 us; this
    lookup ~50 ns, which matters once per generated character)."""
    table = _CHAR_TABLES.get(vocab.chars)
    if table is None:
        if len(_CHAR_TABLES) >= 64:  # bounded: one per vocabulary in use
            _CHAR_TABLES.clear()
        table = _CHAR_TABLES[vocab.chars] = [vocab.decode([i]) for i in range(vocab.size)]
    return table


class RequestReader:
    """A call's requests, read in the thread serving the call.

    :meth:`SessionRegistry.first_request` and :meth:`SessionRegistry.next_request` read through
    it, under the registry's watch: ``ended`` is the error the registry ended the call with
    while it waited (idle too long, or the server drains).
    """

    __slots__ = ("_requests", "context", "session_id", "deadline", "draining", "ended")

    def __init__(self, requests: Iterator[Any], context: grpc.ServicerContext):
        self._requests = requests
        self.context = context
        self.session_id: str | None = None  # None while waiting for `open`
        # The current wait ends the call at `deadline` (monotonic): an idle session's expiry,
        # or, once `draining`, the drain's end.
        self.deadline = 0.0
        self.draining = False
        self.ended: ServiceError | None = None  # set when the registry ended the call

    def read(self) -> Any:
        """The next request, or :data:`CLOSED` when the client finished sending or the call is
        over (the iterator raises when the call was cancelled: either way no more requests)."""
        try:
            return next(self._requests)
        except StopIteration:
            return CLOSED
        except Exception:  # noqa: BLE001 - cancelled or finished
            return CLOSED


class SessionRegistry:
    """The open sessions of one server: limit, idle timeout, metrics and shutdown."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_timeout: float,
        stepper: Stepper,
        metrics: Metrics | None = None,
    ):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.stepper = stepper
        self._metrics = metrics
        self._lock = threading.Lock()
        self._sessions: dict[str, StreamSession] = {}
        self._waiting: set[RequestReader] = set()  # calls blocked reading their next request
        self._wake = threading.Condition(self._lock)  # the reaper: a sooner deadline, or drain
        self._reaper: threading.Thread | None = None
        self._next_deadline = float("inf")  # when the reaper wakes next
        self._draining = False
        self._drain_deadline = float("inf")  # draining: waits end by then (monotonic)
        self._generation_stopped = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(
        self,
        loaded: LoadedModel,
        *,
        sampling: SamplingOptions,
        next_top_k: int,
        chars_per_message: int,
    ) -> StreamSession:
        """Register a new session; ResourceExhausted past ``--max-streams``, Unavailable while
        the server drains."""
        session = StreamSession(
            uuid.uuid4().hex, loaded, sampling=sampling, next_top_k=next_top_k,
            chars_per_message=chars_per_message, stepper=self.stepper,
        )
        with self._lock:
            if self._draining:
                raise Unavailable(_SHUTTING_DOWN)
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(
                    f"too many open Stream sessions: this server allows {self.max_sessions} at "
                    "once (--max-streams); close one or retry later"
                )
            self._sessions[session.id] = session
            if self._metrics is not None:
                self._metrics.active_streams.inc()
        return session

    def close(self, session: StreamSession) -> None:
        """Forget a session and stop any work on it. Safe to call more than once, from any
        thread (the handler's ``finally`` and the call's termination callback both do)."""
        session.closed = True
        with self._lock:
            if self._sessions.pop(session.id, None) is not None and self._metrics is not None:
                self._metrics.active_streams.dec()

    def first_request(self, reader: RequestReader) -> Any:
        """Wait for a new call's first request (or :data:`CLOSED`): DeadlineExceeded after
        ``idle_timeout``, Unavailable when the server drains meanwhile."""
        return self._read(reader, time.monotonic() + self.idle_timeout)

    def next_request(self, session: StreamSession, reader: RequestReader) -> Any:
        """Wait for the session's next request (or :data:`CLOSED`).

        This is where idle sessions are reaped: DeadlineExceeded when nothing arrives within
        ``idle_timeout`` of the session's last activity; Unavailable when the server drains.
        """
        reader.session_id = session.id
        request = self._read(reader, session.last_activity + self.idle_timeout)
        session.touch()
        return request

    def _read(self, reader: RequestReader, deadline: float) -> Any:
        """Read one request in this thread, the reaper watching the wait (see the module
        doc); raises the error the registry ended the call with."""
        with self._lock:
            reader.deadline, reader.draining = deadline, False
            if self._draining:
                if time.monotonic() >= self._drain_deadline:
                    raise self._error(reader, shutdown=True)
                self._drain(reader)
            self._waiting.add(reader)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="charlstm-stream-reaper",
                                                daemon=True)
                self._reaper.start()
            elif reader.deadline < self._next_deadline:
                self._wake.notify()
        try:
            request = reader.read()
        finally:
            with self._lock:
                self._waiting.discard(reader)
        if reader.ended is not None:
            raise reader.ended
        return request

    def _error(self, reader: RequestReader, *, shutdown: bool) -> ServiceError:
        """Why the registry ends a wait (built only then: an idle session keeps no message)."""
        sid = reader.session_id
        if shutdown:
            if sid is None:
                return Unavailable(_SHUTTING_DOWN)
            return Unavailable(f"the server is shutting down; Stream session {sid} is closed, "
                               "open a new one (on another server or after the restart)")
        if sid is None:
            return DeadlineExceeded(f"no `open` message arrived within {self.idle_timeout:g} s "
                                    "(the server's --idle-timeout)")
        return DeadlineExceeded(
            f"Stream session {sid} was idle for more than {self.idle_timeout:g} s (the "
            "server's --idle-timeout) and has been closed; open a new session")

    def _drain(self, reader: RequestReader) -> None:
        """The wait of ``reader`` ends, for the drain, at the drain deadline (caller holds
        ``_lock``)."""
        if self._drain_deadline <= reader.deadline:  # else it expires (idle) before that
            reader.deadline, reader.draining = self._drain_deadline, True

    def _take(self, readers: list[RequestReader], *, shutdown: bool) -> None:
        """Stop watching ``readers`` and set the error each call ends with (caller holds
        ``_lock``); :meth:`_end` then ends them."""
        for reader in readers:
            self._waiting.discard(reader)
            reader.ended = self._error(reader, shutdown=shutdown or reader.draining)
            if (self._metrics is not None and reader.session_id is not None
                    and not (shutdown or reader.draining)):
                self._metrics.stream_sessions_expired_total.inc()

    def _reap(self) -> None:
        """The reaper thread: ends every wait past its deadline; exits after a while with no
        wait to watch (the next wait starts it again)."""
        while True:
            with self._lock:
                now = time.monotonic()
                due = [r for r in self._waiting if r.deadline <= now]
                self._take(due, shutdown=False)
                if not due:
                    if self._waiting:
                        self._next_deadline = min(r.deadline for r in self._waiting)
                        self._wake.wait(self._next_deadline - now)
                    else:
                        self._next_deadline = float("inf")
                        if not self._wake.wait(_REAPER_LINGER) and not self._waiting:
                            self._reaper = None
                            return
                    continue
            self._end(due)

    @staticmethod
    def _end(readers: list[RequestReader]) -> None:
        """End the calls of ``readers`` with their ``ended`` error, outside ``_lock`` (the
        calls' termination callbacks take it). Each serving thread, woken in the request
        iterator, raises that error (:meth:`_read`)."""
        for reader in readers:
            assert reader.ended is not None
            try:
                end_call(reader.context, reader.ended.code, reader.ended.message)
            except Exception:  # noqa: BLE001 - the reaper must live on for the other calls
                log.exception("could not end a Stream call", extra={"fields": {
                    "event": "stream_end_failed", "session": reader.session_id}})

    def shutdown(self) -> None:
        """Refuse new sessions and end the open ones at their next wait for a request (a
        generation in progress finishes first, within the server's grace period).

        A wait ends ``DRAIN_SETTLE`` seconds after the drain starts, not at once: a request
        the client sent just before is then still read and served, where a reader started
        only now would otherwise race it."""
        with self._lock:
            if self._draining:
                return
            self._draining = True
            self._drain_deadline = time.monotonic() + DRAIN_SETTLE
            for reader in self._waiting:
                self._drain(reader)
            self._wake.notify()

    def stop_generations(self) -> None:
        """End of the grace period: generations in progress stop at their next character
        (the RPC layer ends those calls with UNAVAILABLE), and sessions still waiting for a
        request end now, not ``DRAIN_SETTLE`` after the drain began (with no grace period that
        would be after gRPC has cancelled their calls without a word)."""
        self._generation_stopped.set()
        with self._lock:
            self._draining = True
            self._drain_deadline = time.monotonic()
            due = list(self._waiting)
            self._take(due, shutdown=True)
        self._end(due)

    @property
    def generation_stopped(self) -> bool:
        return self._generation_stopped.is_set()
