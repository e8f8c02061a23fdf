"""Inference for Predict and Stream, in plain types: no gRPC, no protobuf.

Every advance of a model goes through a :class:`Stepper`: ``feed`` and ``step`` for text a
caller supplies, ``generate`` for sampled continuations (sample, feed the sample back, repeat).
This :class:`Stepper` calls the engine directly, one request at a time; the continuous batcher
(:class:`charlstm.service.batching.BatchingStepper`) implements the same three methods and
advances every request waiting on the same model with one ``CharLSTM.step`` per character.

Conventions shared with ``charlstm.engine.generate``: an empty text conditions on nothing,
which means starting from the zero state with ``Vocab.UNK_ID`` as the first input; each input
of a batch has its own :class:`~charlstm.engine.Sampler` seeded with the request's seed, so an
input's continuation does not depend on what else is in the batch (or in the server's batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from charlstm.engine import CharLSTM, LSTMState, Sampler, SamplingOptions, Vocab, top_chars
from charlstm.engine.blas import single_threaded
from charlstm.service.model_cache import LoadedModel
from charlstm.service.prompt_cache import PromptCache

__all__ = ["Stepper", "Generation", "Prediction", "prime", "predict"]


class Generation:
    """A sampled continuation of B rows in progress: iterate for ``(ids (B,), p (B,))``, the
    ids drawn at each position and the model's probability of each.

    Once iteration has ended normally, ``probs`` (B, V) and ``state`` (L, B, H) are those after
    the last drawn character (when it was fed back: ``feed_last``). After :meth:`stop`, they
    are undefined: callers stop only when the request is over.
    """

    probs: np.ndarray
    state: LSTMState
    #: The reader takes positions in groups of this many (its message size); a generation
    #: computed on another thread need not wake it before a group is complete.
    chunk: int = 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def stop(self) -> None:
        """Give up on the rest of the generation (the caller was cancelled)."""

    def ready(self) -> int:
        """Positions already drawn that iteration would yield without waiting."""
        return 0


class _DirectGeneration(Generation):
    """The unbatched generation: the caller's thread samples and steps."""

    def __init__(self, model: CharLSTM, probs: np.ndarray, state: LSTMState,
                 samplers: list[Sampler], length: int, feed_last: bool):
        self._model, self._samplers = model, samplers
        self._length, self._feed_last = length, feed_last
        self.probs, self.state = probs, state
        self._stopped = False

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        B = len(self._samplers)
        for t in range(self._length):
            if self._stopped:
                return
            ids = np.empty(B, dtype=np.int64)  # (B,)
            p = np.empty(B, dtype=np.float64)  # (B,)
            for i, sampler in enumerate(self._samplers):
                chosen, prob = sampler.sample(self.probs[i: i + 1])
                ids[i], p[i] = chosen[0], prob[0]
            if t + 1 < self._length or self._feed_last:
                with single_threaded():
                    self.probs, self.state = self._model.step(ids, self.state)
            yield ids, p

    def stop(self) -> None:
        self._stopped = True


