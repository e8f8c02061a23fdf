"""evaluate_text: nats and bits per character, batched scoring close to a sequential pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charlstm.engine import CharLSTM, ConfigError, ModelConfig, Vocab, evaluate_text
from charlstm.engine.evaluate import mean_loss


def sequential_loss(model: CharLSTM, ids: np.ndarray) -> float:
    """Reference: one stream, one character at a time."""
    state = model.zero_state(1)
    total = 0.0
    for t in range(len(ids) - 1):
        probs, state = model.step(ids[t:t + 1], state)
        total -= math.log(probs[0, ids[t + 1]])
    return total / (len(ids) - 1)


def test_single_stream_equals_the_sequential_definition():
    text = "abracadabra, alakazam! " * 5
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=2,
                                 dtype="float64"), seed=1)
    result = evaluate_text(model, vocab, text, streams=1)
    assert result.loss == pytest.approx(sequential_loss(model, vocab.encode(text)), abs=1e-10)
    assert result.bits_per_char == pytest.approx(result.loss / math.log(2))
    assert result.characters == len(text) - 1
    assert result.unknown_characters == 0


def test_many_streams_with_burn_in_is_close_to_sequential(rng):
    # A model with short memory (random weights): burn-in context makes the parallel streams
    # agree with the sequential pass to high accuracy; the first stream is exact.
    vocab = Vocab("abcdefgh")
    ids = rng.integers(1, vocab.size, 3000)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=1,
                                 dtype="float64"), seed=1)
    exact = mean_loss(model, ids, streams=1)
    for streams in (2, 7, 64):
        assert mean_loss(model, ids, streams=streams) == pytest.approx(exact, rel=1e-6)
    # Sharing the streams among threads changes nothing but rounding.
    assert mean_loss(model, ids, streams=64, workers=3) == pytest.approx(mean_loss(model, ids, streams=64, workers=1), rel=1e-12)


def test_unknown_characters_are_counted_and_short_texts_refused():
    vocab = Vocab.from_text("abc")
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=2, hidden_size=3, num_layers=1))
    result = evaluate_text(model, vocab, "abzzc")
    assert result.unknown_characters == 2 and result.characters == 4
    assert np.isfinite(result.loss)
    with pytest.raises(ConfigError) as err:
        evaluate_text(model, vocab, "a")
    assert err.value.field == "text"
    assert math.log(vocab.size) * 0.5 < evaluate_text(model, vocab, "abcabcabc").loss < math.log(vocab.size) * 2
