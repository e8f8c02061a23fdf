"""Continuous batching (issue 7): same characters as unbatched, fairness, flags, and
generate.max_chars_per_message, through real servers and the batcher itself."""

from __future__ import annotations

import argparse
import threading
import time

import grpc
import numpy as np
import pytest

from charlstm.engine import CharLSTM, ModelConfig, Sampler, SamplingOptions
from charlstm.service import batching
from charlstm.service.batching import BatchingStepper
from charlstm.service.config import ServerConfig, add_serve_arguments
from charlstm.service.inference import Stepper
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc
from serving_helpers import Requests, ref, scrape, status_details

SEEDS = [3, 5, 7, 11, 13, 17]
PROMPTS = ["the ", "", "quick brown", "x"]


def _stream_text(stub, seed: int, *, prefix: str = "", generate: pb.StreamGenerate) -> tuple[str, list[int]]:
    """One session: open (with ``prefix``), feed "fox ", generate; the text generated and the
    size of every `chars` message."""
    requests = Requests(
        pb.StreamRequest(open=pb.StreamOpen(
            model=ref(), prefix=prefix, sampling=pb.SamplingOptions(temperature=0.9, seed=seed))),
        pb.StreamRequest(feed=pb.StreamFeed(text="fox ")),
        pb.StreamRequest(generate=generate),
    )
    text, sizes = [], []
    for reply in stub.Stream(iter(requests)):
        if reply.WhichOneof("event") == "chars":
            text.append(reply.chars.text)
            sizes.append(len(reply.chars.text))
        elif reply.WhichOneof("event") == "end":
            assert reply.end.generated == sum(sizes)
            requests.close()
    return "".join(text), sizes


def _predict(stub, seed: int) -> list[str]:
    reply = stub.Predict(pb.PredictRequest(
        model=ref(), inputs=PROMPTS, length=30,
        sampling=pb.SamplingOptions(temperature=0.8, top_k=10, seed=seed)))
    return [p.continuation for p in reply.predictions]


def _everything_at_once(stub) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Six Stream sessions and six Predict calls, all started together from threads."""
    streams: dict[int, str] = {}
    predictions: dict[int, list[str]] = {}
    start = threading.Barrier(2 * len(SEEDS))

    def stream(seed: int) -> None:
        start.wait()
        generate = pb.StreamGenerate(length=80)
        streams[seed] = _stream_text(stub, seed, prefix="the ", generate=generate)[0]

    def predict(seed: int) -> None:
        start.wait()
        predictions[seed] = _predict(stub, seed)

    threads = [threading.Thread(target=f, args=(s,)) for s in SEEDS for f in (stream, predict)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return streams, predictions


def test_batched_serving_gives_the_characters_of_unbatched_serving(start_server):
    batched = start_server(max_streams=32)
    unbatched = start_server(max_streams=32, batching="off")
    with grpc.insecure_channel(f"127.0.0.1:{batched.port}") as a, \
            grpc.insecure_channel(f"127.0.0.1:{unbatched.port}") as b:
        together = _everything_at_once(charlstm_pb2_grpc.CharLstmStub(a))
        alone = _everything_at_once(charlstm_pb2_grpc.CharLstmStub(b))
    assert together == alone
    assert all(len(text) == 80 for text in together[0].values())
    # ...and the batched server really did step several requests at once.
    samples = scrape(batched)
    assert samples["charlstm_batch_rows_sum"] / samples["charlstm_batch_rows_count"] > 1.5
    assert samples["charlstm_batch_queue_wait_seconds_count"] > 0
    assert scrape(unbatched).get("charlstm_batch_rows_count", 0) == 0


def _model() -> CharLSTM:
    return CharLSTM(ModelConfig(vocab_size=12, embedding_size=4, hidden_size=8, num_layers=2),
                    seed=0)


def test_the_batcher_serves_sessions_round_robin_when_they_exceed_the_batch():
    """Six generations and room for two rows per step: every one gets its first characters
    long before any of them can finish (no session waits for the others to end)."""
    model = _model()
    stepper = BatchingStepper(max_batch_size=2, max_wait=0.0, max_ahead=10_000)
    probs, state = Stepper().step(model, np.array([0]), model.zero_state(1))
    first: dict[int, float] = {}
    finished: dict[int, float] = {}
    generations = [
        stepper.generate(model, probs, state, [Sampler(SamplingOptions(seed=i))], 300)
        for i in range(6)
    ]

    def read(i: int) -> None:
        for n, _ in enumerate(generations[i]):
            if n == 0:
                first[i] = time.monotonic()
        finished[i] = time.monotonic()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(finished) == 6
    assert max(first.values()) < min(finished.values())
    # Each one's characters are its own: the same as drawing it alone.
    again = Stepper().generate(model, probs, state, [Sampler(SamplingOptions(seed=5))], 300)
    alone = [int(ids[0]) for ids, _ in again]
    batched = stepper.generate(model, probs, state, [Sampler(SamplingOptions(seed=5))], 300)
    assert [int(ids[0]) for ids, _ in batched] == alone


class _WakeRecorder:
    """Stands in for a generation's wake-up lock: after each wake-up, records how many of the
    reader's current group of ``chunk`` positions were still missing (0: the whole group)."""

    def __init__(self, generation):
        self.generation, self.lock = generation, generation._wake
        self.missing: list[int] = []

    def acquire(self) -> bool:
        woke = self.lock.acquire()
        g = self.generation
        rest = g.chunk - g._taken % g.chunk
        ended = bool(g.out) and g.out[-1] is batching._END
        self.missing.append(0 if ended else max(0, rest - len(g.out)))
        return woke

    def release(self) -> None:
        self.lock.release()


