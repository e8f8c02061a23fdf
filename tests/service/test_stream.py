"""Stream sessions through a real server (issue 4, item 4): feed, predict, generate one
character per message, reset, feed again; cancellation stops the server's work; idle sessions
end with a clear status."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from serving_helpers import (
    Requests,
    active_streams,
    generated_chars,
    ref,
    scrape,
    wait_for,
)
from test_predict import engine_next, load_engine_model

from charlstm.engine import SamplingOptions, generate
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc


def open_msg(**fields) -> pb.StreamRequest:
    fields.setdefault("model", ref())
    return pb.StreamRequest(open=pb.StreamOpen(**fields))


def feed(text: str) -> pb.StreamRequest:
    return pb.StreamRequest(feed=pb.StreamFeed(text=text))


def gen(length: int, **sampling) -> pb.StreamRequest:
    if sampling:
        return pb.StreamRequest(generate=pb.StreamGenerate(
            length=length, sampling=pb.SamplingOptions(**sampling)))
    return pb.StreamRequest(generate=pb.StreamGenerate(length=length))


RESET = pb.StreamRequest(reset=pb.StreamReset())


def read_generation(responses) -> tuple[str, list[float], int, int]:
    """Read `chars` messages up to `end`: (text, probabilities, messages, end.generated)."""
    text, probs, messages = [], [], 0
    for response in responses:
        kind = response.WhichOneof("event")
        if kind == "end":
            return "".join(text), probs, messages, response.end.generated
        assert kind == "chars", kind
        messages += 1
        text.append(response.chars.text)
        probs.extend(response.chars.probabilities)
    raise AssertionError("the stream ended before the generation did")


def test_a_whole_session(stub, server, store_dir):
    model, vocab = load_engine_model(store_dir, version=2)
    requests = Requests(open_msg(prefix="the quick", next_top_k=3,
                                 sampling=pb.SamplingOptions(seed=5, temperature=0.8)))
    responses = stub.Stream(iter(requests))

    opened = next(responses).opened
    assert (opened.model, opened.version, opened.vocab_size) == ("tiny", 2, vocab.size)
    assert opened.session_id
    first = next(responses).prediction  # the prefix is answered like a feed
    assert first.position == len("the quick")
    expected = engine_next(model, vocab, "the quick", 3)
    assert [c.char for c in first.next] == [c for c, _ in expected]

    requests.send(feed(" brown "))
    fed = next(responses).prediction
    assert fed.position == len("the quick brown ")
    expected = engine_next(model, vocab, "the quick brown ", 3)
    assert [c.char for c in fed.next] == [c for c, _ in expected]
    np.testing.assert_allclose([c.probability for c in fed.next], [p for _, p in expected],
                               rtol=1e-5)

    requests.send(gen(200))
    text, probs, messages, generated = read_generation(responses)
    # One message per character, as each is drawn; and exactly what the engine draws from
    # the same state with the same seed.
    assert (len(text), len(probs), messages, generated) == (200, 200, 200, 200)
    reference = list(generate(model, vocab, "the quick brown ", 200,
                              SamplingOptions(seed=5, temperature=0.8)))
    assert text == "".join(c for c, _ in reference)

    requests.send(RESET)
    assert next(responses).prediction.position == 0
    requests.send(feed("lazy d"))
    after_reset = next(responses).prediction
    assert after_reset.position == len("lazy d")
    expected = engine_next(model, vocab, "lazy d", 3)
    assert [c.char for c in after_reset.next] == [c for c, _ in expected]

    requests.close()
    assert list(responses) == []  # the server ends the call cleanly after a half-close
    assert responses.code() == grpc.StatusCode.OK
    wait_for(lambda: active_streams(server) == 0, what="the session to close")


def test_generation_feeds_each_character_back(stub, store_dir):
    """Generating N then feeding continues from the generated text: position counts both."""
    model, vocab = load_engine_model(store_dir, version=2)
    requests = Requests(open_msg(next_top_k=2), feed("the "), gen(10, temperature=0))
    responses = stub.Stream(iter(requests))
    next(responses), next(responses)
    text, _, _, _ = read_generation(responses)
    requests.send(feed("!"))
    prediction = next(responses).prediction
    assert prediction.position == len("the ") + 10 + 1
    expected = engine_next(model, vocab, "the " + text + "!", 2)
    assert [c.char for c in prediction.next] == [c for c, _ in expected]
    requests.close()


def test_chars_per_message_groups_characters(stub):
    requests = Requests(open_msg(chars_per_message=16), gen(40, seed=1))
    requests.close()  # everything asked before the half-close is still answered
    responses = list(stub.Stream(iter(requests)))
    chars = [r.chars.text for r in responses if r.WhichOneof("event") == "chars"]
    assert [len(c) for c in chars] == [16, 16, 8]
    assert responses[-1].end.generated == 40


def test_generate_override_is_greedy_and_repeatable(stub):
    def greedy_after(prefix: str) -> str:
        requests = Requests(open_msg(prefix=prefix, sampling=pb.SamplingOptions(seed=1)),
                            gen(30, temperature=0))
        requests.close()
        return "".join(r.chars.text for r in stub.Stream(iter(requests))
                       if r.WhichOneof("event") == "chars")

    first = greedy_after("over the ")
    assert len(first) == 30 and first == greedy_after("over the ")


def test_cancelling_mid_generation_stops_the_server_work(start_server):
    running = start_server(max_generate_chars=100_000)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        requests = Requests(open_msg(), gen(100_000))
        call = stub.Stream(iter(requests))
        assert call.next().WhichOneof("event") == "opened"
        for _ in range(5):
            assert call.next().WhichOneof("event") == "chars"
        assert active_streams(running) == 1
        call.cancel()
        # The session is gone on the server, and it stops producing characters.
        wait_for(lambda: active_streams(running) == 0, what="active_streams back to 0")
        settled = generated_chars(running)
        time.sleep(0.3)
        assert generated_chars(running) == settled
        assert settled < 100_000
        # The server counted a cancelled call, not a failure.
        samples = scrape(running)
        assert samples.get(
            'charlstm_rpcs_total{code="CANCELLED",method="/charlstm.v1.CharLstm/Stream"}') == 1


def test_idle_session_ends_with_deadline_exceeded(start_server):
    running = start_server(idle_timeout=0.4)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        requests = Requests(open_msg(), feed("the "))
        responses = stub.Stream(iter(requests))
        assert next(responses).WhichOneof("event") == "opened"
        assert next(responses).WhichOneof("event") == "prediction"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            next(responses)
        assert time.monotonic() - started >= 0.3
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in err.value.details() and "--idle-timeout" in err.value.details()
        wait_for(lambda: active_streams(running) == 0, what="active_streams back to 0")
        assert scrape(running)["charlstm_stream_sessions_expired_total"] == 1
        requests.close()

        # A call that never sends `open` is not kept forever either.
        silent = Requests()
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Stream(iter(silent)))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "open" in err.value.details()
        silent.close()


def test_many_sessions_are_independent(stub):
    """Two sessions with the same seed, interleaved, produce the same text as one alone."""
    a = Requests(open_msg(prefix="the ", sampling=pb.SamplingOptions(seed=3)))
    b = Requests(open_msg(prefix="lazy ", sampling=pb.SamplingOptions(seed=3)))
    ra, rb = stub.Stream(iter(a)), stub.Stream(iter(b))
    for r in (ra, rb):
        next(r), next(r)
    a.send(gen(20)), b.send(gen(20))
    text_a = read_generation(ra)[0]
    text_b = read_generation(rb)[0]
    c = Requests(open_msg(prefix="the ", sampling=pb.SamplingOptions(seed=3)), gen(20))
    c.close()
    alone = "".join(r.chars.text for r in stub.Stream(iter(c)) if r.WhichOneof("event") == "chars")
    assert text_a == alone and len(text_b) == 20
    a.close(), b.close()
    list(ra), list(rb)


def test_generated_chars_counts_every_character_sent(server, stub):
    """The counter is updated in steps (its lock costs per character); at the end of each
    generation it holds every character sent, one per message or coalesced."""
    before = generated_chars(server)
    coalesced = pb.StreamRequest(generate=pb.StreamGenerate(length=101, max_chars_per_message=7))
    requests = Requests(open_msg(), gen(150), coalesced)
    responses = stub.Stream(iter(requests))
    next(responses)  # opened
    text, _, messages, _ = read_generation(responses)
    assert len(text) == 150 and messages == 150
    text, _, messages, _ = read_generation(responses)
    assert len(text) == 101 and messages <= 101
    requests.close()
    wait_for(lambda: generated_chars(server) - before == 251, what="251 characters counted")
