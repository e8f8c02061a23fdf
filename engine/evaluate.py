"""Scoring a text: mean cross-entropy of each character given everything before it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import lstm
from .blas import single_threaded
from .config import ConfigError, check_int
from .distributed import Communicator, LocalCommunicator
from .model import CharLSTM, default_workers, shared_pool
from .shard_processes import ShardProcesses
from .vocab import Vocab

CHUNK = 256  # timesteps per forward call: bounds memory, keeps the GEMMs large
BURN_IN = 128  # unscored context fed to every stream but the first (see mean_loss)
CHARS_PER_STREAM = 2048
MAX_STREAMS = 64


@dataclass
class EvalResult:
    loss: float  # mean nats/char predicting text[1:] from text[:-1]
    bits_per_char: float
    characters: int  # characters scored = len(text) - 1
    unknown_characters: int


def default_streams(n: int) -> int:
    """How many parallel streams to score ``n`` targets with: one per 2048, at most 64."""
    return max(1, min(MAX_STREAMS, n // CHARS_PER_STREAM))


def mean_loss(model: CharLSTM, ids: np.ndarray, streams: int | None = None, workers: int | None = None,
              comm: Communicator | None = None, processes: ShardProcesses | None = None) -> float:
    """Mean nats/char of predicting ids[1:] from ids[:-1] (ids (N,), N >= 2).

    For speed the N-1 targets are cut into ``streams`` contiguous pieces scored side by side
    (one matrix product per timestep for all of them). Stream 0 starts from the zero state at
    the start of the text, exactly as a sequential pass; every other stream first reads the
    BURN_IN characters before its piece (unscored) so that it starts with context, which
    makes the result match a single sequential pass closely rather than exactly.
    The streams are shared among ``workers`` threads (default: one per core, at most one per
    16 streams), with single-threaded BLAS (see :mod:`blas`). ``processes``: a Trainer's shard
    workers for this model's shapes (the parameters are copied into them here). Where the
    streams are shared among exactly ``processes.count + 1`` workers, the shares after the
    first are scored in those processes instead of threads: the same result bit for bit,
    without the threads taking turns at the GIL for every NumPy call.
    With a communicator of several ranks (collective: every rank calls it with the same
    arguments), each rank scores its share of the streams and the sums are added up.
    """
    n = len(ids) - 1  # targets
    B = default_streams(n) if streams is None else check_int("streams", streams, 1, 4096)
    B = min(B, n)
    S = -(-n // B)  # targets per stream (the last may have fewer)
    burn = min(BURN_IN, S) if B > 1 else 0
    # Stream b reads input positions b*S - burn + τ, τ in [0, burn + S), and from τ = burn
    # on predicts the next character.
    pos = np.arange(B)[None, :] * S - burn + np.arange(burn + S)[:, None]  # (burn + S, B)
    scored = (pos >= 0) & (pos < n)
    scored[:burn] = False
    safe = np.clip(pos, 0, n - 1)
    inputs = ids[safe]  # (burn + S, B)
    targets = ids[safe + 1]
    fresh = np.zeros(B, dtype=bool)
    fresh[0] = True  # stream 0 starts at the beginning of the text: nothing before it
    comm = LocalCommunicator() if comm is None else comm
    mine = np.s_[B * comm.rank // comm.size : B * (comm.rank + 1) // comm.size]
    inputs, targets, scored, fresh = inputs[:, mine], targets[:, mine], scored[:, mine], fresh[mine]
    B = inputs.shape[1]  # this rank's streams (0 when there are more ranks than streams)
    total = np.zeros(1)
    if B:
        total[0] = _score_streams(model, inputs, targets, scored, fresh, burn, workers, processes)
    comm.allreduce_sum([total])
    return float(total[0]) / n


def _score_streams(model: CharLSTM, inputs: np.ndarray, targets: np.ndarray, scored: np.ndarray,
                   fresh: np.ndarray, burn: int, workers: int | None,
                   processes: ShardProcesses | None) -> float:
    """Σ -log p over streams (T, B) shared among ``workers`` threads, or processes (see
    :func:`mean_loss`)."""
    B = inputs.shape[1]
    if workers is None:
        workers = default_workers(B)
    workers = min(check_int("workers", workers, 1, 256), B)
    bounds = [B * i // workers for i in range(workers + 1)]
    parts = [np.s_[bounds[i] : bounds[i + 1]] for i in range(workers)]
    w = model.params

    def share(i: int) -> tuple:
        p = parts[i]
        return inputs[:, p], targets[:, p], scored[:, p], fresh[p], burn

    with single_threaded():
        if workers == 1:
            return score(w, *share(0))
        if processes is not None and processes.count == workers - 1:
            np.copyto(processes.params.flat, w.flat)
            for i in range(1, workers):
                processes.submit_score(i - 1, *share(i))
            totals = [score(w, *share(0))]
            totals += [processes.result(i - 1) for i in range(1, workers)]
        else:
            jobs = [shared_pool().submit(score, w, *share(i)) for i in range(1, workers)]
            totals = [score(w, *share(0))] + [job.result() for job in jobs]
    return sum(totals)


def score(w: lstm.Params, inputs: np.ndarray, targets: np.ndarray, scored: np.ndarray,
          fresh: np.ndarray, burn: int) -> float:
    """Σ -log p(target) over the ``scored`` positions of streams inputs/targets (T, B) under
    parameters ``w``: the first ``burn`` steps only build state, after which ``fresh`` streams
    restart from 0. (A shard worker process runs this too: it has the parameters, not the
    model.)"""
    L, B, H = w.L, inputs.shape[1], w.H
    h = np.zeros((L, B, H), w.flat.dtype)
    c = np.zeros((L, B, H), w.flat.dtype)
    if burn:
        _, h, c = lstm.run_layers(w, inputs[:burn], h, c)
        h[:, fresh] = 0.0
        c[:, fresh] = 0.0
    total = 0.0
    for t0 in range(burn, inputs.shape[0], CHUNK):
        t1 = min(t0 + CHUNK, inputs.shape[0])
        y, h, c = lstm.run_layers(w, inputs[t0:t1], h, c)
        logp = lstm.log_softmax(lstm.logits(w, y))  # (t, B, V)
        picked = np.take_along_axis(logp, targets[t0:t1, :, None], axis=2)[..., 0]  # (t, B)
        total -= float(np.sum(picked, where=scored[t0:t1], dtype=np.float64))
    return total


def evaluate_text(model: CharLSTM, vocab: Vocab, text: str, *, streams: int | None = None) -> EvalResult:
    """Loss of ``model`` on ``text`` (at least 2 characters), in nats and bits per character.

    Characters outside the vocabulary are read and scored as ``Vocab.UNK_ID`` and counted in
    ``unknown_characters``. ``streams``: see :func:`mean_loss` (default: one per 2048
    characters, at most 64).
    """
    if not isinstance(text, str):
        raise ConfigError("text", f"text must be a str (got {type(text).__name__})")
    if len(text) < 2:
        raise ConfigError("text", f"text must have at least 2 characters (got {len(text)})")
    if vocab.size != model.config.vocab_size:
        raise ConfigError("vocab", f"vocab has {vocab.size} ids but the model expects {model.config.vocab_size}")
    ids = vocab.encode(text)
    loss = mean_loss(model, ids, streams)
    return EvalResult(
        loss=loss,
        bits_per_char=loss / math.log(2.0),
        characters=len(ids) - 1,
        unknown_characters=int(np.count_nonzero(ids == Vocab.UNK_ID)),
    )
