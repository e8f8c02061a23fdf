"""What every benchmark module returns, and the interleaved way figures are taken.

A result is one dict per measured figure with the keys ``name, ours, reference, unit, ratio,
target, passed, details`` (``benchmarks/run.py`` prints and stores them; ``serving.py`` builds
the same shape). ``target`` is a bound on ``ratio`` written ">= x" or "<= x", or "report" for a
figure with no target (then ``passed`` is None).

The machine is shared, so ours and the reference run alternately (ours, reference, ours, ...)
and the figure is the median of the per-pair ratios: a burst of load from a neighbour then
hits one pair rather than one side.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def make_result(name: str, ours: float, reference: float | None, unit: str, target: str,
                details: dict[str, Any], ratio: float | None = None) -> dict[str, Any]:
    """The result dict. ``ratio`` defaults to ours / reference; pass the median of per-pair
    ratios instead when the figures were interleaved."""
    if ratio is None and reference:
        ratio = ours / reference
    passed = None
    if target != "report" and ratio is not None:
        op, bound = target.split()[:2]
        passed = ratio >= float(bound) if op == ">=" else ratio <= float(bound)
    return {"name": name, "ours": ours, "reference": reference, "unit": unit, "ratio": ratio,
            "target": target, "passed": passed, "details": details}


def interleaved(ours: Callable[[], float], reference: Callable[[], float] | None, pairs: int,
                pause: float = 0.005) -> tuple[list[float], list[float]]:
    """Call ``ours`` and ``reference`` alternately ``pairs`` times; each returns one measured
    figure. ``pause`` seconds between calls let the other side's spinning threads go idle."""
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(pairs):
        mine.append(ours())
        time.sleep(pause)
        if reference is not None:
            theirs.append(reference())
            time.sleep(pause)
    return mine, theirs


def median_ratio(ours: list[float], reference: list[float], invert: bool = False) -> float | None:
    """Median over pairs of ours/reference (reference/ours with ``invert``, for times when the
    ratio should read as a speed-up)."""
    if not reference:
        return None
    pairs = zip(ours, reference)
    return statistics.median((r / o) if invert else (o / r) for o, r in pairs)


def median(values: list[float]) -> float:
    return float(statistics.median(values))
