"""Configuration of the model and of training, and the one error type for bad input.

Every check raises :class:`ConfigError` whose ``field`` names the offending field and whose
message states the allowed range, e.g. ``hidden_size must be an integer in [1, 4096] (got 0)``.
The ranges match the service's protocol (``Hyperparameters`` in ``charlstm.proto``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = ("float32", "float64")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")

MAX_VOCAB = 0x110000 + 1  # every Unicode code point, plus the reserved unknown id
MAX_WIDTH = 4096  # embedding_size, hidden_size, seq_len, batch_size
MAX_LAYERS = 16


class ConfigError(ValueError):
    """Bad configuration or input.

    ``field`` names the offending field; ``str()`` reads like
    ``hidden_size must be an integer in [1, 4096] (got 0)``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------------------------
# Small checkers shared by the configs and the API functions.


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `hidden_size=True` is a mistake, not 1.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(field: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in [lo, hi], else raise ConfigError."""
    if _is_int(value) and int(value) >= lo and (hi is None or int(value) <= hi):
        return int(value)
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    raise ConfigError(field, f"{field} must be {allowed} (got {value!r})")


def check_float(
    field: str,
    value: Any,
    lo: float,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number in the given interval."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        x = float(value)
        ok = math.isfinite(x)
        ok = ok and (x > lo if lo_open else x >= lo)
        if hi is not None:
            ok = ok and (x < hi if hi_open else x <= hi)
        if ok:
            return x
    if hi is None:
        allowed = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = (
            f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        )
    raise ConfigError(field, f"{field} must be {allowed} (got {value!r})")


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    allowed = ", ".join(repr(c) for c in choices)
    raise ConfigError(field, f"{field} must be one of {allowed} (got {value!r})")


def _from_dict(cls, d: dict):
    """Build a config dataclass from a JSON dict: unknown keys are an error, missing keys
    take their defaults; the result is validated."""
    if not isinstance(d, dict):
        raise ConfigError(cls.__name__, f"{cls.__name__} must be a dict (got {type(d).__name__})")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise ConfigError(
                str(key), f"{key} is not a field of {cls.__name__} (fields: {sorted(names)})"
            )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in d:
            raise ConfigError(key, f"{key} is required")
    config = cls(**d)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: embedding (V, E) -> L LSTM layers of H units -> linear (H -> V)."""

    vocab_size: int
    embedding_size: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    dtype: str = "float32"  # or "float64"

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        check_int("vocab_size", self.vocab_size, 2, MAX_VOCAB)
        check_int("embedding_size", self.embedding_size, 1, MAX_WIDTH)
        check_int("hidden_size", self.hidden_size, 1, MAX_WIDTH)
        check_int("num_layers", self.num_layers, 1, MAX_LAYERS)
        check_float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_choice("dtype", self.dtype, DTYPES)

    def to_dict(self) -> dict:
        """JSON-able dict; ``ModelConfig.from_dict(c.to_dict()) == c``."""
        return {
            "vocab_size": int(self.vocab_size),
            "embedding_size": int(self.embedding_size),
            "hidden_size": int(self.hidden_size),
            "num_layers": int(self.num_layers),
            "dropout": float(self.dropout),
            "dtype": str(self.dtype),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; validates (ConfigError)."""
        return _from_dict(cls, d)


@dataclass
class TrainConfig:
    """How to train: truncated BPTT over windows of ``seq_len`` chars, ``batch_size`` streams.

    Exactly one of ``steps``/``epochs`` may be set; with neither, training runs
    :data:`DEFAULT_STEPS` steps, or until ``max_seconds`` when that is set. ``max_seconds`` is
    a wall-clock budget (validation included): training ends at whichever limit comes first,
    and "cosine" decays over elapsed time, so the budget ends at the lowest learning rate. ``warmup_steps`` applies to both schedules (a linear ramp
    from lr/warmup_steps to lr); "cosine" then decays to ``min_lr_ratio * learning_rate``.
    ``momentum`` is used by "sgd" only. ``weight_decay`` is decoupled (AdamW-style) and
    applies to the weight matrices and the embedding, not to biases.
    """

    seq_len: int = 64
    batch_size: int = 32
    steps: int | None = None
    epochs: float | None = None
    optimizer: str = "adamw"  # "adamw" | "sgd"
    learning_rate: float = 2e-3
    schedule: str = "cosine"  # "cosine" (linear warm-up then cosine) | "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip: float = 5.0  # 0 disables
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 100
    max_seconds: float | None = None

    DEFAULT_STEPS = 1000  # not a dataclass field (no annotation)

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        check_int("seq_len", self.seq_len, 1, MAX_WIDTH)
        check_int("batch_size", self.batch_size, 1, MAX_WIDTH)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("steps", "steps and epochs: set at most one of them (got both)")
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if self.epochs is not None:
            check_float("epochs", self.epochs, 0.0, lo_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_float("learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_float("clip", self.clip, 0.0)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_float("val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        check_int("eval_every", self.eval_every, 1)
        if self.max_seconds is not None:
            check_float("max_seconds", self.max_seconds, 0.0, lo_open=True)

    def to_dict(self) -> dict:
        """JSON-able dict; ``TrainConfig.from_dict(c.to_dict()) == c``."""
        return {
            "seq_len": int(self.seq_len),
            "batch_size": int(self.batch_size),
            "steps": None if self.steps is None else int(self.steps),
            "epochs": None if self.epochs is None else float(self.epochs),
            "optimizer": str(self.optimizer),
            "learning_rate": float(self.learning_rate),
            "schedule": str(self.schedule),
            "warmup_steps": int(self.warmup_steps),
            "min_lr_ratio": float(self.min_lr_ratio),
            "clip": float(self.clip),
            "weight_decay": float(self.weight_decay),
            "momentum": float(self.momentum),
            "seed": int(self.seed),
            "val_fraction": float(self.val_fraction),
            "eval_every": int(self.eval_every),
            "max_seconds": None if self.max_seconds is None else float(self.max_seconds),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; validates (ConfigError)."""
        return _from_dict(cls, d)
