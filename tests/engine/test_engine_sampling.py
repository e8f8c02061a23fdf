"""Sampling: greedy, temperature, top-k, top-p, seeds, generate, top_chars."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine import (CharLSTM, ConfigError, ModelConfig, Sampler, SamplingOptions, Vocab, generate,
                             top_chars)

#                  UNK   a     b     c     d     e
PROBS = np.array([[0.30, 0.05, 0.40, 0.10, 0.15, 0.00],
                  [0.00, 0.50, 0.05, 0.05, 0.10, 0.30]])


def draws(options: SamplingOptions, n: int = 4000) -> np.ndarray:
    sampler = Sampler(options)
    return np.stack([sampler.sample(PROBS)[0] for _ in range(n)])  # (n, 2)


def test_greedy_is_the_argmax_and_reports_the_model_probability():
    ids, p = Sampler(SamplingOptions(temperature=0.0)).sample(PROBS)
    assert ids.tolist() == [2, 1]
    np.testing.assert_array_equal(p, [0.40, 0.50])


def test_unknown_id_is_never_drawn():
    assert not np.any(draws(SamplingOptions(temperature=1.0), 2000) == Vocab.UNK_ID)
    ids, _ = Sampler(SamplingOptions(temperature=0.0)).sample(np.array([[0.9, 0.1, 0.0]]))
    assert ids.tolist() == [1]


def test_sampling_follows_the_distribution_without_unk():
    d = draws(SamplingOptions(temperature=1.0, seed=1))
    freq = np.bincount(d[:, 1], minlength=6) / len(d)
    np.testing.assert_allclose(freq, PROBS[1], atol=0.03)
    freq0 = np.bincount(d[:, 0], minlength=6) / len(d)
    np.testing.assert_allclose(freq0[1:], PROBS[0, 1:] / PROBS[0, 1:].sum(), atol=0.03)


def test_low_temperature_sharpens_and_high_flattens():
    cold = draws(SamplingOptions(temperature=0.2, seed=2))[:, 1]
    hot = draws(SamplingOptions(temperature=5.0, seed=2))[:, 1]
    assert np.mean(cold == 1) > 0.9
    assert np.mean(hot == 1) < 0.35
    assert len(set(hot.tolist())) == 5  # every non-UNK id with mass > 0


def test_top_k_keeps_only_the_k_most_likely():
    d = draws(SamplingOptions(top_k=2, seed=3))
    assert set(d[:, 0].tolist()) == {2, 4}
    assert set(d[:, 1].tolist()) == {1, 5}
    freq = np.mean(d[:, 1] == 1)
    assert freq == pytest.approx(0.5 / 0.8, abs=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # row 1: 0.5 (a) + 0.3 (e) = 0.8 reaches p = 0.75; row 0 without UNK: b .571, d .214 -> .786
    d = draws(SamplingOptions(top_p=0.75, seed=4))
    assert set(d[:, 1].tolist()) == {1, 5}
    assert set(d[:, 0].tolist()) == {2, 4}
    d = draws(SamplingOptions(top_p=0.2, seed=4), 500)
    assert set(d[:, 1].tolist()) == {1}


def test_same_seed_same_draws_and_other_seed_other_draws():
    a = draws(SamplingOptions(seed=42), 200)
    b = draws(SamplingOptions(seed=42), 200)
    c = draws(SamplingOptions(seed=43), 200)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kw, field", [({"temperature": -1}, "temperature"), ({"temperature": 101}, "temperature"),
                                       ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"),
                                       ({"top_p": 1.5}, "top_p"), ({"seed": -5}, "seed")])
def test_bad_sampling_options(kw, field):
    with pytest.raises(ConfigError) as err:
        SamplingOptions(**kw).validate()
    assert err.value.field == field
    with pytest.raises(ConfigError):
        Sampler(SamplingOptions(**kw))


def test_top_chars_lists_the_most_likely_first():
    vocab = Vocab("abcde")
    assert top_chars(PROBS[0], vocab, 3) == [("b", 0.40), (Vocab.UNK_CHAR, 0.30), ("d", 0.15)]
    assert len(top_chars(PROBS[0], vocab, 100)) == 6
    assert top_chars(PROBS[0], vocab, 0) == []
    with pytest.raises(ConfigError):
        top_chars(PROBS[0], vocab, -1)


def _model_and_vocab():
    vocab = Vocab.from_text("hello world")
    return CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=2), seed=9), vocab


def test_generate_is_lazy_reproducible_and_primes_with_the_prompt():
    model, vocab = _model_and_vocab()
    options = SamplingOptions(temperature=1.0, seed=5)
    gen = generate(model, vocab, "hello", 30, options)
    first = next(gen)
    assert isinstance(first[0], str) and len(first[0]) == 1 and 0 < first[1] <= 1
    rest = list(gen)
    assert len(rest) == 29
    again = list(generate(model, vocab, "hello", 30, options))
    assert again == [first] + rest
    # The prompt matters, and characters outside the vocabulary are read as UNK, not refused.
    greedy = SamplingOptions(temperature=0)
    a = "".join(c for c, _ in generate(model, vocab, "hello", 20, greedy))
    b = "".join(c for c, _ in generate(model, vocab, "wor", 20, greedy))
    assert a != b
    assert len(list(generate(model, vocab, "héllo ✓", 5, greedy))) == 5


def test_generate_from_empty_prompt_and_from_a_given_state():
    model, vocab = _model_and_vocab()
    greedy = SamplingOptions(temperature=0)
    empty = list(generate(model, vocab, "", 10, greedy))
    assert len(empty) == 10
    # Feeding the prompt through `feed` then continuing from that state and distribution
    # gives the same text as generating with the prompt.
    probs, state = model.feed(vocab.encode("hello")[:, None], model.zero_state(1))
    gen = generate(model, vocab, "", 10, greedy, state, probs=probs[0])
    assert list(gen) == list(generate(model, vocab, "hello", 10, greedy))
    # gen.state / gen.probs follow the characters produced (and the caller's state is unchanged)
    text = "hello" + "".join(c for c, _ in generate(model, vocab, "hello", 10, greedy))
    p2, s2 = model.feed(vocab.encode(text)[:, None], model.zero_state(1))
    np.testing.assert_allclose(gen.state.h, s2.h, atol=1e-6)
    np.testing.assert_allclose(gen.probs, p2[0], atol=1e-6)
    np.testing.assert_array_equal(state.h, model.feed(vocab.encode("hello")[:, None], model.zero_state(1))[1].h)
    with pytest.raises(ConfigError) as err:
        list(generate(model, vocab, "h", -1, greedy))
    assert err.value.field == "length"


def _random_rows(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """(1, V) distributions like a model's (all positive), and a few with zeros or unnormalised."""
    rows = []
    for i in range(count):
        V = int(rng.integers(2, 90))
        z = rng.normal(0, rng.uniform(0.1, 8), V)
        p = np.exp(z - z.max())
        p /= p.sum()
        if i % 5 == 1:
            p[rng.integers(0, V, 2)] = 0.0  # zeros outside UNK: the general path's case
        if i % 5 == 2:
            p = p.astype(np.float32).astype(np.float64) * 3.0
        rows.append(p[None])
    return rows


