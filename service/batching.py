"""Continuous batching: every request on one model version advances in one ``CharLSTM.step``.

:class:`BatchingStepper` implements the :class:`~charlstm.service.inference.Stepper` seam. Per
model it runs one loop thread (:class:`_ModelLoop`) that owns a FIFO of *participants*:

- a feed (Stream ``feed``, Predict's prompt, the first distribution of a session): B rows and
  T characters each; it advances one character per loop iteration and its caller, blocked
  meanwhile, gets the final distribution and state. Feeds longer than ``direct_feed_chars``
  skip the loop and run in the caller's thread with ``CharLSTM.feed`` (one input GEMM for the
  whole text beats T batched steps, and NumPy releases the GIL inside it, so it overlaps with
  the loop on another core);
- a generation (Stream ``generate``, Predict's continuation): B rows, each with its own
  sampler; every iteration draws the next character of each row and feeds it back in. The
  drawn characters go onto the participant's queue, which the caller's thread drains and sends,
  so sending (gRPC) overlaps with computing the next characters. A caller that sends groups of
  ``Generation.chunk`` characters is woken once per group, not once per character.

One iteration takes participants from the front of the FIFO up to ``max_batch_size`` rows,
draws the characters of the generations (one vectorised draw per distinct sampling setting,
each row still using its own seeded generator, so the characters are the ones the unbatched
path draws), stacks the states (or reuses the previous step's stacked output when the same
participants step again), runs ONE ``model.step`` for all rows and splits the result back.
Participants still running go to the back of the FIFO (round robin: none is starved when
there are more rows than ``max_batch_size``). A generation that is more than ``max_ahead``
characters ahead of its reader sits out until the reader catches up.

Waiting: when only new requests are queued, with fewer rows than took part in the previous
iteration (callers between two of their requests), the loop waits up to ``max_wait`` for the
others, never longer. A feed or generation in progress never waits: a new request joins the
running ones at their next step.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Iterator

import numpy as np

from charlstm.engine import CharLSTM, LSTMState, Sampler, SamplingOptions
from charlstm.engine.blas import single_threaded
from charlstm.service.inference import Generation, Stepper
from charlstm.service.metrics import Metrics

__all__ = ["BatchingStepper"]

log = logging.getLogger("charlstm.service.batching")

_END = object()  # a generation's queue: no more characters


class _Draws:
    """Stands in for a Sampler's generator: ``random(n)`` takes one draw from each row's own
    generator, in row order, exactly what each row's ``Sampler.sample`` of one row draws."""

    def __init__(self, generators: list[np.random.Generator]):
        self._generators = generators

    def random(self, n: int) -> np.ndarray:
        assert n == len(self._generators)
        return np.array([g.random() for g in self._generators])  # (n,)


class _Participant:
    """Rows of one request in the loop's FIFO. ``rows`` = B."""

    def __init__(self, state: LSTMState, probs: np.ndarray | None):
        self.state = state  # (L, B, H)
        self.probs = probs  # (B, V) after the last character fed
        self.rows = state.batch_size
        self.submitted = time.monotonic()
        self.started = False  # taken into a batch at least once (for the queue-wait metric)
        self.error: BaseException | None = None


def _own(p: _Participant) -> None:
    """Copy a finished participant's rows out of the batch arrays: a session keeps its state
    for long, and a view would keep the whole batch's (L, N, H) alive."""
    p.state = p.state.copy()
    if p.probs is not None:
        p.probs = p.probs.copy()


class _Feed(_Participant):
    """T known characters for B rows; the caller blocks on ``done``."""

    def __init__(self, ids: np.ndarray, state: LSTMState):
        super().__init__(state, None)
        self.ids = ids  # (T, B)
        self.t = 0  # characters fed so far
        self.done = threading.Event()

    def next_ids(self) -> np.ndarray:
        return self.ids[self.t]  # (B,)

    def advanced(self) -> bool:
        """One character was fed; True when this feed is complete."""
        self.t += 1
        return self.t >= self.ids.shape[0]

    def finish(self) -> None:
        _own(self)
        self.done.set()


