"""Cancellation storm (issue 9, item 2): 1,000 Stream calls against `charlstm serve` in a
child process, each cancelled by the client at a random moment -- right after sending
`open`, after `opened`, with a feed in flight, or part-way through a generation. Afterwards
the server is healthy, no session is left open, its threads settle and its memory after the
warm-up stays flat. (One cancellation mid-generation, in detail: tests/service/test_stream.py.)
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from helpers import healthy
from soak import ServeProcess
from serving_helpers import Requests

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

CALLS, THREADS, WARM_UP = 1_000, 16, 200
MOMENTS = ("after open sent", "after opened", "mid-feed", "mid-generation")


def cancelled_session(stub, rng: random.Random, moment: str) -> None:
    requests = Requests(pb.StreamRequest(open=pb.StreamOpen(
        model=pb.ModelRef(name="tiny"), sampling=pb.SamplingOptions(seed=rng.randrange(1000)))))
    call = stub.Stream(iter(requests), timeout=30)
    try:
        if moment == "after open sent":
            time.sleep(rng.uniform(0, 0.005))
            return
        assert next(call).WhichOneof("event") == "opened"
        if moment == "mid-feed":
            requests.send(pb.StreamRequest(feed=pb.StreamFeed(text="the quick brown " * 20)))
            time.sleep(rng.uniform(0, 0.005))
        elif moment == "mid-generation":
            requests.send(pb.StreamRequest(generate=pb.StreamGenerate(length=5_000)))
            for _ in range(rng.randrange(1, 20)):
                assert next(call).WhichOneof("event") == "chars"
    finally:
        call.cancel()
        requests.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_1000_streams_cancelled_at_random_moments(store_dir: Path) -> None:
    server = ServeProcess(store_dir)
    channel = grpc.insecure_channel(server.target)
    stub = charlstm_pb2_grpc.CharLstmStub(channel)
    done, errors, moments = [0], [], Counter()
    rss_after_warm_up: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(index)
        for _ in range(CALLS // THREADS + (index < CALLS % THREADS)):
            moment = rng.choice(MOMENTS)
            try:
                cancelled_session(stub, rng, moment)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    errors.append(f"{moment}: {err.code().name}: {err.details()}")
            with lock:
                moments[moment] += 1
                done[0] += 1
                if done[0] == WARM_UP:
                    rss_after_warm_up.append(server.status("VmRSS"))

    try:
        threads_before = server.status("Threads")
        started = time.monotonic()
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 10
        while server.metric("charlstm_active_streams") and time.monotonic() < deadline:
            time.sleep(0.05)
        rss_end = server.status("VmRSS")
        print(f"\n{sum(moments.values())} cancelled Stream calls in {elapsed:.1f} s "
              f"({dict(moments)}); VmRSS after warm-up {rss_after_warm_up[0] / 1024:.1f} MiB, "
              f"at the end {rss_end / 1024:.1f} MiB; threads {threads_before} -> "
              f"{server.status('Threads')}")
        assert sum(moments.values()) == CALLS and set(moments) == set(MOMENTS)
        assert errors == []
        assert server.metric("charlstm_active_streams") == 0
        assert rss_end < rss_after_warm_up[0] * 1.10
        assert server.status("Threads") <= threads_before + THREADS + 16
        assert healthy(channel)
        reply = stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="tiny"), inputs=["the"]),
                             timeout=10)
        assert reply.predictions[0].next
        assert server.metric("charlstm_generated_chars_total") > 0
    finally:
        channel.close()
        assert server.stop() == 0
