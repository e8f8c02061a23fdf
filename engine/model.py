"""CharLSTM: the parameters, their initialisation and PyTorch-compatible state_dict, and the
inference API (``step``/``feed``). The maths lives in :mod:`lstm`.

Tensor names and shapes follow PyTorch's nn.Embedding / nn.LSTM / nn.Linear, gates i, f, g, o:

    embedding.weight (V, E)    lstm.weight_ih_l{k} (4H, in)   lstm.weight_hh_l{k} (4H, H)
    lstm.bias_ih_l{k} (4H,)    lstm.bias_hh_l{k} (4H,)        decoder.weight (V, H)   decoder.bias (V,)

Internally the LSTM weights are stored transposed, (in, 4H) and (H, 4H), with the gates in
the order [i f o g] (see :mod:`lstm`); ``state_dict``/``load_state_dict`` convert.

Initialisation (seeded, drawn in float64 then cast, so float32 and float64 models with the
same seed hold the same values up to rounding): embedding N(0, 1) like PyTorch; each gate's
input weights Glorot/Xavier uniform, U(±sqrt(6 / (in + H))); each gate's recurrent (H, H)
block orthogonal; forget-gate bias 1 in ``bias_ih`` and 0 in ``bias_hh``; other biases 0;
decoder weight Glorot uniform U(±sqrt(6 / (H + V))).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import lstm
from .blas import single_threaded
from .config import ConfigError, ModelConfig, check_int
from .shard_processes import ShardProcesses
from .state import LSTMState


def _swap_g_o(a: np.ndarray) -> np.ndarray:
    """Reorder gate blocks along axis 0 between [i f o g] and [i f g o] (its own inverse)."""
    H = a.shape[0] // 4
    return np.concatenate([a[: 2 * H], a[3 * H :], a[2 * H : 3 * H]], axis=0)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random (n, n) orthogonal matrix (QR of a Gaussian, signs fixed so it is uniform)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def torch_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict names and shapes of a model with this config."""
    V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (V, E)}
    for k in range(config.num_layers):
        n_in = E if k == 0 else H
        shapes[f"lstm.weight_ih_l{k}"] = (4 * H, n_in)
        shapes[f"lstm.weight_hh_l{k}"] = (4 * H, H)
        shapes[f"lstm.bias_ih_l{k}"] = (4 * H,)
        shapes[f"lstm.bias_hh_l{k}"] = (4 * H,)
    shapes["decoder.weight"] = (V, H)
    shapes["decoder.bias"] = (V,)
    return shapes


def torch_tensors(w: lstm.Params) -> dict[str, np.ndarray]:
    """``w`` under PyTorch's names, shapes and gate order, as fresh C-contiguous arrays."""
    out: dict[str, np.ndarray] = {"embedding.weight": w.E.copy()}
    for k in range(w.L):
        out[f"lstm.weight_ih_l{k}"] = np.ascontiguousarray(_swap_g_o(w.W_x[k].T))
        out[f"lstm.weight_hh_l{k}"] = np.ascontiguousarray(_swap_g_o(w.W_h[k].T))
        out[f"lstm.bias_ih_l{k}"] = _swap_g_o(w.b_x[k])
        out[f"lstm.bias_hh_l{k}"] = _swap_g_o(w.b_h[k])
    out["decoder.weight"] = np.ascontiguousarray(w.W_y.T)
    out["decoder.bias"] = w.b_y.copy()
    return out


