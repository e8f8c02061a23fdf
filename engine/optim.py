"""Optimisers, gradient clipping and learning-rate schedules, on flat parameter vectors.

Every parameter lives in one flat vector (``lstm.Params.flat``), so an update is a handful
of whole-vector operations.

AdamW (Loshchilov & Hutter), with bias correction and decoupled weight decay:
    m ← β₁ m + (1 - β₁) g          v ← β₂ v + (1 - β₂) g²
    θ ← θ - lr · λ · θ             (only where ``decay_mask`` is 1)
    θ ← θ - lr · m̂ / (√v̂ + ε)      m̂ = m / (1 - β₁ᵗ), v̂ = v / (1 - β₂ᵗ)

SGD with momentum, the momentum written as an exponential moving average of gradients:
    m ← μ m + (1 - μ) g            θ ← θ - lr · λ · θ (masked)        θ ← θ - lr · m
"""

from __future__ import annotations

import math

import numpy as np


def clip_by_global_norm_(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` in place so that its L2 norm is at most ``max_norm`` (0: no clipping).

    Returns the norm before clipping (computed in float64).
    """
    norm = math.sqrt(float(np.dot(grad, grad).astype(np.float64)))
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-12)
    return norm


def learning_rate(step: int, total_steps: int, base_lr: float, schedule: str, warmup_steps: int, min_lr_ratio: float,
                  *, progress: float | None = None) -> float:
    """Learning rate for 0-based ``step`` of ``total_steps``.

    Linear warm-up from base_lr/warmup_steps to base_lr over ``warmup_steps`` steps, then
    "constant" keeps base_lr and "cosine" decays it along half a cosine to
    min_lr_ratio·base_lr at the last step. ``progress`` (0 to 1), when given, replaces the
    step-based position on the cosine (a wall-clock budget's elapsed fraction, say).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps - 1)
    if progress is None:
        progress = (step - warmup_steps) / decay_steps
    progress = min(1.0, max(0.0, progress))
    lo = base_lr * min_lr_ratio
    return lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


class AdamW:
    """Adam with bias correction and decoupled weight decay on one flat vector."""

    def __init__(self, size: int, dtype, *, weight_decay: float = 0.0, decay_mask: np.ndarray | None = None,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = weight_decay
        self.decay_mask = decay_mask  # (size,) 1 where weight decay applies, 0 elsewhere
        self.m = np.zeros(size, dtype)  # first moment
        self.v = np.zeros(size, dtype)  # second moment
        self.t = 0  # updates done (for the bias correction)
        self._tmp = np.empty(size, dtype)

    def update(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """One step: ``theta`` (size,) updated in place from ``grad`` (size,)."""
        b1, b2 = self.beta1, self.beta2
        self.t += 1
        m, v, tmp = self.m, self.v, self._tmp
        m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        m += tmp  # m ← β₁ m + (1 - β₁) g
        v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp  # v ← β₂ v + (1 - β₂) g²
        if self.weight_decay > 0:
            _decay_(theta, lr * self.weight_decay, self.decay_mask, tmp)
        # θ ← θ - lr/(1-β₁ᵗ) · m / (√v / √(1-β₂ᵗ) + ε)
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(1.0 - b2**self.t)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / (1.0 - b1**self.t)
        theta -= tmp

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, JSON-able meta) to save; see :meth:`load_state`."""
        return {"m": self.m.copy(), "v": self.v.copy()}, {"t": self.t}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        self.m[...] = tensors["m"]
        self.v[...] = tensors["v"]
        self.t = int(meta["t"])


class SGD:
    """SGD with momentum as an exponential moving average of gradients."""

    def __init__(self, size: int, dtype, *, momentum: float = 0.9, weight_decay: float = 0.0,
                 decay_mask: np.ndarray | None = None):
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.decay_mask = decay_mask
        self.m = np.zeros(size, dtype)
        self.t = 0
        self._tmp = np.empty(size, dtype)

    def update(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        mu = self.momentum
        self.t += 1
        self.m *= mu
        np.multiply(grad, 1.0 - mu, out=self._tmp)
        self.m += self._tmp  # m ← μ m + (1 - μ) g
        if self.weight_decay > 0:
            _decay_(theta, lr * self.weight_decay, self.decay_mask, self._tmp)
        np.multiply(self.m, lr, out=self._tmp)
        theta -= self._tmp

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"m": self.m.copy()}, {"t": self.t}

    def load_state(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        self.m[...] = tensors["m"]
        self.t = int(meta["t"])


def _decay_(theta: np.ndarray, amount: float, mask: np.ndarray | None, tmp: np.ndarray) -> None:
    """θ ← θ - amount · θ where mask is 1 (decoupled weight decay)."""
    np.multiply(theta, amount, out=tmp)
    if mask is not None:
        tmp *= mask
    theta -= tmp
