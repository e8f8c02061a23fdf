"""The seed cases: tiny periodic texts that a working LSTM must learn in seconds."""

from __future__ import annotations

import string

import numpy as np

from charlstm.engine import SamplingOptions, generate
from engine_helpers import train

GREEDY = SamplingOptions(temperature=0.0)


def greedy(model, vocab, prompt: str, length: int) -> str:
    return "".join(ch for ch, _ in generate(model, vocab, prompt, length, GREEDY))


def test_ab_is_predicted_with_certainty_at_every_position():
    # The text is short so that every few windows an epoch ends and the streams restart from
    # the zero state: the cold start (first "a") is trained as often as the other positions.
    model, vocab, _, reports = train("ab" * 100, seq_len=4, steps=300, batch_size=4, learning_rate=2e-2)
    # Feed a long "abab..." from the zero state and look at every position's prediction.
    text = "ab" * 20
    ids = vocab.encode(text)
    logp, _ = model.log_probs(ids[:-1, None], model.zero_state(1))  # (N-1, 1, V)
    p_correct = np.exp(np.take_along_axis(logp[:, 0], ids[1:, None], axis=1)[:, 0])
    assert p_correct.min() > 0.999, p_correct.min()
    # ... including the very first character after the zero state.
    probs, _ = model.step(vocab.encode("a"), model.zero_state(1))
    assert probs[0, vocab.encode("b")[0]] > 0.999


def test_alphabet_cycle_is_learned_and_reproduced():
    alphabet = string.ascii_lowercase
    model, vocab, _, reports = train(alphabet * 40, seq_len=26, steps=300, batch_size=4)
    assert reports[-1].train_loss < 0.01
    assert np.mean([r.train_loss for r in reports[-10:]]) < 0.01
    out = greedy(model, vocab, "a", 100)
    expected = (alphabet * 5)[1:101]
    assert out == expected


def test_bcdefghijkl_cycle_is_reproduced_not_one_repeated_char():
    cycle = "bcdefghijkl"
    model, vocab, _, _ = train(cycle * 100, seq_len=11, steps=300, batch_size=4)
    out = greedy(model, vocab, "b", 60)
    assert out == (cycle * 7)[1:61]
    assert len(set(out)) == len(cycle)


def test_56_distinct_characters_are_learned():
    chars = list((string.ascii_letters + string.digits)[:56])
    sequence = "".join(np.random.default_rng(7).permutation(chars))
    assert len(set(sequence)) == 56
    model, vocab, _, reports = train(sequence * 60, seq_len=56, steps=200, batch_size=8)
    assert reports[-1].train_loss < 0.05
    assert greedy(model, vocab, sequence[0], 56) == sequence[1:] + sequence[0]


def test_two_layers_with_dropout_also_learn():
    cycle = "the cat sat on the mat. "
    model, vocab, _, reports = train(cycle * 60, seq_len=24, steps=250, batch_size=4, num_layers=2,
                                     hidden_size=48, dropout=0.1)
    assert reports[-1].train_loss < 0.3
    assert greedy(model, vocab, "the cat", 17) == " sat on the mat. "
