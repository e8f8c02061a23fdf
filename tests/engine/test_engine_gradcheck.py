"""Analytic gradients against central finite differences, every element of every tensor."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine import CharLSTM, LSTMState, ModelConfig
from charlstm.engine import lstm

V, E, H, L, T, B = 7, 5, 4, 2, 5, 3
EPS = 1e-3


def numeric_gradient(model: CharLSTM, inputs, targets, state, masks) -> np.ndarray:
    """Fourth-order central differences, (f(-2h) - 8f(-h) + 8f(h) - f(2h)) / 12h: truncation
    error O(h⁴) allows a step large enough that round-off stays far below 1e-6."""
    theta = model.params.flat

    def loss_at(j: int, value: float) -> float:
        old = theta[j]
        theta[j] = value
        try:
            return model.loss_and_grad(inputs, targets, state, masks, need_grad=False)[0]
        finally:
            theta[j] = old

    grad = np.empty_like(theta)
    for j in range(theta.size):
        x = theta[j]
        f = [loss_at(j, x + k * EPS) for k in (-2, -1, 1, 2)]
        grad[j] = (8 * (f[2] - f[1]) - (f[3] - f[0])) / (12 * EPS)
    return grad


def relative_errors(analytic: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    return np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-12)


# The gate activations' two forms (lstm.gate_activations_): this small model takes the tanh
# form by its size; a threshold of 0 makes every product go through exp instead.
@pytest.mark.parametrize("exp_form_from", [None, 0], ids=["tanh-gates", "exp-gates"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "fixed-dropout-mask"])
def test_every_gradient_matches_finite_differences(dropout: bool, exp_form_from, rng, monkeypatch):
    if exp_form_from is not None:
        monkeypatch.setattr(lstm, "EXP_FORM_MIN_SIZE", exp_form_from)
    assert (B * 4 * H >= lstm.EXP_FORM_MIN_SIZE) == (exp_form_from is not None)
    model = CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L,
                                 dropout=0.3 if dropout else 0.0, dtype="float64"), seed=3)
    inputs = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    # A non-zero initial state exercises the carried (h, c) path too.
    state = LSTMState(rng.normal(0, 0.5, (L, B, H)), rng.normal(0, 0.5, (L, B, H)))
    masks = [lstm.dropout_mask(rng, (T, B, H), 0.3, np.float64) for _ in range(L)] if dropout else None
    if dropout:
        assert any((m == 0).any() for m in masks) and any((m > 1).any() for m in masks)

    loss, grad, _ = model.loss_and_grad(inputs, targets, state, masks)
    analytic = grad.flat.copy()
    numeric = numeric_gradient(model, inputs, targets, state, masks)

    assert np.isfinite(loss) and loss > 0
    errors = relative_errors(analytic, numeric)
    worst = {name: float(errors[grad.offsets[name]: grad.offsets[name] + t.size].max())
             for name, t in grad.tensors.items()}
    print("worst relative error per tensor:", worst)
    assert max(worst.values()) < 1e-6, worst
    # Every tensor received a gradient (nothing silently zero).
    for name, t in grad.tensors.items():
        assert np.abs(t).max() > 0, name


def test_dropout_changes_the_loss_and_no_mask_equals_all_ones_mask(rng):
    model = CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L, dtype="float64"))
    inputs = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    plain = model.loss_and_grad(inputs, targets, need_grad=False)[0]
    ones = model.loss_and_grad(inputs, targets, dropout_masks=[np.ones((T, B, H))] * L, need_grad=False)[0]
    masks = [lstm.dropout_mask(rng, (T, B, H), 0.5, np.float64) for _ in range(L)]
    dropped = model.loss_and_grad(inputs, targets, dropout_masks=masks, need_grad=False)[0]
    assert ones == pytest.approx(plain, abs=1e-12)
    assert dropped != pytest.approx(plain, abs=1e-6)


def test_dropout_mask_is_inverted_dropout(rng):
    p = 0.25
    mask = lstm.dropout_mask(rng, (200, 50, 10), p, np.float32)
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) == {np.float32(0.0), np.float32(1 / (1 - p))}
    assert (mask == 0).mean() == pytest.approx(p, abs=0.01)
    assert mask.mean() == pytest.approx(1.0, abs=0.02)
