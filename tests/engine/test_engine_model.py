"""CharLSTM: state_dict, initialisation, stepping and feeding."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine import CharLSTM, ConfigError, LSTMState, ModelConfig

CONFIG = ModelConfig(vocab_size=11, embedding_size=6, hidden_size=8, num_layers=3, dtype="float64")


def test_state_dict_has_pytorch_names_shapes_and_dtype():
    model = CharLSTM(ModelConfig(vocab_size=11, embedding_size=6, hidden_size=8, num_layers=2))
    sd = model.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "embedding.weight": (11, 6),
        "lstm.weight_ih_l0": (32, 6), "lstm.weight_hh_l0": (32, 8),
        "lstm.bias_ih_l0": (32,), "lstm.bias_hh_l0": (32,),
        "lstm.weight_ih_l1": (32, 8), "lstm.weight_hh_l1": (32, 8),
        "lstm.bias_ih_l1": (32,), "lstm.bias_hh_l1": (32,),
        "decoder.weight": (11, 8), "decoder.bias": (11,),
    }
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in sd.values())
    assert model.num_parameters() == sum(v.size for v in sd.values())
    # Fresh copies: changing them does not change the model.
    sd["decoder.bias"][:] = 5
    assert not np.any(model.state_dict()["decoder.bias"] == 5)


def test_initialisation_follows_the_recipe():
    H, E = 8, 6
    model = CharLSTM(ModelConfig(vocab_size=11, embedding_size=E, hidden_size=H, num_layers=2, dtype="float64"), seed=3)
    sd = model.state_dict()
    for k in range(2):
        b_ih, b_hh = sd[f"lstm.bias_ih_l{k}"], sd[f"lstm.bias_hh_l{k}"]
        np.testing.assert_array_equal(b_ih[H:2 * H], 1.0)  # forget gate (PyTorch order i, f, g, o)
        np.testing.assert_array_equal(np.delete(b_ih, np.s_[H:2 * H]), 0.0)
        np.testing.assert_array_equal(b_hh, 0.0)
        W_hh = sd[f"lstm.weight_hh_l{k}"]
        for gate in range(4):
            block = W_hh[gate * H:(gate + 1) * H]
            np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-12)  # orthogonal
        n_in = E if k == 0 else H
        assert np.abs(sd[f"lstm.weight_ih_l{k}"]).max() <= np.sqrt(6 / (n_in + H))
    np.testing.assert_array_equal(sd["decoder.bias"], 0.0)
    # Seeded: same seed same weights, other seed other weights; float32 = float64 rounded.
    again = CharLSTM(model.config, seed=3).state_dict()
    other = CharLSTM(model.config, seed=4).state_dict()
    single = CharLSTM(ModelConfig(**{**model.config.to_dict(), "dtype": "float32"}), seed=3).state_dict()
    for name in sd:
        np.testing.assert_array_equal(again[name], sd[name])
        np.testing.assert_array_equal(single[name], sd[name].astype(np.float32))
    assert not np.array_equal(other["lstm.weight_ih_l0"], sd["lstm.weight_ih_l0"])


def test_state_dict_round_trip_gives_the_same_predictions(rng):
    a = CharLSTM(CONFIG, seed=1)
    b = CharLSTM.from_state_dict(CONFIG, a.state_dict())
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[name], value)
    ids = rng.integers(0, 11, (7, 3))
    pa, sa = a.feed(ids, a.zero_state(3))
    pb, sb = b.feed(ids, b.zero_state(3))
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(sa.h, sb.h)


def test_load_state_dict_refuses_bad_tensors_and_leaves_the_model_unchanged():
    model = CharLSTM(CONFIG)
    good = model.state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "decoder.bias"}, "decoder.bias"),
        ({**good, "extra.weight": np.zeros(3)}, "extra.weight"),
        ({**good, "lstm.weight_hh_l1": np.zeros((32, 9))}, "lstm.weight_hh_l1"),
        ({**good, "embedding.weight": np.full((11, 6), np.nan)}, "embedding.weight"),
    ]
    for tensors, field in cases:
        with pytest.raises(ConfigError) as err:
            model.load_state_dict(tensors)
        assert err.value.field == field
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, good[name])


# 128 streams: a batch above lstm.EXP_FORM_MIN_SIZE, whose gates take the other form than a
# stream's alone
@pytest.mark.parametrize("B", [5, 128])
def test_batched_step_equals_per_stream_steps(rng, B):
    model = CharLSTM(CONFIG, seed=2)
    state = model.zero_state(B)
    singles = [model.zero_state(1) for _ in range(B)]
    for _ in range(6):
        ids = rng.integers(0, 11, B)
        probs, state = model.step(ids, state)
        assert probs.shape == (B, 11) and probs.dtype == np.float64
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        for b in range(B):
            p, singles[b] = model.step(ids[b:b + 1], singles[b])
            np.testing.assert_allclose(p[0], probs[b], rtol=0, atol=1e-12)
    joined = LSTMState.concat(singles)
    np.testing.assert_allclose(joined.h, state.h, atol=1e-12)
    np.testing.assert_allclose(state.select(2).c, singles[2].c, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 64], ids=["tanh-form", "exp-form"])
def test_gate_activations_are_sigmoid_and_tanh_in_either_form(rows, dtype):
    """σ on [i f o] and tanh on g to a few ulps, the limits exact and no overflow warning
    (the exp form's e^-x is inf for large negative x, on purpose); prescaled weights give
    the same numbers."""
    import warnings

    from charlstm.engine import lstm

    H = 32
    gates = lstm.gate_constants(H, dtype)
    assert (rows * 4 * H >= lstm.EXP_FORM_MIN_SIZE) == (rows == 64)
    z = np.random.default_rng(0).normal(scale=6.0, size=(rows, 4 * H)).astype(dtype)
    extremes = [-1e4, -100.0, -90.0, -1e-8, 0.0, 1e-8, 90.0, 100.0, 1e4]
    z[0, : len(extremes)] = extremes  # i
    z[0, 3 * H: 3 * H + len(extremes)] = extremes  # g
    x = z.astype(np.float64)
    want = 0.5 + 0.5 * np.tanh(x / 2)  # σ, exact in float64 for any x
    want[:, 3 * H:] = np.tanh(x[:, 3 * H:])
    out = z.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstm.gate_activations_(out, gates)
        folded = z * gates.scale(rows)
        lstm.gate_activations_(folded, gates, prescaled=True)
    np.testing.assert_allclose(out, want, rtol=0, atol=8 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(out[0, [0, len(extremes) - 1]], [0.0, 1.0])
    np.testing.assert_array_equal(out[0, [3 * H, 3 * H + len(extremes) - 1]], [-1.0, 1.0])
    np.testing.assert_array_equal(folded, out)


def test_feed_equals_stepping_one_character_at_a_time(rng):
    model = CharLSTM(CONFIG, seed=2)
    ids = rng.integers(0, 11, (9, 2))
    start = LSTMState(rng.normal(size=(3, 2, 8)), rng.normal(size=(3, 2, 8)))
    before = start.copy()
    fed_probs, fed_state = model.feed(ids, start)
    state = start
    for t in range(9):
        probs, state = model.step(ids[t], state)
    np.testing.assert_allclose(fed_probs, probs, atol=1e-12)
    np.testing.assert_allclose(fed_state.c, state.c, atol=1e-12)
    np.testing.assert_array_equal(start.h, before.h)  # the input state is not modified


def test_step_refuses_bad_ids_and_state():
    model = CharLSTM(CONFIG)
    state = model.zero_state(2)
    for ids, field in [(np.array([0, 11]), "ids"), (np.array([-1, 0]), "ids"), (np.array([0.5, 1.0]), "ids"),
                       (np.array([[1, 2]]), "ids")]:
        with pytest.raises(ConfigError) as err:
            model.step(ids, state)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        model.step(np.array([1, 2, 3]), state)
    assert err.value.field == "state"
    with pytest.raises(ConfigError):
        model.feed(np.zeros((0, 2), dtype=int), state)
    with pytest.raises(ConfigError):
        model.zero_state(0)


def test_lstm_state_helpers():
    model = CharLSTM(CONFIG)
    s = model.zero_state(4)
    assert s.batch_size == 4 and s.h.shape == (3, 4, 8)
    s.h[:, 1] = 1.0
    one = s.select(1)
    assert one.batch_size == 1 and np.all(one.h == 1.0)
    one.h[:] = 7  # a copy
    assert not np.any(s.h == 7)
    pair = s.select([3, 1])
    assert np.all(pair.h[:, 1] == 1.0)
    assert LSTMState.concat([s, pair]).batch_size == 6
    with pytest.raises(ConfigError):
        LSTMState.concat([])


class _Plan(dict):
    """Stands in for ``lstm._ROW_BY_ROW``: every product shape goes row by row at the batch
    sizes ``rows`` (none: always one GEMM), without timing anything."""

    def __init__(self, rows: frozenset[int]):
        super().__init__()
        self.rows = rows

    def get(self, key, default=None):
        return self.rows


@pytest.mark.parametrize("row_by_row", [False, True], ids=["one-product", "row-by-row"])
def test_step_is_bit_for_bit_the_matmul_equations(rng, monkeypatch, row_by_row):
    """step's products release the GIL (np.dot) and go row by row for a few rows where that is
    faster; the numbers are exactly those of the same equations written with matmul, per row
    or for the whole batch (the serving path's generated text must not change)."""
    from charlstm.engine import lstm

    rows = frozenset(lstm.SMALL_BATCHES) if row_by_row else frozenset()
    monkeypatch.setattr(lstm, "_ROW_BY_ROW", _Plan(rows))

    def product(a, W):
        if a.shape[0] in rows:
            return np.stack([np.matmul(r, W) for r in a])
        return np.matmul(a, W)

    for dtype in ("float32", "float64"):
        config = ModelConfig(vocab_size=11, embedding_size=6, hidden_size=32, num_layers=2, dtype=dtype)
        model = CharLSTM(config, seed=4)
        w = model.params
        for B in (1, 3, 40):
            h0 = rng.normal(size=(2, B, 32)).astype(dtype)
            c0 = rng.normal(size=(2, B, 32)).astype(dtype)
            ids = rng.integers(0, 11, B)
            probs, state = model.step(ids, LSTMState(h0, c0))
            x, hs, cs = w.E[ids], [], []
            gates = lstm.gate_constants(32, np.dtype(dtype))
            for k in range(2):
                z = product(x, w.W_x[k]) + (w.b_x[k] + w.b_h[k])
                z += product(h0[k], w.W_h[k])
                lstm.gate_activations_(z, gates)
                c = z[:, 32:64] * c0[k] + z[:, :32] * z[:, 96:]
                x = np.tanh(c) * z[:, 64:96]
                hs.append(x)
                cs.append(c)
            logits = (product(x, w.W_y) + w.b_y).astype(np.float64)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            np.testing.assert_array_equal(state.h, np.stack(hs))
            np.testing.assert_array_equal(state.c, np.stack(cs))
            np.testing.assert_array_equal(probs, e / e.sum(axis=1, keepdims=True))


def test_a_few_streams_stepped_row_by_row_get_exactly_their_numbers_alone(rng, monkeypatch):
    from charlstm.engine import lstm

    monkeypatch.setattr(lstm, "_ROW_BY_ROW", _Plan(frozenset(lstm.SMALL_BATCHES)))
    # H=64: as one GEMM, the rows' numbers differ from their GEMVs' in the last bits
    model = CharLSTM(ModelConfig(vocab_size=11, embedding_size=6, hidden_size=64, num_layers=2), seed=4)
    B = 3
    state, singles = model.zero_state(B), [model.zero_state(1) for _ in range(B)]
    for _ in range(4):
        ids = rng.integers(0, 11, B)
        probs, state = model.step(ids, state)
        for b in range(B):
            p, singles[b] = model.step(ids[b:b + 1], singles[b])
            np.testing.assert_array_equal(p[0], probs[b])
    np.testing.assert_array_equal(LSTMState.concat(singles).c, state.c)


def test_each_product_shape_is_timed_once_and_only_for_a_few_rows(monkeypatch):
    """Which way a few rows multiply is measured at the first small batch, once per weight
    shape; one row (a GEMV anyway) and many rows (one GEMM) never measure."""
    from charlstm.engine import lstm

    measured = []
    real = lstm._row_by_row_sizes

    def counting(W):
        measured.append(W.shape)
        return real(W)

    monkeypatch.setattr(lstm, "_ROW_BY_ROW", {})
    monkeypatch.setattr(lstm, "_row_by_row_sizes", counting)
    config = ModelConfig(vocab_size=11, embedding_size=6, hidden_size=16, num_layers=2)
    model = CharLSTM(config, seed=4)
    for B in (1, 40):
        model.step(np.zeros(B, dtype=int), model.zero_state(B))
    assert measured == []
    for _ in range(2):
        model.step(np.arange(3), model.zero_state(3))
        model.step(np.arange(5), model.zero_state(5))
    # W_x of layer 0 (6, 64), W_x of layer 1 and both W_h (16, 64), W_y (16, 11)
    assert sorted(measured) == [(6, 64), (16, 11), (16, 64)]
    assert all(sizes <= frozenset(lstm.SMALL_BATCHES) for sizes in lstm._ROW_BY_ROW.values())


def test_from_state_dict_skips_the_random_initialisation(monkeypatch):
    # Loading a stored model overwrites every parameter, so the orthogonal init's QR
    # decompositions (most of a load's time) must not run.
    config = ModelConfig(vocab_size=11, embedding_size=4, hidden_size=8, num_layers=2)
    tensors = CharLSTM(config, seed=5).state_dict()

    def refuse(self, rng):
        raise AssertionError("from_state_dict ran the random initialisation")

    monkeypatch.setattr(CharLSTM, "_init_params", refuse)
    loaded = CharLSTM.from_state_dict(config, tensors)
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value, tensors[name])
