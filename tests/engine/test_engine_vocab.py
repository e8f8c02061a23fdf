"""Vocab: ids, unknown characters, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine import ConfigError, Vocab


def test_from_text_sorts_distinct_code_points_and_reserves_id_0():
    vocab = Vocab.from_text("hello, world")
    assert vocab.chars == " ,dehlorw"
    assert vocab.size == len(vocab) == 10
    assert Vocab.UNK_ID == 0
    ids = vocab.encode("hello")
    assert ids.dtype == np.int64 and ids.tolist() == [5, 4, 6, 6, 7]
    assert ids.min() >= 1


def test_round_trip_including_non_ascii_and_astral_characters():
    text = "Ça va? 日本語 🙂 ünïcödé\n\ttab"
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    again = Vocab(vocab.chars)  # the serialised form rebuilds the same mapping
    assert again == vocab
    np.testing.assert_array_equal(again.encode(text), vocab.encode(text))


def test_unknown_characters_map_to_unk_and_never_raise():
    vocab = Vocab.from_text("abc")
    ids = vocab.encode("abxzc\ud800é")  # includes a lone surrogate
    assert ids.tolist() == [1, 2, 0, 0, 3, 0, 0]
    assert vocab.count_unknown("abxzc\ud800é") == 4
    assert vocab.decode(ids) == "ab" + Vocab.UNK_CHAR * 2 + "c" + Vocab.UNK_CHAR * 2
    assert vocab.encode("").shape == (0,)
    assert vocab.decode([]) == ""


def test_explicit_order_is_kept():
    vocab = Vocab("zyx")
    assert vocab.encode("xyz").tolist() == [3, 2, 1]
    assert vocab.decode(np.array([1, 2, 3])) == "zyx"


def test_bad_vocab_input():
    with pytest.raises(ConfigError) as err:
        Vocab("abca")
    assert err.value.field == "chars"
    vocab = Vocab("ab")
    with pytest.raises(ConfigError) as err:
        vocab.decode([0, 3])
    assert err.value.field == "ids" and "[0, 2]" in str(err.value)
    with pytest.raises(ConfigError):
        vocab.decode([-1])
    with pytest.raises(ConfigError):
        vocab.encode(b"bytes")  # type: ignore[arg-type]


def test_encoding_a_large_text_is_fast_and_exact(rng):
    chars = "".join(chr(c) for c in range(32, 127))
    text = "".join(rng.choice(list(chars), 200_000))
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    lookup = {c: i + 1 for i, c in enumerate(vocab.chars)}
    assert ids[:1000].tolist() == [lookup[c] for c in text[:1000]]
    assert vocab.decode(ids) == text
