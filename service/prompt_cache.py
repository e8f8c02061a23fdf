"""A bounded cache of the model's state after a prompt, for Predict.

Feeding a prompt is most of a Predict call's server time (one LSTM step per character, per
layer), and a model version never changes once stored, so the distribution and state after a
given text of a given version are always the same. Clients often send the same prompts (a
chat's system prefix, a fixed "ROMEO:"), so :func:`~charlstm.service.inference.prime` looks
each input up here first and feeds only the ones it has not seen.

Entries are keyed by the model object itself (one per loaded version; an evicted version's
entries simply age out) and the text; each holds copies, (V,) probabilities and (L, H) h and
c, about 4 KB at H=256 L=2. Only texts up to ``max_chars`` are kept, so the memory bound is
``entries * (state + max_chars)``.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np

from charlstm.engine import CharLSTM

__all__ = ["PromptCache"]


class PromptCache:
    """Least-recently-used ``(model, text) -> (probs (V,), h (L, H), c (L, H))``."""

    def __init__(self, entries: int = 1024, max_chars: int = 256):
        if entries < 0:
            raise ValueError(f"entries must be >= 0 (got {entries})")
        self.entries = int(entries)
        self.max_chars = int(max_chars)
        self._lock = threading.Lock()
        # (id(model), text) -> (a weak reference to the model, probs, h, c): weak, so that
        # entries do not keep a version the model cache evicted in memory.
        self._items: OrderedDict[tuple[int, str], tuple[weakref.ref, np.ndarray, np.ndarray,
                                                         np.ndarray]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, model: CharLSTM, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The cached ``(probs, h, c)`` after ``text`` (read-only: callers copy), or None."""
        if not self.entries:
            return None
        key = (id(model), text)
        with self._lock:
            item = self._items.get(key)
            # id() can be reused once a model is freed: a hit is only trusted when the weak
            # reference still points at the very same object.
            if item is None or item[0]() is not model:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return item[1], item[2], item[3]

    def put(self, model: CharLSTM, text: str, probs: np.ndarray, h: np.ndarray,
            c: np.ndarray) -> None:
        """Remember ``probs`` (V,), ``h`` and ``c`` (L, H) after ``text`` (copied)."""
        if not self.entries or len(text) > self.max_chars:
            return
        item = (weakref.ref(model), probs.copy(), h.copy(), c.copy())
        for a in item[1:]:
            a.flags.writeable = False  # shared by every later hit
        with self._lock:
            self._items[(id(model), text)] = item
            self._items.move_to_end((id(model), text))
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
