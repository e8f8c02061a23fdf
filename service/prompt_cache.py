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

from charlstm.engine import CharLSTM, Vocab, top_chars

__all__ = ["PromptCache"]


class _Entry:
    """One cached text: its model (weakly), probs (V,), h and c (L, H), and the top
    characters already asked of it by ``k``."""

    __slots__ = ("model", "probs", "h", "c", "tops")

    def __init__(self, model: weakref.ref, probs: np.ndarray, h: np.ndarray, c: np.ndarray):
        self.model, self.probs, self.h, self.c = model, probs, h, c
        self.tops: dict[int, list[tuple[str, float]]] = {}


class PromptCache:
    """Least-recently-used ``(model, text) -> (probs (V,), h (L, H), c (L, H))``, and the
    top characters of ``probs`` once asked for."""

    def __init__(self, entries: int = 1024, max_chars: int = 256):
        if entries < 0:
            raise ValueError(f"entries must be >= 0 (got {entries})")
        self.entries = int(entries)
        self.max_chars = int(max_chars)
        self._lock = threading.Lock()
        # (id(model), text) -> its entry, which holds the model by a weak reference, so that
        # entries do not keep a version the model cache evicted in memory.
        self._items: OrderedDict[tuple[int, str], _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, model: CharLSTM, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The cached ``(probs, h, c)`` after ``text`` (read-only: callers copy), or None."""
        entry = self._lookup(model, text)
        return None if entry is None else (entry.probs, entry.h, entry.c)

    def top_chars(self, model: CharLSTM, vocab: Vocab, text: str,
                  k: int) -> list[tuple[str, float]] | None:
        """``top_chars`` of the cached distribution after ``text`` (computed once per ``k``
        and kept with the entry: a repeated prompt's answer is a lookup), or None when
        ``text`` is not cached. The list is shared: callers do not modify it."""
        # A miss is not counted here: the caller primes the text, and prime's get counts it.
        entry = self._lookup(model, text, count_miss=False)
        if entry is None:
            return None
        top = entry.tops.get(k)
        if top is None:
            # Two threads may both compute it: the same list, so either may win.
            top = entry.tops[k] = top_chars(entry.probs, vocab, k)
        return top

    def _lookup(self, model: CharLSTM, text: str, count_miss: bool = True) -> _Entry | None:
        if not self.entries:
            return None
        key = (id(model), text)
        with self._lock:
            entry = self._items.get(key)
            # id() can be reused once a model is freed: a hit is only trusted when the weak
            # reference still points at the very same object.
            if entry is None or entry.model() is not model:
                self.misses += count_miss
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return entry

    def put(self, model: CharLSTM, text: str, probs: np.ndarray, h: np.ndarray,
            c: np.ndarray) -> None:
        """Remember ``probs`` (V,), ``h`` and ``c`` (L, H) after ``text`` (copied)."""
        if not self.entries or len(text) > self.max_chars:
            return
        entry = _Entry(weakref.ref(model), probs.copy(), h.copy(), c.copy())
        for a in (entry.probs, entry.h, entry.c):
            a.flags.writeable = False  # shared by every later hit
        with self._lock:
            self._items[(id(model), text)] = entry
            self._items.move_to_end((id(model), text))
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
