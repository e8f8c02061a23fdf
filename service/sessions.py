"""Stream sessions: the LSTM state a client keeps on the server, and their lifetime.

- :class:`StreamSession` holds one session's model, state (h, c), sampler and position, and
  does feed / generate / reset in plain types (no gRPC).
- :class:`RequestInbox` reads a session's incoming requests on a small thread of its own, so
  the thread serving the session can wait for the next request *with a timeout*. That timeout
  is how idle sessions are reaped: :meth:`SessionRegistry.next_request` raises
  :class:`DeadlineExceeded` once a session has been idle for ``idle_timeout`` seconds, so the
  call ends with a status that says so, never silently.
- :class:`SessionRegistry` counts open sessions against ``--max-streams``, keeps the
  ``active_streams`` gauge, and on shutdown wakes every session waiting for a request so it
  ends with UNAVAILABLE.

Threads per open session: the gRPC pool thread running the handler, plus the inbox reader,
which is blocked in the request iterator almost all of the time.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np

from charlstm.engine import LSTMState, Sampler, SamplingOptions, Vocab, top_chars
from charlstm.service.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from charlstm.service.inference import Stepper
from charlstm.service.metrics import Metrics
from charlstm.service.model_cache import LoadedModel

__all__ = ["StreamSession", "RequestInbox", "SessionRegistry", "CLOSED"]


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: What :meth:`SessionRegistry.next_request` returns when the client has finished sending.
CLOSED = _Marker("CLOSED")
_SHUTDOWN = _Marker("SHUTDOWN")
_TIMEOUT = _Marker("TIMEOUT")
_SHUTTING_DOWN = "the server is shutting down; open the session again (elsewhere or later)"


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
        # One sampler for the session's own options, so a seeded session replays exactly.
        self.sampler = Sampler(sampling)
        self.next_top_k = next_top_k
        self.chars_per_message = chars_per_message
        self._stepper = stepper
        self.position = 0
        # (L, 1, H); None stands for the zero state, allocated only when first stepped (an
        # idle session then costs no state at all: many sessions sit idle).
        self._state: LSTMState | None = None
        self._probs: np.ndarray | None = None  # (1, V) after the last character fed
        self.last_activity = time.monotonic()
        self.closed = threading.Event()

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
    ) -> Iterator[tuple[str, float, int]]:
        """Sample up to ``length`` characters, feeding each back in; yields ``(char, prob,
        ready)`` as soon as each is drawn, ``ready`` being how many more are already drawn
        (the batch loop runs ahead of a slow reader; always 0 unbatched).

        ``should_stop()`` is polled after each character; when it fires (the call is over: the
        session is closing, the client cancelled or the server drains) the generation is
        abandoned and the session's state is left as it was before it: the session is not used
        again. A generation that runs to its end commits the state after its last character.
        """
        sampler = sampler or self.sampler
        probs, state = self._distribution()
        chars = char_table(self.vocab)
        generation = self._stepper.generate(self.loaded.model, probs, state, [sampler], length)
        finished = False
        try:
            for ids, p in generation:
                if should_stop() or self.closed.is_set():
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


class RequestInbox:
    """Moves requests from a blocking iterator onto a queue, on a daemon thread.

    The reader ends when the iterator does: the client half-closes (-> :data:`CLOSED`), the
    call is cancelled or finishes (the iterator raises; also -> :data:`CLOSED`).
    """

    _ids = itertools.count(1)

    def __init__(self, requests: Iterator[Any]):
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # lighter than a Queue
        self._thread = threading.Thread(
            target=self._read, args=(requests,), name=f"stream-reader-{next(self._ids)}",
            daemon=True,
        )
        self._thread.start()

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            for request in requests:
                self._queue.put(request)
        except Exception:  # noqa: BLE001 - cancelled or finished: either way no more requests
            pass
        finally:
            self._queue.put(CLOSED)

    def get(self, timeout: float) -> Any:
        """The next request, :data:`CLOSED`, the shutdown marker, or ``_TIMEOUT``."""
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return _TIMEOUT

    def interrupt(self) -> None:
        """Wake the handler waiting in :meth:`get` with the shutdown marker."""
        self._queue.put(_SHUTDOWN)


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
        self._sessions: dict[str, tuple[StreamSession, RequestInbox]] = {}
        self._pending: set[RequestInbox] = set()  # calls waiting for their `open`
        self._draining = False
        self._generation_stopped = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(
        self,
        loaded: LoadedModel,
        inbox: RequestInbox,
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
            self._sessions[session.id] = (session, inbox)
            if self._metrics is not None:
                self._metrics.active_streams.inc()
        return session

    def close(self, session: StreamSession) -> None:
        """Forget a session and stop any work on it. Safe to call more than once, from any
        thread (the handler's ``finally`` and the call's termination callback both do)."""
        session.closed.set()
        with self._lock:
            if self._sessions.pop(session.id, None) is not None and self._metrics is not None:
                self._metrics.active_streams.dec()

    def first_request(self, inbox: RequestInbox) -> Any:
        """Wait for a new call's first request (or :data:`CLOSED`): DeadlineExceeded after
        ``idle_timeout``, Unavailable when the server drains meanwhile."""
        with self._lock:
            if self._draining:
                raise Unavailable(_SHUTTING_DOWN)
            self._pending.add(inbox)
        try:
            deadline = time.monotonic() + self.idle_timeout
            while True:
                item = inbox.get(deadline - time.monotonic())
                if item is _SHUTDOWN:
                    raise Unavailable(_SHUTTING_DOWN)
                if item is not _TIMEOUT:
                    return item
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"no `open` message arrived within {self.idle_timeout:g} s (the "
                        "server's --idle-timeout)"
                    )
        finally:
            with self._lock:
                self._pending.discard(inbox)

    def next_request(self, session: StreamSession, inbox: RequestInbox) -> Any:
        """Wait for the session's next request (or :data:`CLOSED`).

        This is where idle sessions are reaped: DeadlineExceeded when nothing arrives within
        ``idle_timeout`` of the session's last activity; Unavailable when the server drains.
        """
        while True:
            remaining = session.last_activity + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                if self._metrics is not None:
                    self._metrics.stream_sessions_expired_total.inc()
                raise DeadlineExceeded(
                    f"Stream session {session.id} was idle for more than {self.idle_timeout:g} s "
                    "(the server's --idle-timeout) and has been closed; open a new session"
                )
            item = inbox.get(remaining)
            if item is _TIMEOUT:
                continue
            if item is _SHUTDOWN:
                raise Unavailable(
                    f"the server is shutting down; Stream session {session.id} is closed, open "
                    "a new one (on another server or after the restart)"
                )
            session.touch()
            return item

    def shutdown(self) -> None:
        """Refuse new sessions and end the open ones at their next wait for a request (a
        generation in progress finishes first, within the server's grace period)."""
        with self._lock:
            self._draining = True
            inboxes = [inbox for _, inbox in self._sessions.values()] + list(self._pending)
        for inbox in inboxes:
            inbox.interrupt()

    def stop_generations(self) -> None:
        """End of the grace period: generations in progress stop at their next character
        (the RPC layer ends those calls with UNAVAILABLE)."""
        self._generation_stopped.set()

    @property
    def generation_stopped(self) -> bool:
        return self._generation_stopped.is_set()
