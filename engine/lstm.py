"""The maths: a stacked LSTM over a window of T steps for B streams, forward and backward.

Row-vector form, one layer, with x_t (B, in), h_t and c_t (B, H). Internally the four gates
are stored in the order [i f o g] so the three sigmoid gates are one contiguous slice;
``model.py`` converts to and from PyTorch's [i f g o] order.

    z_t = x_t W_x + h_{t-1} W_h + b_x + b_h        (B, 4H)   x_t W_x for all t: one GEMM
    i, f, o = σ(z_t[:, :3H])      g = tanh(z_t[:, 3H:])
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

Backward through the window (dh, dc arrive from t+1; dh_t^in from above):

    dh_t  = dh_t^in + dz_{t+1} W_hᵀ
    dc_t  = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o ⊙ (1 - tanh²c_t)
    dz_t  = [dc_t ⊙ g, dc_t ⊙ c_{t-1}, dh_t ⊙ tanh c_t, dc_t ⊙ i] ⊙ [σ', σ', σ', tanh']
    dW_x  = Σ_t x_tᵀ dz_t      dW_h = Σ_t h_{t-1}ᵀ dz_t      db = Σ_t dz_t      (one GEMM each)
    dx_t  = dz_t W_xᵀ                                                          (one GEMM)

The network: x_t = E[id_t] (embedding) -> L layers -> dropout -> logits = y_t W_y + b_y ->
log-softmax cross-entropy against the next character. Inverted dropout (mask values 0 or
1/(1-p)) is applied to the output of every layer, i.e. between layers and before the output
layer. Only the loops over t are in Python; everything else is whole-window array operations.
In layer 0, x_t W_x + b = (E W_x + b)[id_t] is gathered, and with S[v] = Σ_{t: id_t = v} dz_t
its gradients are dW_x = Eᵀ S, db = Σ_v S[v], dE = S W_xᵀ (no (T·B, E)-sized GEMMs).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from .blas import single_threaded


# ---------------------------------------------------------------------------------------------
# Parameters: named views into one flat vector, so that the optimiser, clipping and
# capture/restore each work on a single array.


def param_shapes(V: int, E: int, H: int, L: int) -> list[tuple[str, tuple[int, ...]]]:
    """Internal names and shapes, in the order they sit in the flat vector."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("E", (V, E))]
    for k in range(L):
        n_in = E if k == 0 else H
        shapes += [
            (f"W_x{k}", (n_in, 4 * H)),
            (f"W_h{k}", (H, 4 * H)),
            (f"b_x{k}", (4 * H,)),
            (f"b_h{k}", (4 * H,)),
        ]
    shapes += [("W_y", (H, V)), ("b_y", (V,))]
    return shapes


class Params:
    """The network's tensors as C-contiguous views into one flat vector ``flat``.

    Attributes follow the equations: ``E`` (V, E); per layer k ``W_x[k]`` (in, 4H),
    ``W_h[k]`` (H, 4H), ``b_x[k]``, ``b_h[k]`` (4H,); ``W_y`` (H, V); ``b_y`` (V,).
    The same class holds gradients.
    """

    def __init__(self, V: int, E: int, H: int, L: int, dtype, flat: np.ndarray | None = None):
        shapes = param_shapes(V, E, H, L)
        size = sum(int(np.prod(s)) for _, s in shapes)
        if flat is None:
            flat = np.zeros(size, dtype=dtype)
        assert flat.shape == (size,) and flat.flags.c_contiguous
        self.flat = flat
        self.tensors: dict[str, np.ndarray] = {}
        self.offsets: dict[str, int] = {}  # where each tensor starts in ``flat``
        offset = 0
        for name, shape in shapes:
            n = int(np.prod(shape))
            self.tensors[name] = flat[offset : offset + n].reshape(shape)
            self.offsets[name] = offset
            offset += n
        self.V, self.H, self.L = V, H, L
        self.E = self.tensors["E"]
        self.W_x = [self.tensors[f"W_x{k}"] for k in range(L)]
        self.W_h = [self.tensors[f"W_h{k}"] for k in range(L)]
        self.b_x = [self.tensors[f"b_x{k}"] for k in range(L)]
        self.b_h = [self.tensors[f"b_h{k}"] for k in range(L)]
        self.W_y = self.tensors["W_y"]
        self.b_y = self.tensors["b_y"]