class Stepper:
    """Advances streams of one model, one request at a time (no batching across requests).

    Matrix products run with single-threaded BLAS: serving products are small (a few hundred
    rows at most) and the server's own threads already use the cores; OpenBLAS's threads
    busy-wait and, on a shared 2-core machine, made one H=256 step 1.7-6x slower (measured:
    batch 1 452 vs 262 us, batch 8 5.9 vs 0.95 ms).
    """

    def feed(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """ids (T, B) -> probabilities after the last character (B, V) and the new state."""
        with single_threaded():
            return model.feed(ids, state)

    def step(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """ids (B,) -> next-character probabilities (B, V) and the new state."""
        with single_threaded():
            return model.step(ids, state)

    def generate(
        self, model: CharLSTM, probs: np.ndarray, state: LSTMState, samplers: list[Sampler],
        length: int, *, feed_last: bool = True,
    ) -> Generation:
        """Draw ``length`` characters for each of B rows from ``probs`` (B, V) and ``state``
        (L, B, H), row i with ``samplers[i]``, feeding each draw back in. ``feed_last=False``
        skips feeding the last draw (its distribution is not needed)."""
        return _DirectGeneration(model, probs, state, samplers, length, feed_last)


@dataclass
class Prediction:
    """The answer for one input of a Predict request."""

    input: str
    next: list[tuple[str, float]] = field(default_factory=list)
    continuation: str = ""
    probabilities: list[float] = field(default_factory=list)


def encode_input(vocab: Vocab, text: str) -> np.ndarray:
    """The ids a text feeds: its characters, or ``[UNK_ID]`` for the empty text (N,)."""
    if not text:
        return np.array([Vocab.UNK_ID], dtype=np.int64)
    return vocab.encode(text)


def prime(
    loaded: LoadedModel, texts: list[str], stepper: Stepper, cache: PromptCache | None = None
) -> tuple[np.ndarray, LSTMState]:
    """Run every text through the model as one batch.

    Returns the next-character probabilities after each text (B, V) and the states (L, B, H).
    With a ``cache``, texts found there are not fed again, and the ones fed are remembered.

    Texts differ in length, and a state must see exactly its own characters, so the texts are
    right-aligned: the longest starts first and each shorter one joins when its remaining length
    matches. Between two joins the set of running rows is fixed, so that stretch is one
    ``feed`` over a (T_segment, B_running) window: as many feeds as distinct lengths, each one
    GEMM per layer for its whole window.
    """
    model = loaded.model
    if cache is None:
        return _prime(loaded, texts, stepper)
    found = [cache.get(model, t) for t in texts]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        p, s = _prime(loaded, [texts[i] for i in missing], stepper)
        for k, i in enumerate(missing):
            found[i] = (p[k], s.h[:, k], s.c[:, k])
            cache.put(model, texts[i], p[k], s.h[:, k], s.c[:, k])
    probs = np.stack([f[0] for f in found])  # (B, V) fresh arrays: the cache's stay untouched
    state = LSTMState(np.stack([f[1] for f in found], axis=1),  # (L, B, H)
                      np.stack([f[2] for f in found], axis=1))
    return probs, state


def _prime(loaded: LoadedModel, texts: list[str], stepper: Stepper) -> tuple[np.ndarray, LSTMState]:
    """:func:`prime` without a cache."""
    model = loaded.model
    seqs = [encode_input(loaded.vocab, t) for t in texts]
    lengths = np.array([len(s) for s in seqs])  # (B,)
    B, T = len(seqs), int(lengths.max())
    start = T - lengths  # (B,) when each row joins, right-aligned
    state = model.zero_state(B)
    probs = None
    joins = np.unique(start)  # sorted
    for k, t0 in enumerate(joins):
        t1 = int(joins[k + 1]) if k + 1 < len(joins) else T
        rows = np.flatnonzero(start <= t0)  # every row running during [t0, t1)
        window = np.stack([seqs[i][t0 - start[i]: t1 - start[i]] for i in rows], axis=1)  # (t1-t0, b)
        sub = LSTMState(state.h[:, rows], state.c[:, rows])  # (L, b, H) copies
        p, sub = stepper.feed(model, window, sub)
        state.h[:, rows] = sub.h
        state.c[:, rows] = sub.c
        probs = p  # the last window holds every row, in order
    assert probs is not None and probs.shape[0] == B
    return probs, state


def predict(
    loaded: LoadedModel,
    inputs: list[str],
    *,
    next_top_k: int,
    length: int,
    options: SamplingOptions,
    stepper: Stepper,
    should_stop: Callable[[], bool] = lambda: False,
    cache: PromptCache | None = None,
) -> list[Prediction]:
    """Top-k next characters and/or a sampled continuation for each input, all batched.

    ``should_stop`` is polled between generated characters (a cancelled call stops there);
    when it fires the predictions hold what was generated so far. ``cache``: see
    :func:`prime`.
    """
    if length <= 0:
        return _next_chars(loaded, inputs, next_top_k, stepper, cache)
    probs, state = prime(loaded, inputs, stepper, cache)  # (B, V)
    results = [Prediction(input=text) for text in inputs]
    if next_top_k > 0:
        for i, r in enumerate(results):
            r.next = top_chars(probs[i], loaded.vocab, next_top_k)

    samplers = [Sampler(options) for _ in inputs]
    drawn: list[np.ndarray] = []  # one (B,) array of ids per position
    drawn_p: list[np.ndarray] = []  # (B,) probabilities
    # The distribution after the last character is not needed: feed_last=False.
    generation = stepper.generate(loaded.model, probs, state, samplers, length, feed_last=False)
    for ids, p in generation:
        drawn.append(ids)
        drawn_p.append(p)
        if should_stop():
            generation.stop()
            break
    if drawn:
        ids_tb = np.stack(drawn)  # (t, B)
        p_tb = np.stack(drawn_p)  # (t, B)
        for i, r in enumerate(results):
            r.continuation = loaded.vocab.decode(ids_tb[:, i])
            r.probabilities = p_tb[:, i].tolist()
    return results


def _next_chars(loaded: LoadedModel, inputs: list[str], k: int, stepper: Stepper,
                cache: PromptCache | None) -> list[Prediction]:
    """:func:`predict` without a continuation: the top ``k`` next characters of each input.

    No state is needed, only the distributions; a cached input's top characters are kept
    with its cache entry, so a repeated prompt costs a lookup.
    """
    results = [Prediction(input=text) for text in inputs]
    if k <= 0:
        return results
    model, vocab = loaded.model, loaded.vocab
    tops = [None if cache is None else cache.top_chars(model, vocab, text, k) for text in inputs]
    missing = [i for i, top in enumerate(tops) if top is None]
    if missing:
        probs, _ = prime(loaded, [inputs[i] for i in missing], stepper, cache)  # (b, V)
        for row, i in enumerate(missing):
            tops[i] = top_chars(probs[row], vocab, k)
    for r, top in zip(results, tops):
        r.next = top  # type: ignore[assignment]
    return results