def _draws_alone(model, probs, state, seed: int, length: int) -> list[int]:
    alone = Stepper().generate(model, probs, state, [Sampler(SamplingOptions(seed=seed))], length)
    return [int(ids[0]) for ids, _ in alone]


def test_a_reader_of_whole_messages_is_woken_once_a_message():
    """A reader that sends groups of `chunk` characters sleeps until the rest of its group is
    drawn: every wake-up finds the group complete, so there is at most one a group (the
    queue it replaced woke the reader for every character)."""
    model = CharLSTM(ModelConfig(vocab_size=12, embedding_size=8, hidden_size=64, num_layers=2),
                     seed=0)
    stepper = BatchingStepper(max_wait=0.0)
    probs, state = Stepper().step(model, np.array([0]), model.zero_state(1))
    length, chunk = 1001, 4
    generation = stepper.generate(model, probs, state, [Sampler(SamplingOptions(seed=2))], length)
    generation.chunk = chunk
    wakes = generation._wake = _WakeRecorder(generation)
    ids = [int(drawn[0]) for drawn, _ in generation]
    assert ids == _draws_alone(model, probs, state, 2, length)
    assert wakes.missing, "the reader never had to wait: make the model slower"
    assert set(wakes.missing) == {0}
    assert len(wakes.missing) <= -(-length // chunk)


def test_a_message_longer_than_the_loop_may_run_ahead_still_completes():
    model = _model()
    stepper = BatchingStepper(max_ahead=4)
    probs, state = Stepper().step(model, np.array([0]), model.zero_state(1))
    generation = stepper.generate(model, probs, state, [Sampler(SamplingOptions(seed=3))], 50)
    generation.chunk = 16  # more than max_ahead: waiting for 16 would wait forever
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(int(i[0]) for i, _ in generation),
                              daemon=True)
    reader.start()
    reader.join(30)
    assert got == _draws_alone(model, probs, state, 3, 50)