# ---------------------------------------------------------------------------------------------
# One layer.


class GateConstants(NamedTuple):
    """Per-column constants (4H,) of the gate activations for one H and dtype (see
    :func:`gate_activations_`), never written."""

    half: np.ndarray  # ½ on [i f o], 1 on g: the tanh form's scale
    shift: np.ndarray  # ½ on [i f o], 0 on g
    neg: np.ndarray  # -1 on [i f o], -2 on g: the exp form's scale
    mul: np.ndarray  # 1 on [i f o], 2 on g
    add: np.ndarray  # 0 on [i f o], -1 on g

    def scale(self, rows: int) -> np.ndarray:
        """The column scale that :func:`gate_activations_` applies first to ``rows`` rows:
        what a caller folds into its weights to pass ``prescaled=True``."""
        return self.neg if uses_exp_form(rows * self.neg.shape[0]) else self.half


_GATE_CONSTANTS: dict[tuple[int, object], GateConstants] = {}

# From this many elements of z (B x 4H) on, the gates go through exp rather than tanh. Where
# NumPy's float32 exp and tanh are not vectorised (the AVX2 machine these were measured on:
# about 2.5 and 4 ns an element, against 0.2 for a multiply), the exp form's two extra passes
# pay for themselves: 1.3-1.6x faster at B=16 and 64 (H=128-512), level at 3 x 1024, and 15%
# slower at 1 x 1024, where each NumPy call's fixed cost dominates. A fixed size, not a timing,
# so that every process (shard workers, replicas) takes the same form for the same shapes.
EXP_FORM_MIN_SIZE = 4096


def uses_exp_form(elements: int) -> bool:
    """Whether gates of ``elements`` pre-activations (B x 4H) take the exp form."""
    return elements >= EXP_FORM_MIN_SIZE


def gate_constants(H: int, dtype) -> GateConstants:
    """The :class:`GateConstants` of (H, dtype), made once."""
    found = _GATE_CONSTANTS.get((H, dtype))  # once per step: no np.dtype() on the way
    if found is None:
        dt = np.dtype(dtype)
        ifo, g = slice(None, 3 * H), slice(3 * H, None)
        half, shift = np.ones(4 * H, dt), np.zeros(4 * H, dt)
        half[ifo] = shift[ifo] = 0.5
        neg, mul, add = -np.ones(4 * H, dt), np.ones(4 * H, dt), np.zeros(4 * H, dt)
        neg[g], mul[g], add[g] = -2.0, 2.0, -1.0
        found = _GATE_CONSTANTS[(H, dtype)] = GateConstants(half, shift, neg, mul, add)
    return found


def gate_activations_(z: np.ndarray, gates: GateConstants, prescaled: bool = False) -> None:
    """In place: pre-activations z = [i f o | g] (B, 4H) -> σ on i, f, o and tanh on g, with
    one transcendental call for all four gates, in one of two forms (see EXP_FORM_MIN_SIZE):

    - tanh form: σ(x) = ½ + ½·tanh(x/2);
    - exp form: σ(x) = 1 / (1 + e^-x) and tanh(x) = 2σ(2x) - 1. e^-x is inf for x below
      about -88 in float32, and σ = 1 / (1 + inf) = 0 is then the right value: that overflow
      is not an error here.

    Every operation is on the whole contiguous row block (a strided 3H-column slice is several
    times slower to operate on than the full 4H), with the per-gate constants as broadcast rows.
    prescaled: z arrives already multiplied by ``gates.scale(B)`` (the training path folds it
    into its weight copies: exact, as ½, -1 and -2 are powers of two), saving one pass.
    """
    if uses_exp_form(z.size):
        if not prescaled:
            z *= gates.neg  # [-z_ifo, -2 z_g]
        with np.errstate(over="ignore"):
            np.exp(z, out=z)
        z += 1.0
        np.divide(1.0, z, out=z)  # [σ(z_ifo), σ(2 z_g)]
        z *= gates.mul
        z += gates.add
    else:
        if not prescaled:
            z *= gates.half  # [z_ifo/2, z_g]
        np.tanh(z, out=z)
        z *= gates.half
        z += gates.shift  # [σ(z_ifo), tanh(z_g)]


