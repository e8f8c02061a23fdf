"""How a training step uses the cores: shards, or one worker with threaded BLAS.

Two ways to spread a step over C cores (see ``CharLSTM.loss_and_grad``):

- **sharded**: up to C shards, each a contiguous share of the streams with single-threaded
  BLAS, computed by the caller's thread and worker processes (the ``Trainer``'s default,
  ``shard_processes.py``) or worker threads. Each shard runs alone until the step ends, so a
  busy neighbour on one core only slows its shard. But each shard makes the same number of
  small NumPy calls per timestep as the whole batch would (and threads take turns at the GIL
  for them).
- **threaded**: one worker with all the streams and BLAS on all C cores. Half the NumPy calls per
  character on 2 cores, but BLAS synchronises its threads at every timestep's product, so a busy
  neighbour on one core stalls every timestep: measured on 2 cores at H=128 (32 streams),
  1.2-1.5x faster than sharded on a quiet machine and 5-10x slower at a load average of 2-3.

:func:`default_parallelism` says which layouts are worth trying for a model, and
:class:`LayoutChooser` times the candidates during training and keeps the faster, probing the
other now and then, so that a run follows the machine's load.
"""

from __future__ import annotations

import statistics
from collections import deque

from .model import available_cores, default_workers

# A shard's recurrent product per timestep, streams x 4H x H multiply-adds, below which the
# threaded layout is worth trying (measured on 2 cores: H=128 with 2 x 16 streams, 1.05M, is
# faster threaded on a quiet machine; H=256 with 2 x 16 streams, 4.2M, is faster sharded).
MIN_SHARD_MACS = 2**21

Layout = tuple[int, int]  # (worker threads, BLAS threads per worker)

# Another layout replaces the running one when its estimated step time is below this fraction
# of the running one's.
_SWITCH_MARGIN = 0.9


def default_parallelism(streams: int, hidden: int, cores: int | None = None, *,
                        shard_processes: bool = False) -> list[Layout]:
    """The layouts worth timing for ``streams`` streams of a model with ``hidden`` units on
    ``cores`` cores (default: this process's), the sharded one first: only the sharded one,
    unless its shards' per-timestep products would be too small (``MIN_SHARD_MACS``) while the
    whole batch's is not; then the threaded one too. With ``shard_processes`` (the shards after
    the first in worker processes) only the sharded one: at H=128 with 2 x 16 streams its steps
    took 12.4-14.0 ms against the threaded layout's 14.2-15.3 in six runs (both
    OPENBLAS_CORETYPE settings), and timing the two side by side misleads, as the threaded
    layout's BLAS threads keep spinning on a core for 50-200 ms after its step."""
    cores = available_cores() if cores is None else max(1, cores)
    workers = default_workers(streams, cores)
    macs = 4 * hidden * hidden
    sharded = (workers, 1)
    if (workers > 1 and not shard_processes
            and (streams // workers) * macs < MIN_SHARD_MACS <= streams * macs):
        return [sharded, (1, cores)]
    return [sharded]


class LayoutChooser:
    """Picks the layout of each training step among ``layouts`` from the steps' timings.

    Each candidate is first timed over ``warmup + samples`` steps, round robin (the first
    ``warmup`` steps of a layout allocate its buffers and are not counted). Then the steps use
    the layout with the lowest median of its last ``samples`` timings (or its latest, if that
    was slower), and keep it until another one's is 10% lower than its own.
    Now and then one step runs the other layout, so that a change of load is noticed:
    ``probe_every`` steps after the choice last changed, then at doubling intervals up to
    ``max_probe_every`` while it does not.
    The layouts give the same results up to floating-point rounding, so which one ran is
    visible only there.
    """

    def __init__(self, layouts: list[Layout], *, samples: int = 3, warmup: int = 1, probe_every: int = 50,
                 max_probe_every: int = 800):
        if not layouts:
            raise ValueError("at least one layout")
        self.layouts = list(layouts)
        self._warmup = {layout: warmup for layout in self.layouts}
        self._seconds = {layout: deque(maxlen=samples) for layout in self.layouts}
        self._samples = samples
        self._probe_every, self._max_probe_every = probe_every, max_probe_every
        self._interval = probe_every  # steps from one probe to the next
        self._next_probe: int | None = None  # the step of the next probe, once timed
        self._best: Layout | None = None
        self._steps = 0
        self.current = self.layouts[0]
        # Steps before the choice is first made from timings (0 with a single layout).
        self.settling_steps = 0 if len(self.layouts) == 1 else len(self.layouts) * (warmup + samples)

    def next(self) -> Layout:
        """The layout for the next step (then report its time with :meth:`record`)."""
        if len(self.layouts) > 1:
            untimed = [l for l in self.layouts if len(self._seconds[l]) < self._samples]
            if untimed:
                self.current = min(untimed, key=lambda l: (self._warmup[l] == 0, len(self._seconds[l])))
            else:
                best = self._fastest()
                if self._next_probe is None or best != self._best:
                    # The first choice, the one after a probe, or a change of the fastest. A
                    # probe that left the choice as it was makes the next one later (a probe of
                    # a layout that is much slower under load costs that much), unless it was
                    # fast: then this step confirms it. A change starts over.
                    interval = self._probe_every
                    if self._next_probe is None and best == self._best:
                        fast = self._seconds[self.current][-1] < _SWITCH_MARGIN * self._seconds[best][-1]
                        interval = 0 if fast else min(2 * self._interval, self._max_probe_every)
                    if interval > 0:
                        self._interval = interval
                    self._best, self._next_probe = best, self._steps + interval
                if self._steps >= self._next_probe:  # time another layout once
                    self.current = self.layouts[(self.layouts.index(best) + 1) % len(self.layouts)]
                    self._next_probe = None
                else:
                    self.current = best
        return self.current

    def _fastest(self) -> Layout:
        """The layout to run: another one only if it is clearly faster than the one running
        now. Each is judged by the median of its recent steps, or its latest step if that was
        slower (so that a layout which slows down, e.g. threaded BLAS when a neighbour takes a
        core, is left after one slow step and not taken again before a probe finds it fast)."""
        current = self._best if self._best is not None else self.current
        estimate = {l: max(statistics.median(t), t[-1]) for l, t in self._seconds.items()}
        other = min((l for l in self.layouts if l != current), key=estimate.__getitem__)
        return other if estimate[other] < _SWITCH_MARGIN * estimate[current] else current

    def record(self, seconds: float) -> None:
        """The wall-clock time of the step that ran :attr:`current`."""
        self._steps += 1
        if len(self.layouts) == 1:
            return
        if self._warmup[self.current] > 0:
            self._warmup[self.current] -= 1
        else:
            self._seconds[self.current].append(seconds)
