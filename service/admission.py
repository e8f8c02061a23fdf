"""Admission control: counts the calls in flight and, once draining, refuses new ones.

Health checks are neither counted nor refused (the call wrapper in ``call_pipeline.py`` does
not apply admission to them): they must keep answering NOT_SERVING during the drain, and a
Watch on them would otherwise hold the drain open.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import grpc

from charlstm.service.errors import Unavailable, to_status
from charlstm.service.logs import current_request_id

__all__ = ["AdmissionControl", "DRAINING"]

DRAINING = "the server is shutting down and accepts no new calls; retry on another server"


class AdmissionControl:
    """The calls in flight, and the switch that refuses new ones with UNAVAILABLE."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._in_flight = 0
        self._draining = False

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def enter(self, context: grpc.ServicerContext) -> None:
        """Count a call in, or abort it with UNAVAILABLE when draining. Pair with
        :meth:`leave` (a unary response: the wrapper's ``finally`` always runs)."""
        with self._lock:
            if self._draining:
                context.abort_with_status(
                    to_status(Unavailable(DRAINING), request_id=current_request_id()))
            self._in_flight += 1

    def leave(self) -> None:
        """Count a call out."""
        with self._lock:
            self._in_flight -= 1
            if self._draining:  # only wait_idle waits, and only once draining
                self._lock.notify_all()

    def enter_stream(self, context: grpc.ServicerContext) -> Callable[[], None]:
        """:meth:`enter` for a streamed response; returns the function that counts it out,
        idempotent and also run by the call's termination callback: a cancelled stream's
        generator is only closed whenever it is collected."""
        self.enter(context)
        left = threading.Lock()

        def leave_once() -> None:
            if left.acquire(blocking=False):
                self.leave()

        context.add_callback(leave_once)
        return leave_once

    def start_draining(self) -> None:
        with self._lock:
            self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight, at most ``timeout`` seconds; True if none is.
        Call it after :meth:`start_draining` (calls leaving wake it only from then on)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True
