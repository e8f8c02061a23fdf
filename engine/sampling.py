"""Drawing characters from next-character distributions: greedy, temperature, top-k, top-p.

The reserved unknown id (``Vocab.UNK_ID``) stands for "some character the corpus never had"
and is never drawn: its probability is treated as 0 when sampling (``top_chars`` still
reports it, as ``Vocab.UNK_CHAR``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ConfigError, check_float, check_int
from .model import CharLSTM
from .state import LSTMState
from .vocab import Vocab


@dataclass
class SamplingOptions:
    temperature: float = 1.0  # 0 = greedy; 0..100
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # (0, 1]
    seed: int | None = None  # None: a fresh seed from the OS

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        check_float("temperature", self.temperature, 0.0, 100.0)
        check_int("top_k", self.top_k, 0)
        check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**63 - 1)


class Sampler:
    """Draws ids from batches of distributions with one seeded generator.

    Order of operations on each row: drop UNK, apply the temperature (p^(1/T), renormalised),
    keep the ``top_k`` most likely, keep the smallest most-likely set whose mass reaches
    ``top_p``, renormalise, draw. Temperature 0 takes the most likely id (lowest id on ties).
    """

    def __init__(self, options: SamplingOptions):
        if not isinstance(options, SamplingOptions):
            raise ConfigError("options", f"options must be SamplingOptions (got {type(options).__name__})")
        options.validate()
        self.options = options
        self.rng = np.random.Generator(np.random.PCG64(options.seed))
        self._row: np.ndarray | None = None  # (V,) scratch of the one-row path

    def _sample_row(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`sample` of one row (1, V) in about a third of its time, or None when the
        general path must take it (a zero probability outside UNK, or temperature 0).

        A single stream draws one row per generated character, so this path is the server's
        hot loop: preallocated scratch, one reduction to validate, and no ``errstate`` (UNK is
        the only zero it takes, and its log is written as -inf directly). Every value goes
        through the same operations in the same order as the general path (1-D instead of
        (1, V): the same element-wise loops, the same sequential cumsum), so the ids drawn
        for a seed are exactly the general path's.
        """
        o = self.options
        row = probs[0]  # (V,)
        # NaN fails `> 0`; an infinity makes the maximum below infinite, or is UNK's (whose
        # log is not used): all go to the general path, which says what is wrong.
        if not (row.min() > 0 and row[Vocab.UNK_ID] < np.inf) or o.temperature == 0:
            return None  # zeros outside UNK (or invalid values)
        V = row.shape[0]
        logp = self._row
        if logp is None or logp.shape[0] != V:
            logp = self._row = np.empty(V, dtype=np.float64)
        np.log(row, out=logp)
        logp[Vocab.UNK_ID] = -np.inf  # = log(0): UNK is never drawn
        logp /= o.temperature
        top = logp.max()
        if not -np.inf < top < np.inf:  # an infinite probability, or overflow (a subnormal
            return None  # temperature): the general path's case
        logp -= top
        q = np.exp(logp, out=logp)  # (V,)
        order = np.argsort(-q, kind="stable")  # most likely first
        q_sorted = q[order]
        if 0 < o.top_k < V:
            q_sorted[o.top_k:] = 0.0
        if o.top_p < 1.0:
            total = max(q_sorted.sum(), 1e-300)
            before = (np.cumsum(q_sorted) - q_sorted) / total
            q_sorted[before >= o.top_p] = 0.0
        cdf = np.cumsum(q_sorted, out=q_sorted)  # (V,)
        u = self.rng.random() * cdf[-1]  # the draw rng.random(1) makes
        i = int(order[min(int(cdf.searchsorted(u, side="right")), V - 1)])
        return np.array([i], dtype=np.int64), row[i: i + 1].copy()

    def sample(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """probs (B, V) -> chosen ids (B,) int64 and the model's (untempered) probability of
        each (B,)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] < 2 or probs.shape[0] < 1:
            raise ConfigError("probs", f"probs must have shape (B, V) with B >= 1, V >= 2 (got {probs.shape})")
        if probs.shape[0] == 1:
            drawn = self._sample_row(probs)
            if drawn is not None:
                return drawn
        return self._sample_rows(probs)

    def _sample_rows(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sample`, any number of rows: probs (B, V) float64, shape checked."""
        # Two reductions instead of isfinite/any over the whole array: NaN fails `>= 0`.
        if not (probs.min() >= 0 and probs.max() < np.inf):
            raise ConfigError("probs", "probs must be finite and non-negative")
        B, V = probs.shape
        rows = np.arange(B)
        o = self.options
        p = probs.copy()
        p[:, Vocab.UNK_ID] = 0.0
        if o.temperature == 0:
            ids = np.argmax(p, axis=1)
            return ids.astype(np.int64), probs[rows, ids]
        # Temperature in log space: p^(1/T) without overflow for small T. In place on p.
        with np.errstate(divide="ignore"):
            logp = np.log(p, out=p)  # (B, V); -inf where p == 0
        logp /= o.temperature
        top = logp.max(axis=1, keepdims=True)
        if not np.isfinite(top).all():
            top[~np.isfinite(top)] = 0.0  # a row with no mass outside UNK: handled below
        logp -= top
        q = np.exp(logp, out=logp)  # (B, V)
        order = np.argsort(-q, axis=1, kind="stable")  # most likely first
        # = take_along_axis(q, order, 1), without the index arrays it builds (B, V)
        q_sorted = q[0, order[0]][None] if B == 1 else q[rows[:, None], order]
        if 0 < o.top_k < V:
            q_sorted[:, o.top_k :] = 0.0
        if o.top_p < 1.0:
            # keep an id while the mass of the ids more likely than it is below top_p
            total = np.maximum(q_sorted.sum(axis=1, keepdims=True), 1e-300)
            before = (np.cumsum(q_sorted, axis=1) - q_sorted) / total
            q_sorted[before >= o.top_p] = 0.0  # the first id always stays (nothing before it)
        cdf = np.cumsum(q_sorted, axis=1)  # (B, V), non-decreasing along each row
        total = cdf[:, -1]
        u = self.rng.random(B) * total
        # Inverse CDF: the number of cdf entries <= u. One row (a single stream, the common
        # case) uses a binary search, which gives the same count as the comparison.
        if B == 1:
            pick = np.minimum(cdf[0].searchsorted(u, side="right"), V - 1)  # (1,)
            ids = order[0, pick]
        else:
            pick = np.minimum((cdf <= u[:, None]).sum(axis=1), V - 1)
            ids = order[rows, pick]
        if (total <= 0).any():  # only UNK had mass: fall back to the most likely id
            dead = total <= 0
            ids[dead] = np.argmax(probs[dead], axis=1)
        return ids.astype(np.int64), probs[rows, ids]


def top_chars(probs: np.ndarray, vocab: Vocab, k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely (char, probability) of ``probs`` (V,), most likely first (lower
    id first on ties); UNK is shown as ``Vocab.UNK_CHAR``. k is capped at V."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.shape[0] != vocab.size:
        raise ConfigError("probs", f"probs must have shape ({vocab.size},) (got {probs.shape})")
    k = min(check_int("k", k, 0), vocab.size)
    ids = np.argsort(-probs, kind="stable")[:k]
    return [(vocab.decode([i]), float(probs[i])) for i in ids]


class Generation:
    """Iterator of (char, probability) produced by :func:`generate`.

    After each character is yielded it is fed back into the model, so at any point
    ``state`` is the LSTM state after the prompt and every character yielded so far and
    ``probs`` (V,) the distribution of the next one. The caller's state is not modified.
    """

    def __init__(self, model: CharLSTM, vocab: Vocab, probs: np.ndarray, state: LSTMState, length: int, sampler: Sampler):
        self.model, self.vocab, self.sampler = model, vocab, sampler
        self.probs = probs  # (V,)
        self.state = state
        self.remaining = length

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> tuple[str, float]:
        if self.remaining <= 0:
            raise StopIteration
        ids, p = self.sampler.sample(self.probs[None, :])
        probs, self.state = self.model.step(ids, self.state)
        self.probs = probs[0]
        self.remaining -= 1
        return self.vocab.decode(ids), float(p[0])


def generate(
    model: CharLSTM,
    vocab: Vocab,
    prompt: str,
    length: int,
    options: SamplingOptions,
    state: LSTMState | None = None,
    *,
    probs: np.ndarray | None = None,
) -> Generation:
    """Continue ``prompt`` by ``length`` characters, yielding (char, probability) one at a
    time as each is produced.

    The prompt is fed from ``state`` (default: the zero state of one stream). Characters of
    the prompt outside the vocabulary are read as UNK_ID. With an empty prompt: from the zero
    state the first input is UNK_ID; from a given ``state``, pass the distribution that came
    with it as ``probs`` (V,) (e.g. from the last ``feed``), otherwise UNK_ID is fed.
    """
    if not isinstance(prompt, str):
        raise ConfigError("prompt", f"prompt must be a str (got {type(prompt).__name__})")
    length = check_int("length", length, 0)
    sampler = Sampler(options)
    if vocab.size != model.config.vocab_size:
        raise ConfigError("vocab", f"vocab has {vocab.size} ids but the model expects {model.config.vocab_size}")
    if state is None:
        state = model.zero_state(1)
    elif not isinstance(state, LSTMState):
        raise ConfigError("state", f"state must be an LSTMState (got {type(state).__name__})")
    elif state.batch_size != 1:
        raise ConfigError("state", f"state must hold one stream (got {state.batch_size})")
    if prompt:
        next_probs, state = model.feed(vocab.encode(prompt)[:, None], state)
    elif probs is not None:
        next_probs = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        if next_probs.shape[1] != vocab.size:
            raise ConfigError("probs", f"probs must have shape ({vocab.size},) (got {np.shape(probs)})")
    else:
        next_probs, state = model.step(np.array([Vocab.UNK_ID]), state)
    return Generation(model, vocab, next_probs[0], state, length, sampler)
