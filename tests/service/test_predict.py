"""Predict through a real server: batched next-character distributions and continuations
(issue 4, item 3), checked against the engine run directly on the same stored weights."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import ref, train_tiny, wait_out_local_refresh

from charlstm.engine import CharLSTM, ModelConfig, SamplingOptions, Vocab, generate, top_chars
from charlstm.service import converters
from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb

INPUTS = ["the quick brown ", "", "lazy d", "x", "over the lazy dog.\nthe qu"]


def load_engine_model(store_dir, name="tiny", version=None) -> tuple[CharLSTM, Vocab]:
    ckpt = LocalStore(store_dir).load(name, version)
    config = ModelConfig.from_dict(ckpt.metadata["model_config"])
    return CharLSTM.from_state_dict(config, ckpt.tensors), Vocab(ckpt.metadata["vocab"])


def engine_next(model: CharLSTM, vocab: Vocab, text: str, k: int) -> list[tuple[str, float]]:
    ids = vocab.encode(text) if text else np.array([Vocab.UNK_ID])
    probs, _ = model.feed(ids[:, None], model.zero_state(1))
    return top_chars(probs[0], vocab, k)


def test_batched_next_chars_match_the_engine(stub, store_dir):
    reply = stub.Predict(pb.PredictRequest(model=ref("tiny"), inputs=INPUTS, next_top_k=4))
    assert (reply.model, reply.version) == ("tiny", 2)  # latest
    assert [p.input for p in reply.predictions] == INPUTS
    model, vocab = load_engine_model(store_dir, version=2)
    for text, prediction in zip(INPUTS, reply.predictions):
        expected = engine_next(model, vocab, text, 4)
        assert [c.char for c in prediction.next] == [c for c, _ in expected]
        np.testing.assert_allclose([c.probability for c in prediction.next],
                                   [p for _, p in expected], rtol=1e-5, atol=1e-7)
        probs = [c.probability for c in prediction.next]
        assert probs == sorted(probs, reverse=True)
        assert not prediction.continuation


def test_batching_does_not_change_answers(stub):
    together = stub.Predict(pb.PredictRequest(model=ref(), inputs=INPUTS, next_top_k=6))
    for text, batched in zip(INPUTS, together.predictions):
        alone = stub.Predict(pb.PredictRequest(model=ref(), inputs=[text], next_top_k=6))
        assert [c.char for c in alone.predictions[0].next] == [c.char for c in batched.next]
        np.testing.assert_allclose([c.probability for c in alone.predictions[0].next],
                                   [c.probability for c in batched.next], rtol=1e-6)


def test_default_top_k_is_five_and_off_with_a_continuation(stub):
    plain = stub.Predict(pb.PredictRequest(model=ref(), inputs=["the "]))
    assert len(plain.predictions[0].next) == 5
    cont = stub.Predict(pb.PredictRequest(model=ref(), inputs=["the "], length=3))
    assert len(cont.predictions[0].next) == 0 and len(cont.predictions[0].continuation) == 3


def test_same_seed_same_continuation_and_it_matches_engine_generate(stub, store_dir):
    sampling = pb.SamplingOptions(temperature=1.5, top_k=10, top_p=0.95, seed=1234)
    request = pb.PredictRequest(model=ref(), inputs=INPUTS, length=40, sampling=sampling)
    first = stub.Predict(request)
    second = stub.Predict(request)
    assert [p.continuation for p in first.predictions] == [p.continuation for p in second.predictions]
    model, vocab = load_engine_model(store_dir, version=2)
    options = SamplingOptions(temperature=1.5, top_k=10, top_p=0.95, seed=1234)
    for text, prediction in zip(INPUTS, first.predictions):
        expected = list(generate(model, vocab, text, 40, options))
        assert prediction.continuation == "".join(c for c, _ in expected)
        np.testing.assert_allclose(prediction.continuation_probabilities,
                                   [p for _, p in expected], rtol=1e-5)
        assert all(0.0 < p <= 1.0 for p in prediction.continuation_probabilities)
    other = stub.Predict(pb.PredictRequest(
        model=ref(), inputs=INPUTS, length=40,
        sampling=pb.SamplingOptions(temperature=1.5, top_k=10, top_p=0.95, seed=99)))
    assert [p.continuation for p in other.predictions] != [p.continuation for p in first.predictions]


def test_greedy_continuation_follows_the_training_text(stub):
    reply = stub.Predict(pb.PredictRequest(
        model=ref(label="stable"), inputs=["the quick brown fox jumps over the l"], length=8,
        sampling=pb.SamplingOptions(temperature=0)))
    assert reply.version == 1
    # The best-trained model has learnt the one sentence it saw 80 times.
    assert reply.predictions[0].continuation.startswith("azy")


@pytest.mark.parametrize("selector,expected", [({"version": 1}, 1), ({"label": "stable"}, 1),
                                               ({"label": "latest"}, 2), ({}, 2)])
def test_model_ref_selects_the_version(stub, selector, expected):
    reply = stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="tiny", **selector), inputs=["a"]))
    assert reply.version == expected


def test_a_new_version_is_served_without_a_restart(server, stub, store_dir):
    assert stub.Predict(pb.PredictRequest(model=ref(), inputs=["t"])).version == 2
    model, _, meta = train_tiny(steps=5, seed=7)
    assert LocalStore(store_dir).save("tiny", model.state_dict(), meta) == 3
    wait_out_local_refresh(server)  # five training steps can take less than its 20 ms
    assert stub.Predict(pb.PredictRequest(model=ref(), inputs=["t"])).version == 3


def test_unset_sampling_options_are_the_checked_defaults():
    # An empty message takes a shortcut; setting a field to its default takes the checks.
    assert converters.sampling_options(pb.SamplingOptions()) == converters.sampling_options(
        pb.SamplingOptions(temperature=1.0, top_p=1.0))