def test_the_same_rows_stepping_again_reuse_the_stacked_state(monkeypatch):
    """Steady sessions are not re-stacked every step (concatenating 64 one-row states was a
    third of the loop's time), and each still draws its own characters."""
    concats = []
    real = batching.LSTMState.concat
    monkeypatch.setattr(batching.LSTMState, "concat",
                        staticmethod(lambda states: concats.append(len(states)) or real(states)))
    model = _model()
    stepper = BatchingStepper(max_wait=0.01)
    probs, state = Stepper().step(model, np.array([0]), model.zero_state(1))
    start = threading.Barrier(3)
    got: dict[int, list[int]] = {}

    def read(seed: int) -> None:
        start.wait()
        generation = stepper.generate(model, probs, state,
                                      [Sampler(SamplingOptions(seed=seed))], 300)
        got[seed] = [int(ids[0]) for ids, _ in generation]

    threads = [threading.Thread(target=read, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {s: got[s] for s in (1, 2, 3)} == {
        s: _draws_alone(model, probs, state, s, 300) for s in (1, 2, 3)}
    assert 0 < len(concats) < 30  # about 300 steps of two or three rows


def test_a_feed_longer_than_the_direct_limit_bypasses_the_loop():
    model = _model()
    stepper = BatchingStepper(direct_feed_chars=4)
    ids = np.arange(1, 11)[:, None] % 12  # (10, 1)
    probs, state = stepper.feed(model, ids, model.zero_state(1))
    assert stepper.loops() == 0  # ran in this thread
    expected, _ = model.feed(ids, model.zero_state(1))
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    probs, _ = stepper.feed(model, ids[:3], model.zero_state(1))
    assert stepper.loops() == 1
    np.testing.assert_allclose(probs, model.feed(ids[:3], model.zero_state(1))[0], rtol=1e-5)


def test_batching_flags_are_validated():
    parser = add_serve_arguments(argparse.ArgumentParser(), environ={"CHARLSTM_BATCHING": "OFF"})
    config = ServerConfig.from_args(parser.parse_args(
        ["--max-batch-size", "32", "--batch-max-wait-ms", "0.5"]))
    assert (config.batching, config.max_batch_size, config.batch_max_wait_ms) == ("off", 32, 0.5)
    assert ServerConfig.from_args(parser.parse_args(["--batching", "on"])).batching == "on"
    with pytest.raises(SystemExit):
        parser.parse_args(["--batching", "sometimes"])
    for bad in (dict(batching="yes"), dict(max_batch_size=0), dict(batch_max_wait_ms=-1),
                dict(batch_max_wait_ms=5000)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(**bad)


def test_max_chars_per_message_coalesces_only_what_is_ready(stub):
    plain = _stream_text(stub, 9, generate=pb.StreamGenerate(length=300))
    assert plain[1] == [1] * 300  # the default: one character per message
    coalesced = _stream_text(stub, 9, generate=pb.StreamGenerate(length=300,
                                                                 max_chars_per_message=8))
    assert coalesced[0] == plain[0]  # same characters, fewer or equal messages
    assert max(coalesced[1]) <= 8 and sum(coalesced[1]) == 300
    # A reader that falls behind gets the characters produced meanwhile together.
    requests = Requests(
        pb.StreamRequest(open=pb.StreamOpen(model=ref(), sampling=pb.SamplingOptions(seed=9))),
        pb.StreamRequest(generate=pb.StreamGenerate(length=200, max_chars_per_message=16)),
    )
    replies = stub.Stream(iter(requests))
    assert next(replies).WhichOneof("event") == "opened"
    time.sleep(0.5)  # the server generates ahead meanwhile
    sizes = []
    for reply in replies:
        if reply.WhichOneof("event") == "end":
            break
        sizes.append(len(reply.chars.text))
    requests.close()
    assert sum(sizes) == 200 and 1 < max(sizes) <= 16


@pytest.mark.parametrize("value", [0, 257, -1])
def test_max_chars_per_message_out_of_range_is_invalid_argument(stub, value):
    requests = Requests(
        pb.StreamRequest(open=pb.StreamOpen(model=ref())),
        pb.StreamRequest(generate=pb.StreamGenerate(length=5, max_chars_per_message=value)),
    )
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.Stream(iter(requests)):
            pass
    requests.close()
    code, message, fields = status_details(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "[1, 256]" in message
    assert [f for f, _ in fields] == ["generate.max_chars_per_message"]
