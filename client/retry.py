"""Which calls are repeated after UNAVAILABLE, how long to wait between attempts, and the
deadline that bounds them all.

Only calls that are safe to repeat go through `call_with_retry`: reads (GetModel, ListModels,
GetJob, ListJobs, the opening of WatchJob), Predict, Evaluate, SetLabel (setting a label to a
version twice is the same as once), health checks, and UploadCorpus when its source can be
replayed from the start (corpora are deduplicated by their sha256, so a second upload is
harmless). Train, CancelJob, DeleteModel and Stream sessions are never repeated: a second
attempt could start a second job or act on a state the first attempt already changed.

The waits grow exponentially with random jitter, so that many clients that lost the same server
do not come back in lock-step. All attempts share one deadline: a call with ``timeout=30``
gives up after 30 seconds in all, whatever the number of attempts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from charlstm.client.errors import CharLstmError, from_rpc_error

T = TypeVar("T")

__all__ = [
    "RetryPolicy",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "Deadline",
    "call_with_retry",
    "call_with_retry_async",
]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for calls that are safe to repeat.

    The n-th retry (n = 0, 1, ...) waits ``min(max_backoff, initial_backoff * multiplier**n)``
    seconds, scaled by a random factor in ``[1 - jitter, 1 + jitter]``.

    Attributes:
        max_attempts: attempts in all, including the first (1 disables retries).
        retryable_codes: status codes worth another attempt; UNAVAILABLE means the request did
            not reach a working server (down, restarting, draining).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {self.max_attempts})")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1 (got {self.jitter})")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        factor = (rng or random).uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, base * factor)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """A point in time shared by all attempts of one call (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._expires = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        if self._expires is None:
            return None
        return max(0.0, self._expires - time.monotonic())


def _code(error: BaseException) -> grpc.StatusCode | None:
    if isinstance(error, CharLstmError):
        return error.code
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _should_retry(
    error: BaseException, retries: int, policy: RetryPolicy, deadline: Deadline, delay: float
) -> bool:
    if _code(error) not in policy.retryable_codes or retries + 1 >= policy.max_attempts:
        return False
    remaining = deadline.remaining()
    return remaining is None or delay < remaining


def call_with_retry(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    can_retry: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``attempt(timeout_seconds)`` until it succeeds, the policy gives up, the deadline
    passes or ``can_retry()`` says the request cannot be replayed; raises `CharLstmError`.

    ``attempt`` may raise `grpc.RpcError` or `CharLstmError`; either way the caller gets a
    `CharLstmError`."""
    retries = 0
    while True:
        try:
            return attempt(deadline.remaining())
        except (grpc.RpcError, CharLstmError) as error:
            delay = policy.backoff(retries)
            if not (_should_retry(error, retries, policy, deadline, delay) and can_retry()):
                if isinstance(error, CharLstmError):
                    raise
                raise from_rpc_error(error) from error
        sleep(delay)
        retries += 1


async def call_with_retry_async(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    can_retry: Callable[[], bool] = lambda: True,
) -> T:
    """The asyncio form of `call_with_retry`."""
    retries = 0
    while True:
        try:
            return await attempt(deadline.remaining())
        except (grpc.RpcError, CharLstmError) as error:
            delay = policy.backoff(retries)
            if not (_should_retry(error, retries, policy, deadline, delay) and can_retry()):
                if isinstance(error, CharLstmError):
                    raise
                raise from_rpc_error(error) from error
        await asyncio.sleep(delay)
        retries += 1
