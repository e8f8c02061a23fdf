"""The recurrent state (h, c) of B independent streams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ConfigError


@dataclass
class LSTMState:
    """Hidden and cell state of every layer for a batch of streams.

    h, c: (L, B, H). Stream b is ``h[:, b]``; streams never interact, so states of different
    callers can be concatenated, stepped together and split again.
    """

    h: np.ndarray  # (L, B, H)
    c: np.ndarray  # (L, B, H)

    def __post_init__(self) -> None:
        if not (isinstance(self.h, np.ndarray) and isinstance(self.c, np.ndarray)):
            raise ConfigError("state", "state.h and state.c must be numpy arrays")
        if self.h.ndim != 3 or self.h.shape != self.c.shape:
            raise ConfigError(
                "state",
                f"state.h and state.c must both have shape (layers, batch, hidden) "
                f"(got {self.h.shape} and {self.c.shape})",
            )

    @property
    def batch_size(self) -> int:
        return int(self.h.shape[1])

    def select(self, index) -> "LSTMState":
        """The streams ``index`` (an int, slice, integer array or boolean mask), as a copy.
        An int keeps the batch axis (batch size 1)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return LSTMState(self.h[:, index].copy(), self.c[:, index].copy())

    @staticmethod
    def concat(states: list["LSTMState"]) -> "LSTMState":
        """Stack the streams of several states along the batch axis."""
        if not states:
            raise ConfigError("states", "concat needs at least one state")
        return LSTMState(
            np.concatenate([s.h for s in states], axis=1),
            np.concatenate([s.c for s in states], axis=1),
        )

    def split(self, sizes: list[int]) -> list["LSTMState"]:
        """The inverse of :meth:`concat`: consecutive groups of ``sizes[i]`` streams, as views
        of this state (no copy; the caller must not write into them if it keeps this one).
        ``sizes`` must add up to the batch size."""
        if any(int(n) < 1 for n in sizes) or sum(int(n) for n in sizes) != self.batch_size:
            raise ConfigError(
                "sizes",
                f"sizes must be positive and add up to the batch size {self.batch_size} "
                f"(got {list(sizes)})",
            )
        out: list[LSTMState] = []
        start = 0
        for n in sizes:
            stop = start + int(n)
            out.append(self._view(start, stop))
            start = stop
        return out

    def _view(self, start: int, stop: int) -> "LSTMState":
        # Slices of a checked state need no new checks (a batch loop splits every step).
        view = object.__new__(LSTMState)
        view.h, view.c = self.h[:, start:stop], self.c[:, start:stop]
        return view

    def copy(self) -> "LSTMState":
        return LSTMState(self.h.copy(), self.c.copy())