def layer_forward(
    A: np.ndarray,
    W_h: np.ndarray,
    Hs: np.ndarray,
    C: np.ndarray,
    TC: np.ndarray,
    training: bool = False,
) -> None:
    """Run one layer over a window, in place.

    A  (T, B, 4H): on entry x_t W_x + b for every t; on exit the gates [i f o g].
    W_h (H, 4H).
    Hs (T+1, B, H): Hs[0] = h_0 on entry; Hs[1:] receives h_1..h_T.
    C  (T+1, B, H): C[0] = c_0 on entry; C[1:] receives c_1..c_T.
    TC (T, B, H): receives tanh(c_t).
    training: the training path. A and W_h arrive already multiplied, column by column, by
        ``gate_constants(H, dtype).scale(B)`` (see :func:`gate_activations_`), which saves
        one pass over z per timestep, and the recurrent product is always one ``np.dot``
        (inference's :func:`inference_product` may go row by row for a few rows, a choice
        timed in each process, and the shard workers must compute exactly what threads do).
    """
    T, B, H4 = A.shape
    H = H4 // 4
    gates = gate_constants(H, A.dtype)
    zh = np.empty((B, H4), dtype=A.dtype)  # h_{t-1} W_h
    ig = np.empty((B, H), dtype=A.dtype)  # i ⊙ g
    for t in range(T):
        z = A[t]  # (B, 4H)
        if training:
            np.dot(Hs[t], W_h, out=zh)
        else:
            inference_product(Hs[t], W_h, zh)
        z += zh
        gate_activations_(z, gates, prescaled=training)
        i, f, o, g = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        np.multiply(f, C[t], out=C[t + 1])
        np.multiply(i, g, out=ig)
        C[t + 1] += ig  # c_t = f ⊙ c_{t-1} + i ⊙ g
        np.tanh(C[t + 1], out=TC[t])
        np.multiply(o, TC[t], out=Hs[t + 1])  # h_t = o ⊙ tanh(c_t)


def _local_factors_(A: np.ndarray, C: np.ndarray, TC: np.ndarray, dZ: np.ndarray, H: int) -> None:
    """For a block of timesteps (leading axis), in place: the parts of dL/dz_t that do not
    depend on the recursion, with the gates' derivatives folded in,

        dZ <- [σ'(i) ⊙ g, σ'(f) ⊙ c_{t-1}, σ'(o) ⊙ tanh c_t, tanh'(g) ⊙ i]
        TC <- o ⊙ (1 - tanh² c_t)

    so that the timestep loop only multiplies them by dc_t or dh_t. A, dZ (t, B, 4H); C holds
    c_{t-1} (t, B, H); TC (t, B, H) tanh c_t on entry.
    """
    i, o, g = A[..., :H], A[..., 2 * H : 3 * H], A[..., 3 * H :]
    np.subtract(1.0, A, out=dZ)
    dZ *= A  # s(1 - s): σ' on i, f, o (the g block is overwritten below)
    dZ[..., :H] *= g
    dZ[..., H : 2 * H] *= C
    dZ[..., 2 * H : 3 * H] *= TC
    dg = dZ[..., 3 * H :]
    np.multiply(g, g, out=dg)
    np.subtract(1.0, dg, out=dg)
    dg *= i  # tanh'(g) ⊙ i
    TC *= TC
    np.subtract(1.0, TC, out=TC)
    TC *= o


# Timesteps per block of _local_factors_: about 256 KiB of dZ, so that a block is still in the
# core's L2 cache when the loop reads it. One call per block instead of ~10 per timestep
# measured 1.10-1.15x faster steps at H=128 and neutral at H=256 and 512 (CPU time).
_BLOCK_BYTES = 256 * 1024