@pytest.mark.parametrize("temperature", [0.0, 0.25, 0.8, 1.0, 3.0, 100.0])
def test_one_row_draws_exactly_what_the_general_path_draws(temperature):
    """A single stream's draw (the one-row path) is bit for bit the general path's, for the
    same seed: the same ids, the same reported probabilities, the generator left in step."""
    rng = np.random.default_rng(int(temperature * 100))
    for i, row in enumerate(_random_rows(rng, 150)):
        options = dict(temperature=temperature, seed=i)
        if i % 3 == 1:
            options["top_k"] = int(rng.integers(1, row.shape[1] + 2))
        if i % 4 == 2:
            options["top_p"] = float(rng.uniform(0.05, 1.0))
        fast, general = Sampler(SamplingOptions(**options)), Sampler(SamplingOptions(**options))
        for _ in range(8):
            ids, p = fast.sample(row)
            ref_ids, ref_p = general._sample_rows(row)
            assert ids.dtype == ref_ids.dtype == np.int64 and p.dtype == ref_p.dtype
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(p, ref_p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1])
@pytest.mark.parametrize("where", [Vocab.UNK_ID, 3])
def test_one_row_refuses_what_the_general_path_refuses(bad, where):
    row = np.full((1, 6), 0.2)
    row[0, where] = bad
    with pytest.raises(ConfigError, match="finite and non-negative"):
        Sampler(SamplingOptions(temperature=0.8, seed=1)).sample(row)