class _Generation(_Participant, Generation):
    """Sampled continuation of B rows, computed by the loop and read by the caller."""

    def __init__(self, loop: "_ModelLoop", probs: np.ndarray, state: LSTMState,
                 samplers: list[Sampler], length: int, feed_last: bool):
        super().__init__(state, probs)
        self.loop = loop
        self.samplers = samplers
        self.remaining = length
        self.feed_last = feed_last
        # (ids (B,), p (B,)) per position, then _END. Not a queue.Queue: the loop appends
        # without waking the reader unless it sleeps and now has what it waits for (below).
        self.out: collections.deque = collections.deque()
        self._mutex = threading.Lock()  # orders `out` against the reader's going to sleep
        self._wake = threading.Lock()  # held while nobody sleeps; released to wake the reader
        self._wake.acquire()
        self._want = 0  # > 0: the reader sleeps until `out` holds this many (or the end)
        self._taken = 0  # positions the reader has taken (aligns its groups of `chunk`)
        self.stopped = False
        self.throttled = False  # set aside by the loop, too far ahead of its reader
        self._drawn: np.ndarray | None = None  # ids drawn this iteration, to feed back

    # -- the loop's side --

    def draw_done(self, ids: np.ndarray, p: np.ndarray) -> bool:
        """The rows' next characters were drawn; True when they need feeding back."""
        self.remaining -= 1
        self._put((ids, p))
        self._drawn = ids
        return self.remaining > 0 or self.feed_last

    def next_ids(self) -> np.ndarray:
        assert self._drawn is not None
        return self._drawn

    def advanced(self) -> bool:
        return self.remaining <= 0

    def finish(self) -> None:
        _own(self)
        self._put(_END)

    def _put(self, item) -> None:
        # Waking a thread costs the loop a futex call and, with 64 readers, was a third of
        # its GIL time (py-spy); a reader that is busy sending, or waits for a whole message
        # of `chunk` characters, is not woken for each one.
        with self._mutex:
            self.out.append(item)
            if self._want and (len(self.out) >= self._want or item is _END):
                self._want = 0
                self._wake.release()

    # -- the caller's side --

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        out = self.out
        while True:
            if not out:
                self._sleep()
            item = out.popleft()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            self._taken += 1
            if self.throttled and len(out) < self.loop.max_ahead // 2:
                self.throttled = False
                self.loop.wake()  # the loop set this generation aside: it may run again
            yield item

    def _sleep(self) -> None:
        """Wait until the rest of the reader's current group of ``chunk`` positions is drawn,
        or the generation ended."""
        # Never more than the loop runs ahead of us: it would set this generation aside first.
        want = min(self.chunk - self._taken % self.chunk, self.loop.max_ahead)
        with self._mutex:
            if len(self.out) >= want or (self.out and self.out[-1] is _END):
                return
            self._want = want
        self._wake.acquire()

    def stop(self) -> None:
        self.stopped = True
        self.loop.wake()

    def ready(self) -> int:
        out = self.out
        return len(out) - 1 if out and out[-1] is _END else len(out)  # not the end mark