def layer_backward(
    A: np.ndarray,
    W_hT: np.ndarray,
    C: np.ndarray,
    TC: np.ndarray,
    dHs: np.ndarray,
    dh: np.ndarray,
    dc: np.ndarray,
    dZ: np.ndarray,
) -> None:
    """Back-propagate one layer through the window, in place.

    A (T, B, 4H) gates, C (T+1, B, H), TC (T, B, H): as left by :func:`layer_forward`; TC is
    used as scratch (overwritten).
    W_hT (4H, H): W_h transposed, C-contiguous (a plain GEMM is faster than a transposed one).
    dHs (T, B, H): dL/dh_t from above (the layer above or the decoder); overwritten.
    dh, dc (B, H): dL/dh_T, dL/dc_T from beyond the window on entry (zeros for truncated
        BPTT); dL/dh_0, dL/dc_0 on exit.
    dZ (T, B, 4H): receives dL/dz_t.
    """
    T, B, H4 = A.shape
    H = H4 // 4
    block = max(1, _BLOCK_BYTES // (B * H4 * A.itemsize))
    f = A[..., H : 2 * H]
    tmp = np.empty((B, H), dtype=A.dtype)
    for t in range(T - 1, -1, -1):
        if (T - 1 - t) % block == 0:  # the factors of timesteps t0..t, ahead of the loop
            t0 = max(0, t + 1 - block)
            _local_factors_(A[t0 : t + 1], C[t0 : t + 1], TC[t0 : t + 1], dZ[t0 : t + 1], H)
        dh_t = dHs[t]
        dh_t += dh  # dh_t = dh_t^in + dz_{t+1} W_hᵀ
        np.multiply(dh_t, TC[t], out=tmp)
        dc += tmp  # dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o ⊙ (1 - tanh²c_t)
        d = dZ[t]  # (B, 4H)
        d4 = d.reshape(B, 4, H)
        d4[:, :2] *= dc[:, None, :]  # dL/dz for i and f
        d4[:, 3] *= dc  # g
        d4[:, 2] *= dh_t  # o
        dc *= f[t]  # dL/dc_{t-1}
        np.matmul(d, W_hT, out=dh)  # dL/dh_{t-1} through the recurrence


# ---------------------------------------------------------------------------------------------
# The whole network over one window, with buffers kept between calls.


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype) -> np.ndarray:
    """Inverted-dropout mask (shape): 0 with probability p, else 1/(1-p), so that the expected
    activation is unchanged and inference needs no rescaling."""
    keep = rng.random(shape, dtype=np.float32) >= np.float32(p)
    return np.multiply(keep, 1.0 / (1.0 - p), dtype=dtype)