class CharLSTM:
    """Embedding -> L stacked LSTM layers -> linear output layer -> softmax over characters.

    Inference (``step``, ``feed``, ``log_probs``) keeps no state in the model and may be called
    from several threads at once. ``loss_and_grad`` reuses buffers held by the model: one
    training call at a time per model.
    """

    def __init__(self, config: ModelConfig, seed: int = 0):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ConfigError("seed", f"seed must be an integer >= 0 (got {seed!r})")
        self._allocate(config)
        self._init_params(np.random.Generator(np.random.PCG64(int(seed))))

    def _allocate(self, config: ModelConfig) -> None:
        """Check ``config`` and make the (zero) parameters and empty buffer caches."""
        if not isinstance(config, ModelConfig):
            raise ConfigError("config", f"config must be a ModelConfig (got {type(config).__name__})")
        config.validate()
        self.config = config
        self.dtype = np.dtype(config.dtype)
        V, E, H, L = config.vocab_size, config.embedding_size, config.hidden_size, config.num_layers
        self.params = lstm.Params(V, E, H, L, self.dtype)
        self._windows: dict[tuple[int, int, int], lstm.Window] = {}  # training buffers, per shape
        self._grads: list[lstm.Params] = []  # gradient buffers, one per shard

    # -----------------------------------------------------------------------------------------
    # Parameters

    def _init_params(self, rng: np.random.Generator) -> None:
        w = self.params
        V, E, H = self.config.vocab_size, self.config.embedding_size, self.config.hidden_size
        w.E[...] = rng.standard_normal((V, E))
        for k in range(self.config.num_layers):
            n_in = E if k == 0 else H
            limit = np.sqrt(6.0 / (n_in + H))  # Glorot uniform, per gate (in -> H)
            w.W_x[k][...] = rng.uniform(-limit, limit, (n_in, 4 * H))
            w.W_h[k][...] = np.concatenate([_orthogonal(rng, H) for _ in range(4)], axis=1)
            w.b_x[k][...] = 0.0
            w.b_x[k][H : 2 * H] = 1.0  # forget gate: remember by default
            w.b_h[k][...] = 0.0
        limit = np.sqrt(6.0 / (H + V))
        w.W_y[...] = rng.uniform(-limit, limit, (H, V))
        w.b_y[...] = 0.0

    def num_parameters(self) -> int:
        """Number of scalar parameters (bias_ih and bias_hh counted separately, as PyTorch)."""
        return int(self.params.flat.size)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters under PyTorch's names and shapes (gates i, f, g, o), as fresh
        C-contiguous arrays of the model's dtype."""
        return torch_tensors(self.params)

    def load_state_dict(self, tensors: dict[str, np.ndarray]) -> None:
        """Replace the parameters with ``tensors`` (as from :meth:`state_dict` or PyTorch).

        Raises ConfigError (``field`` = the tensor name) for missing or unexpected names,
        wrong shapes, or non-finite values; the model is unchanged on error.
        """
        if not isinstance(tensors, dict):
            raise ConfigError("tensors", f"tensors must be a dict (got {type(tensors).__name__})")
        shapes = torch_shapes(self.config)
        for name in tensors:
            if name not in shapes:
                raise ConfigError(str(name), f"unexpected tensor {name!r} (expected {list(shapes)})")
        arrays = {}
        for name, shape in shapes.items():
            if name not in tensors:
                raise ConfigError(name, f"missing tensor {name!r}")
            try:
                a = np.asarray(tensors[name], dtype=self.dtype)
            except (TypeError, ValueError) as exc:
                raise ConfigError(name, f"{name} must be a numeric array ({exc})") from None
            if a.shape != shape:
                raise ConfigError(name, f"{name} must have shape {shape} (got {a.shape})")
            if not np.all(np.isfinite(a)):
                raise ConfigError(name, f"{name} must contain only finite values")
            arrays[name] = a
        w = self.params
        w.E[...] = arrays["embedding.weight"]
        for k in range(self.config.num_layers):
            w.W_x[k][...] = _swap_g_o(arrays[f"lstm.weight_ih_l{k}"]).T
            w.W_h[k][...] = _swap_g_o(arrays[f"lstm.weight_hh_l{k}"]).T
            w.b_x[k][...] = _swap_g_o(arrays[f"lstm.bias_ih_l{k}"])
            w.b_h[k][...] = _swap_g_o(arrays[f"lstm.bias_hh_l{k}"])
        w.W_y[...] = arrays["decoder.weight"].T
        w.b_y[...] = arrays["decoder.bias"]

    @classmethod
    def from_state_dict(cls, config: ModelConfig, tensors: dict[str, np.ndarray]) -> "CharLSTM":
        """A model with ``config`` holding ``tensors`` (ConfigError on mismatch)."""
        # No random initialisation: every parameter is overwritten, and the orthogonal
        # recurrent init's QR decompositions were most of a model load (88 ms at 2x384).
        model = cls.__new__(cls)
        model._allocate(config)
        model.load_state_dict(tensors)
        return model

    # -----------------------------------------------------------------------------------------
    # Training

    def loss_and_grad(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        state: LSTMState | None = None,
        dropout_masks: list[np.ndarray] | None = None,
        *,
        need_grad: bool = True,
        workers: int = 1,
        processes: ShardProcesses | None = None,
    ) -> tuple[float, lstm.Params | None, LSTMState]:
        """Mean cross-entropy (nats/char) of predicting ``targets`` from ``inputs`` (T, B), and
        its gradient with respect to every parameter (truncated BPTT over this window).

        state: initial state (zeros if None). dropout_masks: None (no dropout), or L inverted
        dropout masks (T, B, H) for the layer outputs (see ``lstm.dropout_mask``).
        workers: split the B streams into this many shards computed in parallel threads, each
        with single-threaded BLAS (NumPy releases the GIL inside its loops and GEMMs). The
        result equals the unsplit one up to floating-point rounding, and is deterministic for
        a given number of workers.
        processes: run shards 1.. in these worker processes instead of threads (their
        ``count`` must be ``workers - 1``): the same results, bit for bit, without the shards
        taking turns at the GIL (see :mod:`shard_processes`).
        Returns (loss, gradient, final state). The gradient is a :class:`lstm.Params` laid out
        like ``self.params`` and reused by the next call.
        """
        inputs = self._check_ids(inputs, 2, "inputs")
        targets = self._check_ids(targets, 2, "targets")
        if inputs.shape != targets.shape or inputs.size == 0:
            raise ConfigError("targets", f"targets must have the shape of inputs {inputs.shape} (got {targets.shape})")
        check_int("workers", workers, 1, 256)
        T, B = inputs.shape
        state = self.zero_state(B) if state is None else self._check_state(state, B)
        # (4H, H), C-contiguous: backward's recurrent GEMMs (a loss-only call needs none)
        W_hT = [np.ascontiguousarray(W.T) for W in self.params.W_h] if need_grad else []
        shards = min(workers, B)
        bounds = [B * i // shards for i in range(shards + 1)]  # contiguous ranges of streams
        while len(self._grads) < (1 if processes is not None else shards):  # one per thread shard
            c = self.config
            self._grads.append(lstm.Params(c.vocab_size, c.embedding_size, c.hidden_size, c.num_layers, self.dtype))

        if processes is not None and processes.count != shards - 1:
            raise ConfigError("processes", f"processes must hold workers - 1 = {shards - 1} "
                              f"worker processes (got {processes.count})")

        def shard(i: int) -> tuple:
            """Shard i's arguments of ``lstm.Window.forward``."""
            b0, b1 = bounds[i], bounds[i + 1]
            masks = None if dropout_masks is None else [m[:, b0:b1] for m in dropout_masks]
            return inputs[:, b0:b1], targets[:, b0:b1], state.h[:, b0:b1], state.c[:, b0:b1], masks

        def run(i: int) -> tuple[float, np.ndarray, np.ndarray]:
            window = self._window(T, bounds[i + 1] - bounds[i], i)
            loss = window.forward(self.params, *shard(i))
            if need_grad:
                window.backward(self.params, self._grads[i], W_hT)
            return (loss, *window.final_state())

        grads = self._grads[:shards]
        if shards == 1:
            results = [run(0)]
        elif processes is not None:
            np.copyto(processes.params.flat, self.params.flat)
            for i in range(1, shards):
                processes.submit(i - 1, *shard(i), need_grad)
            with single_threaded():
                results = [run(0)] + [processes.result(i - 1) for i in range(1, shards)]
            grads = [grads[0]] + processes.grads
        else:
            with single_threaded():
                futures = [shared_pool().submit(run, i) for i in range(1, shards)]
                results = [run(0)] + [f.result() for f in futures]
        share = [(bounds[i + 1] - bounds[i]) / B for i in range(shards)]  # each shard's loss is its own mean
        loss = float(sum(s * r[0] for s, r in zip(share, results)))
        grad = None
        if need_grad:
            grad = grads[0]
            if shards > 1:
                grad.flat *= share[0]
                for i in range(1, shards):
                    grad.flat += share[i] * grads[i].flat
        h = np.concatenate([r[1] for r in results], axis=1)
        c = np.concatenate([r[2] for r in results], axis=1)
        return loss, grad, LSTMState(h, c)

    def _window(self, T: int, B: int, shard: int) -> lstm.Window:
        """The (cached) buffers for windows of shape (T, B) of one shard."""
        key = (T, B, shard)
        window = self._windows.get(key)
        if window is None:
            c = self.config
            # Training uses one shape per shard, or two when the Trainer alternates between a
            # sharded and an unsharded step (see parallelism.py): keep the latest two.
            for old in [k for k in self._windows if k[2] == shard][:-1]:
                del self._windows[old]
            window = self._windows[key] = lstm.Window(c.vocab_size, c.embedding_size, c.hidden_size, c.num_layers, T, B, self.dtype)
        return window

    # -----------------------------------------------------------------------------------------
    # Inference

    def zero_state(self, batch_size: int) -> LSTMState:
        """All-zero (h, c) for ``batch_size`` streams: the state before any character."""
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError("batch_size", f"batch_size must be an integer >= 1 (got {batch_size!r})")
        shape = (self.config.num_layers, int(batch_size), self.config.hidden_size)
        return LSTMState(np.zeros(shape, self.dtype), np.zeros(shape, self.dtype))

    def _check_ids(self, ids, ndim: int, name: str = "ids") -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != ndim:
            want = "(B,)" if ndim == 1 else "(T, B)"
            raise ConfigError(name, f"{name} must be an integer array of shape {want} (got dtype {ids.dtype}, shape {ids.shape})")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ConfigError(name, f"{name} must be in [0, {self.config.vocab_size - 1}] (got {bad})")
        return ids.astype(np.intp, copy=False)

    def _check_state(self, state: LSTMState, batch_size: int) -> LSTMState:
        if not isinstance(state, LSTMState):
            raise ConfigError("state", f"state must be an LSTMState (got {type(state).__name__})")
        want = (self.config.num_layers, batch_size, self.config.hidden_size)
        if state.h.shape != want:
            raise ConfigError("state", f"state must have shape {want} (got {state.h.shape})")
        return state

    def feed(self, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """Run B streams through T characters at once (dropout off).

        ids: (T, B) integer ids with T >= 1 (map text with ``Vocab.encode``; unknown characters
        are ``Vocab.UNK_ID``). Each layer's input projection for the whole prefix is one GEMM.
        Returns the next-character probabilities after the last character, (B, V) float64,
        and the new state (``state`` itself is not modified).
        """
        ids = self._check_ids(ids, 2)
        T, B = ids.shape
        if T < 1 or B < 1:
            raise ConfigError("ids", f"ids must have at least one character and one stream (got shape {ids.shape})")
        state = self._check_state(state, B)
        w = self.params
        y, h, c = lstm.run_layers(w, ids, state.h.astype(self.dtype, copy=False), state.c.astype(self.dtype, copy=False))
        z = lstm.logits(w, y[-1]).astype(np.float64)  # (B, V)
        return _softmax(z), LSTMState(h, c)

    def step(self, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """Advance B independent streams by one character each, in one matrix product.

        ids: (B,) integer ids. Returns next-character probabilities (B, V) float64 and the new
        state (``state`` itself is not modified).
        """
        ids = self._check_step_ids(ids)
        state = self._check_state(state, ids.shape[0])
        w = self.params
        y, h, c = lstm.step_layers(w, ids, state.h.astype(self.dtype, copy=False), state.c.astype(self.dtype, copy=False))
        # lstm.logits through inference_product: the same equation, without holding the GIL.
        z = lstm.inference_product(y, w.W_y, np.empty((y.shape[0], w.W_y.shape[1]), self.dtype))
        z += w.b_y
        return _softmax(z.astype(np.float64)), LSTMState(h, c)

    def _check_step_ids(self, ids) -> np.ndarray:
        """:meth:`_check_ids` for (B,); one id (a single stream, once per generated
        character) is checked as a Python int, without two array reductions."""
        if type(ids) is np.ndarray and ids.shape == (1,) and ids.dtype.kind in "iu":
            if not 0 <= int(ids[0]) < self.config.vocab_size:
                return self._check_ids(ids, 1)  # its error
            return ids.astype(np.intp, copy=False)
        ids = self._check_ids(ids, 1)
        if ids.shape[0] < 1:
            raise ConfigError("ids", f"ids must hold at least one stream (got shape {ids.shape})")
        return ids

    def log_probs(self, ids: np.ndarray, state: LSTMState) -> tuple[np.ndarray, LSTMState]:
        """Log-probabilities of the next character after every position: ids (T, B) ->
        (T, B, V) in the model's dtype, and the new state."""
        ids = self._check_ids(ids, 2)
        state = self._check_state(state, ids.shape[1])
        y, h, c = lstm.run_layers(self.params, ids, state.h.astype(self.dtype, copy=False), state.c.astype(self.dtype, copy=False))
        return lstm.log_softmax(lstm.logits(self.params, y)), LSTMState(h, c)


_POOL: ThreadPoolExecutor | None = None


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(streams: int, cores: int | None = None) -> int:
    """Worker threads for ``streams`` parallel streams: one per core (default: this process's),
    at most one per 16 streams (smaller shards make the matrix products inefficient)."""
    cores = available_cores() if cores is None else max(1, cores)
    return max(1, min(cores, streams // 16))


def shared_pool() -> ThreadPoolExecutor:
    """Threads shared by all models for sharded training steps and evaluation."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, available_cores()), thread_name_prefix="charlstm")
    return _POOL


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z
