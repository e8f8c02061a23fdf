"""The Predict prompt cache (issue 7): the same predictions with and without it, bounded,
never confusing two model versions."""

from __future__ import annotations

import numpy as np

from charlstm.engine import CharLSTM, ModelConfig, SamplingOptions, Vocab
from charlstm.service.inference import Stepper, predict, prime
from charlstm.service.model_cache import LoadedModel
from charlstm.service.prompt_cache import PromptCache

TEXT = "the quick brown fox jumps over the lazy dog\n"


def _loaded(seed: int) -> LoadedModel:
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=16, num_layers=2)
    return LoadedModel(name="m", version=seed, model=CharLSTM(config, seed=seed), vocab=vocab,
                       metadata={})


def test_cached_prime_equals_uncached_for_any_mix_of_seen_and_new_inputs():
    loaded, cache = _loaded(1), PromptCache(entries=16)
    first = ["the ", "", "quick"]
    prime(loaded, first, Stepper(), cache)
    assert (cache.hits, cache.misses) == (0, 3)
    mixed = ["quick", "lazy dog", "", "fox"]  # two seen, two new, different lengths
    probs, state = prime(loaded, mixed, Stepper(), cache)
    assert (cache.hits, cache.misses) == (2, 5)
    want_probs, want_state = prime(loaded, mixed, Stepper())
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.h, want_state.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.c, want_state.c, rtol=1e-5, atol=1e-6)
    state.h[...] = 0  # the caller owns what it got: the cache's copy is untouched
    again, _ = prime(loaded, ["quick"], Stepper(), cache)
    np.testing.assert_allclose(again[0], want_probs[0], rtol=1e-5, atol=1e-7)


def test_predict_with_cache_draws_the_same_continuations():
    loaded, cache = _loaded(2), PromptCache()
    options = SamplingOptions(temperature=0.9, seed=4)
    plain = predict(loaded, ["the ", "o"], next_top_k=3, length=20, options=options,
                    stepper=Stepper())
    for _ in range(2):  # a miss, then a hit
        cached = predict(loaded, ["the ", "o"], next_top_k=3, length=20, options=options,
                         stepper=Stepper(), cache=cache)
        assert [r.continuation for r in cached] == [r.continuation for r in plain]
        assert [[c for c, _ in r.next] for r in cached] == [[c for c, _ in r.next] for r in plain]
    assert cache.hits == 2


def test_bounded_and_keyed_by_model():
    a, b, cache = _loaded(3), _loaded(4), PromptCache(entries=2, max_chars=5)
    prime(a, ["ab", "cd", "ef"], Stepper(), cache)
    assert len(cache) == 2  # the least recently used went
    assert cache.get(a.model, "ab") is None and cache.get(a.model, "ef") is not None
    assert cache.get(b.model, "ef") is None  # another version never sees a's states
    prime(a, ["toolong"], Stepper(), cache)
    assert cache.get(a.model, "toolong") is None
    off = PromptCache(entries=0)
    prime(a, ["ab"], Stepper(), off)
    assert len(off) == 0 and off.get(a.model, "ab") is None


def test_next_characters_only_come_from_the_cache_once_seen():
    loaded, cache = _loaded(5), PromptCache()
    inputs = ["the ", "", "lazy dog"]
    plain = predict(loaded, inputs, next_top_k=4, length=0, options=SamplingOptions(),
                    stepper=Stepper())
    for round_ in range(3):  # a miss, then hits answered from the entries' kept top characters
        cached = predict(loaded, inputs, next_top_k=4, length=0, options=SamplingOptions(),
                         stepper=Stepper(), cache=cache)
        assert [r.next for r in cached] == [r.next for r in plain]
        assert (cache.hits, cache.misses) == (3 * round_, 3)
    fewer = predict(loaded, ["the "], next_top_k=2, length=0, options=SamplingOptions(),
                    stepper=Stepper(), cache=cache)
    assert fewer[0].next == plain[0].next[:2]