class Window:
    """Forward and backward of the network over windows of shape (T, B).

    Buffers are allocated once and reused, since every training window has the same shape.
    ``forward`` records what ``backward`` needs; ``backward`` fills a gradient :class:`Params`.
    """

    def __init__(self, V: int, E: int, H: int, L: int, T: int, B: int, dtype):
        self.shape = (T, B)
        self.V, self.E, self.H, self.L = V, E, H, L
        dt = np.dtype(dtype)
        N = T * B
        self.A = [np.empty((T, B, 4 * H), dt) for _ in range(L)]  # gates per layer
        self.Hs = [np.empty((T + 1, B, H), dt) for _ in range(L)]  # h_0..h_T per layer
        self.C = [np.empty((T + 1, B, H), dt) for _ in range(L)]  # c_0..c_T per layer
        self.TC = [np.empty((T, B, H), dt) for _ in range(L)]  # tanh(c_t) per layer
        self.EW = np.empty((V, 4 * H), dt)  # E W_x0 + b: layer 0's input projection per id
        self.S = np.empty((V, 4 * H), dt)  # Σ of dz_t (layer 0) over the positions of each id
        self.P = np.empty((N, V), dt)  # probabilities, then dL/dlogits
        self.dZ = np.empty((T, B, 4 * H), dt)  # shared by the layers in turn
        self.dY = np.empty((T, B, H), dt)  # dL/d(layer output)
        self.Y = [np.empty((T, B, H), dt) for _ in range(L)]  # layer outputs after dropout
        self.rows = np.arange(N)
        self.ones = np.ones(N, dt)  # Σ over positions as a GEMV
        self.masks: list[np.ndarray] | None = None
        self.ids = self.targets = None

    def forward(
        self,
        w: Params,
        ids: np.ndarray,
        targets: np.ndarray,
        h0: np.ndarray,
        c0: np.ndarray,
        masks: list[np.ndarray] | None,
    ) -> float:
        """Mean cross-entropy (nats/char) of predicting ``targets`` (T, B) from ``ids`` (T, B).

        h0, c0 (L, B, H): initial state. masks: None, or L inverted-dropout masks (T, B, H)
        for the layer outputs. The final state is :meth:`final_state`.
        """
        T, B = self.shape
        L, H, V = self.L, self.H, self.V
        N = T * B
        self.ids, self.targets, self.masks = ids, targets, masks
        x = None
        # The pre-activations are produced already multiplied by the gates' first scale (see
        # gate_activations_), by scaling the small weight copies rather than every z_t.
        pre = gate_constants(H, self.EW.dtype).scale(B)
        for k in range(L):
            A = self.A[k]
            bias = (w.b_x[k] + w.b_h[k]) * pre
            if k == 0:
                # x_t W_x + b with x_t = E[id_t] is row id_t of E W_x + b: a (V, E) x (E, 4H)
                # product and a gather instead of an (N, E) x (E, 4H) GEMM.
                EW = self.EW
                np.matmul(w.E, w.W_x[0] * pre, out=EW)
                EW += bias
                np.take(EW, ids, axis=0, out=A, mode="clip")  # ids are checked; "raise" buffers the copy
            else:
                np.matmul(x.reshape(N, -1), w.W_x[k] * pre, out=A.reshape(N, 4 * H))  # one GEMM per window
                A += bias
            self.Hs[k][0] = h0[k]
            self.C[k][0] = c0[k]
            # h_{t-1} W_h, not (W_hᵀ h_{t-1}ᵀ)ᵀ as on the Intel machines (up to 1.5x faster there
            # for small B): on these AMD ones the transposed product and its strided add took
            # 0.99-1.09x as long a shard (interleaved A/B, 128x1 to 512x2, two runs).
            W_h_pre = w.W_h[k] * pre  # (H, 4H), columns scaled
            layer_forward(A, W_h_pre, self.Hs[k], self.C[k], self.TC[k], training=True)
            if masks is None:
                x = self.Hs[k][1:]  # (T, B, H)
            else:
                x = np.multiply(self.Hs[k][1:], masks[k], out=self.Y[k])
        # Output layer and loss for all T*B positions at once.
        P = self.P  # (N, V)
        np.matmul(x.reshape(N, H), w.W_y, out=P)
        P += w.b_y
        P -= P.max(axis=1, keepdims=True)  # log-softmax shift: exp never overflows
        picked = P[self.rows, targets.reshape(N)]  # shifted logit of the right answer (N,)
        np.exp(P, out=P)
        total = P.sum(axis=1)  # (N,)
        # loss = mean(log Σ exp - logit[target]), accumulated in float64
        loss = float(np.mean(np.log(total, dtype=np.float64) - picked))
        P /= total[:, None]  # softmax probabilities, kept for backward
        return loss

    def final_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(h_T, c_T), each (L, B, H), fresh arrays."""
        return (
            np.stack([Hs[-1] for Hs in self.Hs]),
            np.stack([C[-1] for C in self.C]),
        )

    def backward(self, w: Params, g: Params, W_hT: list[np.ndarray]) -> None:
        """Fill ``g`` with dLoss/dParams for the last forward. W_hT[k]: W_h[k].T, contiguous."""
        T, B = self.shape
        L, H, V = self.L, self.H, self.V
        N = T * B
        # dL/dlogits = (softmax - onehot(target)) / N
        P = self.P
        P[self.rows, self.targets.reshape(N)] -= 1.0
        P *= 1.0 / N
        y = self._output(L - 1).reshape(N, H)
        np.matmul(y.T, P, out=g.W_y)  # (H, V)
        np.matmul(self.ones, P, out=g.b_y)
        dY = self.dY  # (T, B, H)
        np.matmul(P, w.W_y.T, out=dY.reshape(N, H))
        dh = np.empty((B, H), P.dtype)
        dc = np.empty((B, H), P.dtype)
        for k in range(L - 1, -1, -1):
            if self.masks is not None:
                dY *= self.masks[k]  # through the dropout of layer k's output
            dh.fill(0.0)  # truncated BPTT: nothing flows in from beyond the window
            dc.fill(0.0)
            dZ = self.dZ
            layer_backward(self.A[k], W_hT[k], self.C[k], self.TC[k], dY, dh, dc, dZ)
            dZ2 = dZ.reshape(N, 4 * H)
            np.matmul(self.Hs[k][:-1].reshape(N, H).T, dZ2, out=g.W_h[k])  # Σ_t h_{t-1}ᵀ dz_t
            if k > 0:
                x = self._output(k - 1).reshape(N, -1)
                np.matmul(x.T, dZ2, out=g.W_x[k])  # Σ_t x_tᵀ dz_t
                np.matmul(self.ones, dZ2, out=g.b_x[k])  # Σ_t dz_t
                np.matmul(dZ2, w.W_x[k].T, out=dY.reshape(N, H))  # dx_t = dz_t W_xᵀ (dY is free)
            else:
                # Layer 0's input is x_t = E[id_t], so with S[v] = Σ of dz_t over the positions
                # whose input was v:  dW_x = Σ_t x_tᵀ dz_t = Eᵀ S,  db = Σ_v S[v],  and
                # dE[v] = Σ dz_t W_xᵀ = S[v] W_xᵀ, instead of three (N, E)-sized GEMMs.
                # S: sort the positions by id and add up each run with a GEMV, one per distinct
                # id in the window (np.add.reduceat and np.add.at are 6x and 15x slower).
                ids = self.ids.reshape(N)
                order = np.argsort(ids, kind="stable")
                sorted_ids = ids[order]
                starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
                ends = np.r_[starts[1:], N]
                runs = dZ2[order]  # (N, 4H), grouped by id
                S, ones = self.S, self.ones
                S.fill(0.0)
                for i, j, v in zip(starts.tolist(), ends.tolist(), sorted_ids[starts].tolist()):
                    np.matmul(ones[: j - i], runs[i:j], out=S[v])
                np.matmul(w.E.T, S, out=g.W_x[0])
                np.sum(S, axis=0, out=g.b_x[0])
                np.matmul(S, w.W_x[0].T, out=g.E)
            g.b_h[k][...] = g.b_x[k]

    def _output(self, k: int) -> np.ndarray:
        """Layer k's output as the next layer (or the decoder) saw it: h_1..h_T after dropout."""
        return self.Hs[k][1:] if self.masks is None else self.Y[k]