class _ModelLoop:
    """The batch loop of one model: a FIFO of participants and the thread that runs it."""

    def __init__(self, owner: "BatchingStepper", model: CharLSTM):
        self.owner = owner
        self.model = model
        self.max_ahead = owner.max_ahead
        self._cond = threading.Condition()
        self._fifo: collections.deque[_Participant] = collections.deque()
        self._exiting = False
        self._last_rows = 0  # rows in the previous iteration
        self._samplers: dict[tuple, Sampler] = {}  # one vectorised sampler per setting
        # The previous iteration's stacked output state and the row views handed out of it.
        self._stacked: tuple[LSTMState, list[LSTMState]] | None = None
        self._thread = threading.Thread(target=self._run, name="charlstm-batcher", daemon=True)
        self._thread.start()

    def submit(self, participant: _Participant) -> bool:
        """Queue a participant; False if this loop is exiting (make a new one)."""
        with self._cond:
            if self._exiting:
                return False
            self._fifo.append(participant)
            self._cond.notify()
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- the loop thread --

    def _runnable(self, p: _Participant) -> bool:
        if isinstance(p, _Generation) and len(p.out) >= self.max_ahead:
            p.throttled = True
            return False
        return True

    def _take(self) -> list[_Participant] | None:
        """Wait for work and take the next batch from the FIFO; None when idle long enough to
        exit."""
        owner = self.owner
        with self._cond:
            idle_since = time.monotonic()
            while True:
                self._fifo = collections.deque(
                    p for p in self._fifo if not (isinstance(p, _Generation) and p.stopped))
                ready = sum(p.rows for p in self._fifo if self._runnable(p))
                if ready:
                    break
                if not self._fifo and time.monotonic() - idle_since > owner.linger:
                    self._exiting = True
                    owner._forget(self)
                    return None
                # Throttled generations are woken by their readers; the timeout is a backstop.
                self._cond.wait(0.05 if self._fifo else owner.linger)
            # Callers between two requests: give them up to max_wait to come back, but only
            # when nothing in progress is waiting (a running feed or generation never waits).
            deadline = time.monotonic() + owner.max_wait
            while (ready < min(self._last_rows, owner.max_batch_size)
                   and not any(p.started for p in self._fifo)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                ready = sum(p.rows for p in self._fifo if self._runnable(p))
            batch: list[_Participant] = []
            skipped: list[_Participant] = []
            rows = 0
            while self._fifo:
                p = self._fifo[0]
                if not self._runnable(p):
                    skipped.append(self._fifo.popleft())
                    continue
                if batch and rows + p.rows > owner.max_batch_size:
                    break
                batch.append(self._fifo.popleft())
                rows += p.rows
            self._fifo.extendleft(reversed(skipped))  # keep their place in line
            self._last_rows = rows
            return batch

    def _requeue(self, participants: list[_Participant]) -> None:
        with self._cond:
            self._fifo.extend(participants)

    def _run(self) -> None:
        # Single-threaded BLAS (see Stepper) for as long as this loop lives, entered once here
        # for every step below: toggling OpenBLAS's thread count on every step cost ~5% of a
        # single stream's loop time, and even a nested entry's bookkeeping ~1%.
        with single_threaded():
            self._serve()

    def _serve(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                steady = self._steady(batch)
                # One row keeps its own loop: no stacking, no vectorised draw, no per-step
                # lists (through _run_steady a lone stream ran 4-13% slower in-process, 2 runs).
                if steady and len(steady) == 1:
                    still = self._run_alone(steady[0])
                elif steady:
                    still = self._run_steady(steady)
                else:
                    still = self._iterate(batch)
            except BaseException as error:  # noqa: BLE001 - hand it to every caller in the batch
                log.exception("a batched step failed", extra={"fields": {
                    "event": "batch_failed", "participants": len(batch)}})
                for p in batch:
                    p.error = error
                    p.finish()
                continue
            self._requeue(still)

    def _steady(self, batch: list[_Participant]) -> list[_Generation] | None:
        """``batch`` as a steady group, or None: only one-row generations with one sampling
        setting, and nobody else waiting."""
        if self._fifo:
            return None
        key = None
        for p in batch:
            if not isinstance(p, _Generation) or p.rows != 1:
                return None
            o = p.samplers[0].options
            if key is None:
                key = (o.temperature, o.top_k, o.top_p)
            elif key != (o.temperature, o.top_k, o.top_p):
                return None
        return batch  # type: ignore[return-value]

    def _run_alone(self, g: _Generation) -> list[_Participant]:
        """Iterations of a one-row generation alone in the loop (a single stream): the same
        draw, step and hand-over as :meth:`_iterate`, repeated without going back through the
        FIFO for as long as nothing else is queued, the reader keeps up and nobody stopped
        it. A participant submitted meanwhile joins at the next step, as it would anyway.
        Returns what :meth:`_iterate` returns."""
        self._mark_started([g])
        sampler, model, out = g.samplers[0], self.model, g.out
        rows = None if self.owner.metrics is None else self.owner.metrics.batch_rows
        while True:
            ids, p = sampler.sample(g.probs)  # (1,), (1,): what _draw's one-row group draws
            if not g.draw_done(ids, p):
                g.finish()
                return []
            g.probs, g.state = model.step(ids, g.state)  # single-threaded BLAS (see _run)
            if rows is not None:
                rows.observe(1)
            if g.advanced():
                g.finish()
                return []
            if self._fifo or g.stopped or len(out) >= self.max_ahead:
                return [g]  # others to serve, or for _take to set aside

    def _run_steady(self, gens: list[_Generation]) -> list[_Participant]:
        """Iterations of a steady group of several rows (many streams generating): the
        draw, step and hand-over of :meth:`_iterate`, repeated without going back through the
        FIFO and with the rows kept stacked between steps, for as long as nothing else is
        queued and no row finishes, stops or gets too far ahead of its reader. The loop's own
        work per step and row is then one hand-over; with 64 rows, the per-row bookkeeping of
        :meth:`_iterate` was about as long as the step's products. Returns what
        :meth:`_iterate` returns."""
        self._mark_started(gens)
        model, max_ahead = self.model, self.max_ahead
        rows = None if self.owner.metrics is None else self.owner.metrics.batch_rows
        n = len(gens)
        # One vectorised draw, each row from its own generator (as in _draw).
        o = gens[0].samplers[0].options
        sampler = self._sampler((o.temperature, o.top_k, o.top_p))
        sampler.rng = _Draws([g.samplers[0].rng for g in gens])  # type: ignore[assignment]
        probs = np.concatenate([g.probs for g in gens])  # (n, V)
        state = self._stack(gens)  # (L, n, H)
        while True:
            ids, p = sampler.sample(probs)  # (n,), (n,)
            fed = [g.draw_done(ids[j: j + 1], p[j: j + 1]) for j, g in enumerate(gens)]
            before = (probs, state)
            if not any(fed):
                break  # every row drew its last character and needs no step
            # Rows that need no feeding are stepped too, but keep their state from before.
            probs, state = model.step(ids, state)  # single-threaded BLAS (see _run)
            if rows is not None:
                rows.observe(n)
            if self._fifo or not all(fed) or any(
                    g.remaining <= 0 or g.stopped or len(g.out) >= max_ahead for g in gens):
                break  # others to serve, a row done, or one for _take to set aside
        # Each row gets its views, as after _iterate: the FIFO's path and finish() read them.
        parts = state.split([1] * n)
        self._stacked = (state, parts)
        still: list[_Participant] = []
        for j, (g, f) in enumerate(zip(gens, fed)):
            if f:
                g.state, g.probs = parts[j], probs[j: j + 1]
            else:
                g.state, g.probs = before[1]._view(j, j + 1), before[0][j: j + 1]
            if g.remaining <= 0:
                g.finish()
            else:
                still.append(g)
        return still

    def _mark_started(self, batch: list[_Participant]) -> None:
        """The queue-wait metric, at a participant's first step."""
        now = time.monotonic()
        metrics = self.owner.metrics
        for p in batch:
            if not p.started:
                p.started = True
                if metrics is not None:
                    metrics.batch_queue_wait_seconds.observe(now - p.submitted)

    def _iterate(self, batch: list[_Participant]) -> list[_Participant]:
        """One iteration: draw for the generations, one step for every row; returns the
        participants that go on."""
        self._mark_started(batch)
        metrics = self.owner.metrics
        gens = [p for p in batch if isinstance(p, _Generation)]
        stepping: list[_Participant] = [p for p in batch if not isinstance(p, _Generation)]
        finished: list[_Participant] = []
        if gens:
            for g, (ids, probs) in zip(gens, self._draw(gens)):
                (stepping if g.draw_done(ids, probs) else finished).append(g)
        if len(stepping) == 1:  # alone: no stacking or splitting
            p = stepping[0]
            # BLAS is single-threaded for the whole loop thread (see _run).
            p.probs, p.state = self.model.step(p.next_ids(), p.state)
            if metrics is not None:
                metrics.batch_rows.observe(p.rows)
            if p.advanced():
                finished.append(p)
        elif stepping:
            ids = np.concatenate([p.next_ids() for p in stepping])  # (N,)
            # (N, V): one product per layer for all rows (see _run)
            probs, state = self.model.step(ids, self._stack(stepping))
            if metrics is not None:
                metrics.batch_rows.observe(len(ids))
            sizes = [p.rows for p in stepping]
            bounds = np.cumsum([0] + sizes)
            parts = state.split(sizes)
            self._stacked = (state, parts)
            for p, part, a, b in zip(stepping, parts, bounds[:-1], bounds[1:]):
                p.state, p.probs = part, probs[a:b]
                if p.advanced():
                    finished.append(p)
        for p in finished:
            p.finish()
        over = {id(p) for p in finished}
        return [p for p in batch if id(p) not in over]

    def _sampler(self, key: tuple) -> Sampler:
        """The vectorised sampler of one (temperature, top_k, top_p); its generator is set by
        the caller to the rows' own (see _Draws)."""
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = self._samplers[key] = Sampler(SamplingOptions(*key, seed=0))
        return sampler

    def _stack(self, stepping: list[_Participant]) -> LSTMState:
        """The participants' states stacked (L, N, H). When the same participants step again
        in the same order, their states are still the views of the previous iteration's
        output, which is that stack already: reused, not copied (concatenating 64 one-row
        states was a third of the loop's time)."""
        if self._stacked is not None:
            stacked, parts = self._stacked
            if len(parts) == len(stepping) and all(
                    p.state is part for p, part in zip(stepping, parts)):
                return stacked
        return LSTMState.concat([p.state for p in stepping])

    def _draw(self, gens: list[_Generation]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The next character of every row of ``gens``: one ``Sampler.sample`` per distinct
        sampling setting over all its rows, each row drawing from its own generator."""
        rows: list[tuple[int, int, Sampler]] = [  # (participant, row, sampler)
            (j, i, s) for j, g in enumerate(gens) for i, s in enumerate(g.samplers)]
        groups: dict[tuple, list[tuple[int, int, Sampler]]] = {}
        for r in rows:
            o = r[2].options
            groups.setdefault((o.temperature, o.top_k, o.top_p), []).append(r)
        ids = [np.empty(g.rows, dtype=np.int64) for g in gens]
        ps = [np.empty(g.rows, dtype=np.float64) for g in gens]
        for key, members in groups.items():
            if len(members) == 1:  # one row: its own sampler draws, no gathering (same draw)
                j, i, own = members[0]
                chosen, p = own.sample(gens[j].probs[i: i + 1])
                ids[j][i], ps[j][i] = chosen[0], p[0]
                continue
            sampler = self._sampler(key)
            sampler.rng = _Draws([s.rng for _, _, s in members])  # type: ignore[assignment]
            probs = np.concatenate([gens[j].probs[i: i + 1] for j, i, _ in members])  # (n, V)
            chosen, p = sampler.sample(probs)
            for (j, i, _), c, q in zip(members, chosen, p):
                ids[j][i], ps[j][i] = c, q
        return list(zip(ids, ps))


class BatchingStepper(Stepper):
    """A :class:`Stepper` that batches concurrent requests per model (see the module doc).

    max_batch_size: most rows in one step. max_wait: seconds the loop may wait for callers
    between two of their requests. direct_feed_chars: feeds longer than this run unbatched in
    the caller's thread. max_ahead: characters a generation may run ahead of its reader.
    linger: seconds an idle loop thread lives on (then it exits, and the model can be freed).
    """

    def __init__(
        self,
        *,
        max_batch_size: int = 256,
        max_wait: float = 0.002,
        direct_feed_chars: int = 16,
        max_ahead: int = 256,
        linger: float = 10.0,
        metrics: Metrics | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (got {max_batch_size})")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds (got {max_wait})")
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait)
        self.direct_feed_chars = int(direct_feed_chars)
        self.max_ahead = int(max_ahead)
        self.linger = float(linger)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._loops: dict[int, _ModelLoop] = {}

    def _submit(self, model: CharLSTM, make) -> _Participant:
        while True:
            with self._lock:
                loop = self._loops.get(id(model))
                if loop is None or loop.model is not model:
                    loop = self._loops[id(model)] = _ModelLoop(self, model)
            participant = make(loop)
            if loop.submit(participant):
                return participant

    def _forget(self, loop: _ModelLoop) -> None:
        with self._lock:
            if self._loops.get(id(loop.model)) is loop:
                del self._loops[id(loop.model)]

    def feed(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] > self.direct_feed_chars or ids.size == 0:
            return super().feed(model, ids, state)  # long (or malformed: the engine says why)
        feed = self._submit(model, lambda loop: _Feed(ids, state))
        feed.done.wait()  # type: ignore[attr-defined]
        if feed.error is not None:
            raise feed.error
        assert feed.probs is not None
        return feed.probs, feed.state

    def step(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        ids = np.asarray(ids)
        if ids.ndim != 1:
            return super().step(model, ids, state)  # the engine's error
        return self.feed(model, ids[None, :], state)

    def generate(
        self, model: CharLSTM, probs: np.ndarray, state: LSTMState, samplers: list[Sampler],
        length: int, *, feed_last: bool = True,
    ) -> Generation:
        if length <= 0:
            return super().generate(model, probs, state, samplers, length, feed_last=feed_last)
        return self._submit(  # type: ignore[return-value]
            model, lambda loop: _Generation(loop, probs, state, samplers, length, feed_last))

    def loops(self) -> int:
        """Batch loops running now (one per model in use)."""
        with self._lock:
            return len(self._loops)
