"""Inference for Predict and Stream, in plain types: no gRPC, no protobuf.

Every advance of a model goes through a :class:`Stepper`. The default one calls the engine
directly; it is the seam where a cross-request batcher slots in later (issue 7): a batcher
implements the same two methods, parks the caller, concatenates the states of every caller
waiting on the same model (``LSTMState.concat``), runs one ``CharLSTM.step`` for all of them
and hands each its rows back. Nothing else here needs to change for that.

Conventions shared with ``charlstm.engine.generate``: an empty text conditions on nothing,
which means starting from the zero state with ``Vocab.UNK_ID`` as the first input; each input
of a batch has its own :class:`~charlstm.engine.Sampler` seeded with the request's seed, so an
input's continuation does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from charlstm.engine import CharLSTM, LSTMState, Sampler, SamplingOptions, Vocab, top_chars
from charlstm.service.model_cache import LoadedModel

__all__ = ["Stepper", "Prediction", "prime", "predict"]


class Stepper:
    """Advances streams of one model. Subclass (or duck-type) to batch across requests."""

    def feed(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """ids (T, B) -> probabilities after the last character (B, V) and the new state."""
        return model.feed(ids, state)

    def step(self, model: CharLSTM, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """ids (B,) -> next-character probabilities (B, V) and the new state."""
        return model.step(ids, state)


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
    loaded: LoadedModel, texts: list[str], stepper: Stepper
) -> tuple[np.ndarray, LSTMState]:
    """Run every text through the model as one batch.

    Returns the next-character probabilities after each text (B, V) and the states (L, B, H).

    Texts differ in length, and a state must see exactly its own characters, so the texts are
    right-aligned: the longest starts first and each shorter one joins when its remaining length
    matches. Between two joins the set of running rows is fixed, so that stretch is one
    ``feed`` over a (T_segment, B_running) window: as many feeds as distinct lengths, each one
    GEMM per layer for its whole window.
    """
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
) -> list[Prediction]:
    """Top-k next characters and/or a sampled continuation for each input, all batched.

    ``should_stop`` is polled between generated characters (a cancelled call stops there);
    when it fires the predictions hold what was generated so far.
    """
    probs, state = prime(loaded, inputs, stepper)  # (B, V)
    results = [Prediction(input=text) for text in inputs]
    if next_top_k > 0:
        for i, r in enumerate(results):
            r.next = top_chars(probs[i], loaded.vocab, next_top_k)
    if length <= 0:
        return results

    samplers = [Sampler(options) for _ in inputs]
    chars: list[list[str]] = [[] for _ in inputs]
    for t in range(length):
        if should_stop():
            break
        ids = np.empty(len(inputs), dtype=np.int64)  # (B,)
        for i, sampler in enumerate(samplers):
            chosen, p = sampler.sample(probs[i: i + 1])
            ids[i] = chosen[0]
            results[i].probabilities.append(float(p[0]))
        for i, ch in enumerate(loaded.vocab.decode(ids)):
            chars[i].append(ch)
        if t + 1 < length:  # the distribution after the last character is not needed
            probs, state = stepper.step(loaded.model, ids, state)
    for r, cs in zip(results, chars):
        r.continuation = "".join(cs)
    return results