# ---------------------------------------------------------------------------------------------
# Inference: no dropout, nothing kept for backward.


def run_layers(
    w: Params, ids: np.ndarray, h0: np.ndarray, c0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-layer outputs (T, B, H) for inputs ``ids`` (T, B) from state h0, c0 (L, B, H),
    and the final state (h_T, c_T), each (L, B, H)."""
    T, B = ids.shape
    L, H = w.L, w.H
    dt = w.flat.dtype
    N = T * B
    x = np.take(w.E, ids, axis=0)  # (T, B, E)
    h_T = np.empty((L, B, H), dt)
    c_T = np.empty((L, B, H), dt)
    A = np.empty((T, B, 4 * H), dt)
    Hs = np.empty((T + 1, B, H), dt)
    C = np.empty((T + 1, B, H), dt)
    TC = np.empty((T, B, H), dt)
    for k in range(L):
        # one product for the window (row by row when a short text makes it a few rows)
        inference_product(x.reshape(N, -1), w.W_x[k], A.reshape(N, 4 * H))
        A += w.b_x[k] + w.b_h[k]
        Hs[0] = h0[k]
        C[0] = c0[k]
        layer_forward(A, w.W_h[k], Hs, C, TC)
        h_T[k] = Hs[T]
        c_T[k] = C[T]
        x = Hs[1:]  # read by the next layer's input GEMM before Hs is overwritten
    return x, h_T, c_T


# A per-character product with a few rows (a few streams stepping together) is either one
# GEMM or one GEMV per row, whichever is faster here. OpenBLAS's GEMM repacks the whole weight
# matrix on every call, so with 2-7 rows it can cost 2-3x as much as the GEMVs, or less: that
# depends on the kernel OpenBLAS picked for the CPU and on the shape (a (B, 256) x (256, 1024)
# product at B = 2, 3, 5: 73, 105, 95 us as one GEMM and 28, 41, 67 us as GEMVs with the
# Haswell kernel; 26, 57, 140 us as one GEMM with the SkylakeX one; at (128, 512) the GEMVs
# lost with the latter). So each product shape is timed both ways once, at its first small
# batch, and goes the faster way from then on.
SMALL_BATCHES = range(2, 8)
_ROW_BY_ROW: dict[tuple[int, int, str], frozenset[int]] = {}  # (K, N, dtype) -> batch sizes


def _best_seconds(run, repeat: int = 5) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _rows(x: np.ndarray, W: np.ndarray, out: np.ndarray) -> np.ndarray:
    for i in range(x.shape[0]):
        np.dot(x[i], W, out=out[i])
    return out


def _row_by_row_sizes(W: np.ndarray) -> frozenset[int]:
    """The batch sizes in SMALL_BATCHES at which a product with ``W`` is clearly faster row by
    row here: best of 5 each way (the least disturbed by other threads), by 10% at least (near
    even, a whole step came out either way). Timed with single-threaded BLAS, as the server
    and validation run these products."""
    x = np.random.default_rng(0).standard_normal((SMALL_BATCHES[-1], W.shape[0])).astype(W.dtype)
    out = np.empty((x.shape[0], W.shape[1]), W.dtype)
    faster = set()
    with single_threaded():
        for B in SMALL_BATCHES:
            xb, ob = x[:B], out[:B]
            gemm = _best_seconds(lambda: np.dot(xb, W, out=ob))
            if _best_seconds(lambda: _rows(xb, W, ob)) < 0.9 * gemm:
                faster.add(B)
    return frozenset(faster)


def inference_product(x: np.ndarray, W: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = x W for inference (``step_layers``, ``run_layers``): x (B, K), W (K, N), out (B, N)
    C-contiguous.

    ``np.dot`` releases the GIL inside BLAS (a server's other threads run meanwhile). A few
    rows go row by row where that was measured faster (see SMALL_BATCHES); each row then gets
    exactly the numbers it would get alone.
    """
    B = x.shape[0]
    if B in SMALL_BATCHES:
        key = (W.shape[0], W.shape[1], W.dtype.str)
        sizes = _ROW_BY_ROW.get(key)
        if sizes is None:  # once per shape; two threads racing here just both measure it
            sizes = _ROW_BY_ROW[key] = _row_by_row_sizes(W)
        if B in sizes:
            return _rows(x, W, out)
    return np.dot(x, W, out=out)


def step_layers(
    w: Params, ids: np.ndarray, h0: np.ndarray, c0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One timestep for B streams: top-layer output (B, H) for inputs ``ids`` (B,) from state
    h0, c0 (L, B, H), and the new state (h, c), each (L, B, H) and fresh.

    The same equations as :func:`run_layers` with T = 1, written for the per-character
    serving path: no window buffers, every temporary written in place, so a batch-1 step is
    a few dozen small NumPy calls (their fixed cost, not the arithmetic, is most of its time).
    The products are :func:`inference_product`: ``np.dot``, which releases the GIL inside
    BLAS where ``matmul`` of these shapes holds it (the same gemv/gemm call, so the same
    bits), and row by row for a few rows where that is faster.
    """
    L, H = w.L, w.H
    B = ids.shape[0]
    dt = w.flat.dtype
    h = np.empty((L, B, H), dt)
    c = np.empty((L, B, H), dt)
    gates = gate_constants(H, dt)
    z = np.empty((B, 4 * H), dt)
    zh = np.empty((B, 4 * H), dt)
    ig = np.empty((B, H), dt)
    x = w.E[ids]  # (B, E)
    for k in range(L):
        inference_product(x, w.W_x[k], z)
        z += w.b_x[k] + w.b_h[k]  # the same order of additions as run_layers: equal results
        inference_product(h0[k], w.W_h[k], zh)
        z += zh
        gate_activations_(z, gates)  # [i f o g]
        ck, hk = c[k], h[k]
        np.multiply(z[:, H : 2 * H], c0[k], out=ck)
        np.multiply(z[:, :H], z[:, 3 * H :], out=ig)
        ck += ig  # c = f ⊙ c_prev + i ⊙ g
        np.tanh(ck, out=hk)
        hk *= z[:, 2 * H : 3 * H]  # h = o ⊙ tanh(c)
        x = hk
    return x, h, c


def logits(w: Params, y: np.ndarray) -> np.ndarray:
    """Output layer: y (..., H) -> logits (..., V)."""
    return y @ w.W_y + w.b_y


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Stable log-softmax over the last axis."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
