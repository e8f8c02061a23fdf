"""Small deterministic test data, importable both by the tests and by worker processes."""

from __future__ import annotations

import numpy as np


def random_tensors(seed: int) -> dict[str, np.ndarray]:
    """A small weights dict in the engine's naming style; different seeds give different values."""
    rng = np.random.default_rng(seed)
    return {
        "embedding.weight": rng.standard_normal((7, 3)).astype(np.float32),
        "lstm.weight_ih_l0": rng.standard_normal((16, 3)).astype(np.float32),
        "lstm.bias_ih_l0": rng.standard_normal(16).astype(np.float32),
        "decoder.weight": rng.standard_normal((7, 4)).astype(np.float32),
    }


def random_training_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 10_000)
    return {
        "adam.m.decoder.weight": rng.standard_normal((7, 4)),
        "adam.v.decoder.weight": rng.random((7, 4)),
        "rng.key": rng.integers(0, 2**32, size=624, dtype=np.uint32),
    }


def sample_metadata(step: int = 10, val_loss: float | None = 1.25) -> dict:
    """Metadata shaped like the service's convention."""
    return {
        "model_config": {"vocab_size": 7, "embedding_size": 3, "hidden_size": 4, "num_layers": 1,
                         "dropout": 0.0, "dtype": "float32"},
        "vocab": "abc def",
        "train_config": None,
        "metrics": {"step": step, "train_loss": 1.5, "val_loss": val_loss,
                    "best_val_loss": val_loss},
        "val_curve": [[step, val_loss]] if val_loss is not None else [],
        "corpus": {"sha256": "0" * 64, "characters": 1234},
        "job_id": None,
    }
