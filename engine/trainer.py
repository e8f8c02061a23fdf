"""Training: truncated BPTT over B contiguous streams, driven and observed by the caller.

The training slice (the first 1 - val_fraction of the text) is cut into B equal contiguous
streams; step j feeds every stream its j-th window of T characters and predicts the
characters one ahead. The state (h, c) is carried from one window to the next (without a
gradient across the boundary) and reset to zeros when an epoch ends and the streams start
over. Dropout masks are the only randomness, drawn from a PCG64 generator seeded by
``TrainConfig.seed``; so a run is reproducible and, captured and restored, continues exactly.

Data-parallel training (see :mod:`distributed`): with a communicator of N ranks, rank r takes
streams [B*r/N, B*(r+1)/N) of the same B, every rank draws the whole batch's dropout masks
(and keeps its columns) so the random stream is the single-process one, and each step's
gradient and loss are summed over the ranks, weighted by their share of the streams, in one
Allreduce before clipping. All ranks then apply the same update and hold the same parameters:
N ranks train the model one process would, up to rounding. Every rank must call the same
methods in the same order (``train_step``, ``evaluate``, ``run``, ``capture`` are collective).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import lstm
from .blas import blas_threads, single_threaded
from .config import ConfigError, ModelConfig, TrainConfig, check_int
from .distributed import Communicator, LocalCommunicator
from .evaluate import mean_loss
from .model import CharLSTM, available_cores, torch_tensors
from .optim import SGD, AdamW, clip_by_global_norm_, learning_rate
from .parallelism import LayoutChooser, default_parallelism
from .shard_processes import ShardProcessError, ShardProcesses
from .state import LSTMState
from .vocab import Vocab

STATE_FORMAT = 1
_UNBOUNDED_STEPS = 2**62  # total_steps of a run limited by max_seconds alone


@dataclass
class TrainProgress:
    step: int  # steps done (1-based after the first step)
    total_steps: int
    epoch: float  # passes over the training slice so far
    train_loss: float  # nats/char of this step
    val_loss: float | None  # set on steps where validation ran (every eval_every and the last)
    chars_per_second: float  # training throughput over recent steps (validation excluded)
    learning_rate: float
    grad_norm: float  # before clipping
    elapsed_seconds: float  # wall clock over all runs of this training (survives restore)
    eta_seconds: float
    is_best: bool  # val_loss improved on this step
    allreduce_seconds: float = 0.0  # of this step: the gradient Allreduce (0 on one process)


@dataclass
class TrainerState:
    """Everything needed to continue training exactly where it stopped.

    tensors (safetensors-able): ``model.<name>`` the latest parameters and ``best.<name>``
    the best-by-validation ones (PyTorch names), ``optim.m``/``optim.v`` the optimiser
    moments (flat, in the engine's internal parameter order), ``carry.h``/``carry.c`` the
    state carried into the next window. meta (JSON-able): step, data position, RNG state,
    best validation loss, validation curve, the configs.
    """

    tensors: dict[str, np.ndarray]
    meta: dict


class Trainer:
    """Trains ``model`` on ``text``; see the module docstring for the data layout."""

    def __init__(self, model: CharLSTM, vocab: Vocab, text: str, config: TrainConfig, *,
                 workers: int | None = None, comm: Communicator | None = None):
        """Training and validation run with single-threaded BLAS (see :mod:`blas`); ``workers``
        threads share each step's streams instead (see ``CharLSTM.loss_and_grad``). Default
        (see :mod:`parallelism`): one shard per core, at most one per 16 streams, the shards
        after the first in worker processes (:mod:`shard_processes`; :meth:`close` or the end
        of :meth:`run` stops them). Where worker processes cannot start, the shards run in
        threads, and for a model whose shards would be too small the steps are timed against
        one worker with multithreaded BLAS on all the cores, and the faster of the two is used
        (``workers`` and ``blas_threads`` say which the latest step used). Results depend on
        the layout only through floating-point rounding (processes and threads give the same
        bits); pass ``workers`` (threads, single-threaded BLAS) to fix it, as exact
        continuation across capture/restore needs.

        ``comm``: the ranks training this model together (default: this process alone, see
        :mod:`distributed`). Each rank passes the same model, text and config; the default
        ``workers`` then counts the cores left per rank on this host.
        """
        if not isinstance(model, CharLSTM):
            raise ConfigError("model", f"model must be a CharLSTM (got {type(model).__name__})")
        if not isinstance(vocab, Vocab):
            raise ConfigError("vocab", f"vocab must be a Vocab (got {type(vocab).__name__})")
        if not isinstance(config, TrainConfig):
            raise ConfigError("config", f"config must be a TrainConfig (got {type(config).__name__})")
        if not isinstance(text, str):
            raise ConfigError("text", f"text must be a str (got {type(text).__name__})")
        config.validate()
        if vocab.size != model.config.vocab_size:
            raise ConfigError("vocab", f"vocab has {vocab.size} ids but the model expects vocab_size={model.config.vocab_size}")
        self.model, self.vocab, self.config = model, vocab, config
        self.comm = LocalCommunicator() if comm is None else comm
        T, B = config.seq_len, config.batch_size
        rank, size = self.comm.rank, self.comm.size
        if B < size:
            raise ConfigError("batch_size", f"batch_size must be at least the number of ranks ({size}) so that each gets a stream (got {B})")
        self._streams = slice(B * rank // size, B * (rank + 1) // size)  # this rank's streams
        local_B = self._streams.stop - self._streams.start
        # The gradient is a mean over streams: weight this rank's by its share, so that the
        # mean over ranks is the whole batch's mean (1.0 when B divides evenly).
        self._grad_scale = size * local_B / B
        self._loss_buf = np.zeros(1, model.dtype)  # reduced with the gradient, same Allreduce
        if workers is None:
            cores = max(1, available_cores() // max(1, self.comm.local_size))
            self._layout_for = (local_B, model.config.hidden_size, cores)
            layouts = default_parallelism(*self._layout_for, shard_processes=True)
        else:
            layouts = [(check_int("workers", workers, 1, 256), 1)]
        self.layouts = LayoutChooser(layouts)  # which layout each step uses (parallelism.py)
        # The default layout runs its shards after the first in worker processes
        # (shard_processes.py), started at the first step; an explicit ``workers`` keeps them
        # in threads, and one shard needs none.
        self._use_processes = workers is None and layouts[0][0] > 1
        self._processes: ShardProcesses | None = None
        # The latest step's layout: worker threads, and BLAS threads per worker.
        self.workers, self.blas_threads = layouts[0]

        n_train = int(len(text) * (1.0 - config.val_fraction))
        S = n_train // B  # characters per stream
        if S < T + 1:
            need = B * (T + 1)
            raise ConfigError(
                "text",
                f"text must give at least batch_size * (seq_len + 1) = {need} training characters "
                f"(got {n_train} of {len(text)} after holding out val_fraction={config.val_fraction:g}); "
                "use a longer text or smaller batch_size/seq_len",
            )
        ids = vocab.encode(text[:n_train])
        # (S, B): column b is stream b, a contiguous slice; a window is a contiguous row block.
        # Only this rank's columns are kept.
        self._data = np.ascontiguousarray(ids[: S * B].reshape(B, S).T[:, self._streams]).astype(np.intp)
        self._val_ids = vocab.encode(text[n_train:])
        self.train_characters = n_train
        self.val_characters = len(text) - n_train
        self.windows_per_epoch = (S - 1) // T
        if config.steps is not None:
            self.total_steps = int(config.steps)
        elif config.epochs is not None:
            self.total_steps = max(1, math.ceil(config.epochs * self.windows_per_epoch))
        elif config.max_seconds is not None:
            self.total_steps = _UNBOUNDED_STEPS  # the clock ends it (then total_steps = step)
        else:
            self.total_steps = TrainConfig.DEFAULT_STEPS

        w = model.params
        self._decay_mask = np.zeros_like(w.flat)  # weight decay on matrices and the embedding
        for name, t in w.tensors.items():
            if t.ndim == 2:
                self._decay_mask[w.offsets[name] : w.offsets[name] + t.size] = 1.0
        if config.optimizer == "adamw":
            self._optim = AdamW(w.flat.size, w.flat.dtype, weight_decay=config.weight_decay, decay_mask=self._decay_mask)
        else:
            self._optim = SGD(w.flat.size, w.flat.dtype, momentum=config.momentum, weight_decay=config.weight_decay, decay_mask=self._decay_mask)
        self._rng = np.random.Generator(np.random.PCG64(config.seed))
        self.step = 0
        self._window = 0  # next window index within the epoch
        self._carry = model.zero_state(local_B)
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.last_val_loss: float | None = None
        self.val_curve: list[list[float]] = []  # [[step, val_loss], ...]
        self._best_flat: np.ndarray | None = None
        self._elapsed_before = 0.0  # wall clock of earlier runs (restored)
        self.last_allreduce_seconds = 0.0  # the latest step's gradient Allreduce
        self._run_start: float | None = None  # perf_counter() when the current run() began
        # With max_seconds under run(): rank 0's elapsed time at the start of the current step.
        # Every rank uses it, so their learning rates and their last step agree.
        self._step_clock: float | None = None

    # -----------------------------------------------------------------------------------------

    @property
    def epoch(self) -> float:
        """Passes over the training slice so far."""
        return self.step / self.windows_per_epoch

    def elapsed_seconds(self) -> float:
        """Wall clock spent training so far, over all runs (survives capture/restore)."""
        if self._run_start is None:
            return self._elapsed_before
        return self._elapsed_before + (time.perf_counter() - self._run_start)

    def current_learning_rate(self) -> float:
        """The learning rate the next step will use."""
        c = self.config
        step = min(self.step, self.total_steps - 1)
        progress = None
        if c.max_seconds is not None:
            # The cosine follows the clock, so the budget ends at the lowest rate; with a
            # step limit too, whichever of the two is further along sets the position.
            elapsed = self.elapsed_seconds() if self._step_clock is None else self._step_clock
            progress = elapsed / c.max_seconds
            if self.total_steps != _UNBOUNDED_STEPS:
                progress = max(progress, (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps - 1))
        return learning_rate(step, self.total_steps, c.learning_rate, c.schedule, c.warmup_steps, c.min_lr_ratio,
                             progress=progress)

    def train_step(self) -> tuple[float, float, float]:
        """One optimiser step on the next window. Returns (loss, grad norm, learning rate).

        A step whose gradient is not finite is skipped (parameters unchanged), and reported
        through its grad norm.
        """
        c, model = self.config, self.model
        T = c.seq_len
        j = self._window
        inputs = self._data[j * T : (j + 1) * T]  # (T, B)
        targets = self._data[j * T + 1 : (j + 1) * T + 1]  # (T, B)
        masks = None
        p = model.config.dropout
        if p > 0:
            shape = (T, c.batch_size, model.config.hidden_size)
            # The whole batch's masks on every rank (same random stream as one process).
            masks = [lstm.dropout_mask(self._rng, shape, p, model.dtype)[:, self._streams] for _ in range(model.config.num_layers)]
        if self._use_processes and self._processes is None:
            self._start_processes()  # before choosing: without them the layouts change
        self.workers, self.blas_threads = self.layouts.next()
        processes = self._processes if self.workers > 1 else None
        t0 = time.perf_counter()
        try:
            with single_threaded() if self.blas_threads == 1 else blas_threads(self.blas_threads):
                loss, grad, carry = model.loss_and_grad(inputs, targets, self._carry, masks,
                                                        workers=self.workers, processes=processes)
        except ShardProcessError:
            self.close()  # a dead worker: the next step starts new ones
            raise
        self.layouts.record(time.perf_counter() - t0)
        loss = self._reduce(loss, grad.flat)
        lr = self.current_learning_rate()
        norm = clip_by_global_norm_(grad.flat, c.clip)
        if math.isfinite(norm):
            self._optim.update(model.params.flat, grad.flat, lr)
        self.step += 1
        self._window += 1
        if self._window == self.windows_per_epoch:  # epoch boundary: the streams start over
            self._window = 0
            carry = model.zero_state(self._carry.h.shape[1])
        self._carry = carry
        return loss, norm, lr

    def _start_processes(self) -> None:
        """Start the worker processes for the shards of the default layout (one fewer than
        its shards). Where they cannot start, the shards run in threads and the layouts are
        the threads' ones (``default_parallelism``)."""
        workers = self.layouts.layouts[0][0]
        c = self.model.config
        try:
            self._processes = ShardProcesses(
                workers - 1, (c.vocab_size, c.embedding_size, c.hidden_size, c.num_layers),
                self.model.dtype)
        except (OSError, ShardProcessError) as exc:  # e.g. no way to start a process here
            warnings.warn(f"training shards run in threads: worker processes did not start "
                          f"({exc})", RuntimeWarning, stacklevel=3)
            self._use_processes = False
            self.layouts = LayoutChooser(default_parallelism(*self._layout_for))

    def close(self) -> None:
        """End the shard worker processes, if any (:meth:`run` does at its end; a later step
        starts them again)."""
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    def _reduce(self, loss: float, grad: np.ndarray) -> float:
        """Turn this rank's loss and gradient (flat, in place; each a mean over its streams)
        into the whole batch's: weighted by the rank's share of the streams and averaged over
        the ranks in one Allreduce. Returns the loss; times the Allreduce
        (``last_allreduce_seconds``)."""
        t0 = time.perf_counter()
        if self._grad_scale != 1.0:
            grad *= self._grad_scale
        self._loss_buf[0] = loss * self._grad_scale
        self.comm.allreduce_mean([grad, self._loss_buf])
        self.last_allreduce_seconds = time.perf_counter() - t0 if self.comm.size > 1 else 0.0
        return float(self._loss_buf[0]) if self.comm.size > 1 else loss

    def evaluate(self) -> float | None:
        """Mean nats/char on the whole validation slice (None if it has < 2 characters)."""
        if len(self._val_ids) < 2:
            return None
        # In the shard workers when the training layout has them (same numbers as threads).
        return mean_loss(self.model, self._val_ids, comm=self.comm, processes=self._processes)

    def _validate(self) -> tuple[float | None, bool]:
        val = self.evaluate()
        if val is None:
            return None, False
        self.last_val_loss = val
        self.val_curve.append([self.step, val])
        improved = self.best_val_loss is None or val < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = val, self.step
            if self._best_flat is None:
                self._best_flat = self.model.params.flat.copy()
            else:
                np.copyto(self._best_flat, self.model.params.flat)
        return val, improved

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[TrainProgress]:
        """Train until ``total_steps``, yielding a TrainProgress after every step.

        ``should_stop()`` is called before each step; when it returns true the iterator ends
        (the state is consistent: capture() may be called). With several ranks, rank 0's answer
        is the one every rank follows. Validation runs after every ``eval_every``-th step and
        after the last one. With ``max_seconds``, the step that uses up the budget is the last
        one: ``total_steps`` becomes ``step`` (before that, TrainProgress.total_steps is an
        estimate), and its validation runs past the budget.
        """
        c = self.config
        chars_per_step = c.seq_len * c.batch_size
        start = self._run_start = time.perf_counter()
        compute = deque(maxlen=20)  # seconds of recent training steps
        wall = deque(maxlen=20)  # seconds of recent steps including validation
        budget = c.max_seconds
        first_step = self.step  # later, time the caller spends between steps ends the next one
        try:
            while self.step < self.total_steps:
                if self.comm.bcast(should_stop is not None and bool(should_stop())):
                    break
                if budget is not None:
                    self._step_clock = self.comm.bcast(self.elapsed_seconds())
                    if self.step == first_step and self._step_clock >= budget:
                        self.total_steps = self.step  # resumed past the budget: nothing left to do
                        break
                t0 = time.perf_counter()
                loss, norm, lr = self.train_step()
                t1 = time.perf_counter()
                if budget is not None and self.comm.bcast(self.elapsed_seconds() >= budget):
                    self.total_steps = self.step
                val, improved = None, False
                if self.step % c.eval_every == 0 or self.step == self.total_steps:
                    val, improved = self._validate()
                t2 = time.perf_counter()
                compute.append(t1 - t0)
                wall.append(t2 - t0)
                seconds_per_step = sum(wall) / len(wall)
                total = self.total_steps
                if budget is not None and self.step < total:
                    left = budget - self.elapsed_seconds()
                    total = min(total, self.step + max(1, math.ceil(left / max(seconds_per_step, 1e-9))))
                yield TrainProgress(
                    step=self.step,
                    total_steps=total,
                    epoch=self.epoch,
                    train_loss=loss,
                    val_loss=val,
                    chars_per_second=chars_per_step * len(compute) / max(sum(compute), 1e-9),
                    learning_rate=lr,
                    grad_norm=norm,
                    elapsed_seconds=self._elapsed_before + (t2 - start),
                    eta_seconds=(total - self.step) * seconds_per_step,
                    is_best=improved,
                    allreduce_seconds=self.last_allreduce_seconds,
                )
        finally:  # also when the caller abandons the iterator
            self.close()
            self._elapsed_before += time.perf_counter() - start
            self._run_start = self._step_clock = None

    def best_state_dict(self) -> dict[str, np.ndarray]:
        """Parameters (PyTorch names) at the best validation loss so far, or the latest ones
        if validation has not run (or there is no validation slice)."""
        if self._best_flat is None:
            return self.model.state_dict()
        return _state_dict_of(self.model, self._best_flat)

    # -----------------------------------------------------------------------------------------
    # Capture and restore

    def capture(self) -> TrainerState:
        """A snapshot from which :meth:`restore` (on this or a fresh Trainer with the same
        model config, train config and text) continues exactly as if never interrupted.
        Collective: every rank gets the whole batch's state, which restores on any number of
        ranks."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self._best_flat is not None:
            tensors.update({f"best.{k}": v for k, v in _state_dict_of(self.model, self._best_flat).items()})
        optim_tensors, optim_meta = self._optim.state()
        tensors.update({f"optim.{k}": v for k, v in optim_tensors.items()})
        # (L, B, H): the ranks' streams side by side, in rank order.
        carries = self.comm.allgather((self._carry.h, self._carry.c))
        tensors["carry.h"] = np.concatenate([h for h, _ in carries], axis=1)
        tensors["carry.c"] = np.concatenate([c for _, c in carries], axis=1)
        meta = {
            "format": STATE_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "window": self._window,
            "windows_per_epoch": self.windows_per_epoch,
            "train_characters": self.train_characters,
            "val_characters": self.val_characters,
            "rng": self._rng.bit_generator.state,
            "optimizer": {"name": self.config.optimizer, **optim_meta},
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "last_val_loss": self.last_val_loss,
            "val_curve": [list(p) for p in self.val_curve],
            "elapsed_seconds": self._elapsed_before,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
        }
        return TrainerState(tensors=tensors, meta=meta)

    def restore(self, state: TrainerState) -> None:
        """Continue from ``state`` (from :meth:`capture`). Raises ConfigError if it does not
        fit this trainer (a different architecture, window shape, optimiser or text length,
        or missing/misshapen tensors); the trainer is unchanged on error."""
        if not isinstance(state, TrainerState):
            raise ConfigError("state", f"state must be a TrainerState (got {type(state).__name__})")
        meta, tensors = state.meta, state.tensors
        try:
            if meta.get("format") != STATE_FORMAT:
                raise ConfigError("state", f"unknown training-state format {meta.get('format')!r} (expected {STATE_FORMAT})")
            if ModelConfig.from_dict(meta["model_config"]) != self.model.config:
                raise ConfigError("model_config", "the saved training state is for a different model architecture")
            saved = TrainConfig.from_dict(meta["train_config"])
            for field in ("seq_len", "batch_size", "optimizer", "val_fraction"):
                if getattr(saved, field) != getattr(self.config, field):
                    raise ConfigError(field, f"{field} must match the saved training state ({getattr(saved, field)!r}, got {getattr(self.config, field)!r})")
            if meta["train_characters"] != self.train_characters or meta["windows_per_epoch"] != self.windows_per_epoch:
                raise ConfigError("text", "the text is not the one the training state was captured on (its length differs)")
            # Check everything first (scratch models validate names and shapes) ...
            latest = CharLSTM(self.model.config)
            latest.load_state_dict(_with_prefix(tensors, "model."))
            best = _with_prefix(tensors, "best.")
            best_flat = None
            if best:
                scratch = CharLSTM(self.model.config)
                scratch.load_state_dict(best)
                best_flat = scratch.params.flat
            optim_tensors = _with_prefix(tensors, "optim.")
            size = self.model.params.flat.size
            expected = set(self._optim.state()[0])
            if set(optim_tensors) != expected or "t" not in meta["optimizer"]:
                raise ConfigError("state", f"the training state must hold the optimiser moments {sorted(expected)} and step")
            for k, v in optim_tensors.items():
                if np.shape(v) != (size,):
                    raise ConfigError("state", f"optim.{k} must have shape ({size},) (got {np.shape(v)})")
            carry = LSTMState(np.array(tensors["carry.h"], dtype=self.model.dtype), np.array(tensors["carry.c"], dtype=self.model.dtype))
            self.model._check_state(carry, self.config.batch_size)
            carry = LSTMState(carry.h[:, self._streams].copy(), carry.c[:, self._streams].copy())
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = meta["rng"]
            step, window = int(meta["step"]), int(meta["window"])
            if not (0 <= window < self.windows_per_epoch):
                raise ConfigError("state", f"window must be in [0, {self.windows_per_epoch - 1}] (got {window})")
            # ... then apply.
            self._optim.load_state(optim_tensors, meta["optimizer"])
            np.copyto(self.model.params.flat, latest.params.flat)
            self._best_flat = best_flat
            self._carry = carry
            self._rng = rng
            self.step, self._window = step, window
            self.best_val_loss = meta["best_val_loss"]
            self.best_step = meta["best_step"]
            self.last_val_loss = meta["last_val_loss"]
            self.val_curve = [list(p) for p in meta["val_curve"]]
            self._elapsed_before = float(meta.get("elapsed_seconds", 0.0))
        except KeyError as exc:
            raise ConfigError("state", f"the training state lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError("state", f"the training state is malformed ({exc})") from None


def _with_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _state_dict_of(model: CharLSTM, flat: np.ndarray) -> dict[str, np.ndarray]:
    """state_dict of ``model``'s architecture for the flat parameter vector ``flat``."""
    c = model.config
    return torch_tensors(lstm.Params(c.vocab_size, c.embedding_size, c.hidden_size, c.num_layers, flat.dtype, flat))
