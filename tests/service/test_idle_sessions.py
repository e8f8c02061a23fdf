"""What an idle Stream session costs the server, and how its wait ends.

An idle session is the gRPC pool thread serving it, blocked in the request iterator: no
second thread per session (issue 7, target 6). Its wait still ends with a status that says
why: the idle timeout, the drain, and a stop with no grace period at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest
from serving_helpers import Requests, active_streams, ref, wait_for

from charlstm.service.call_ending import end_call
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc


def _open() -> pb.StreamRequest:
    return pb.StreamRequest(open=pb.StreamOpen(model=ref()))


def test_idle_sessions_hold_one_thread_each(start_server):
    running = start_server(max_streams=40)
    sessions = 30

    async def hold() -> int:
        # asyncio client: no client thread per call, so the process's thread count moves
        # with the server's threads only.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = charlstm_pb2_grpc.CharLstmStub(channel)
            release = asyncio.Event()

            async def requests():
                yield _open()
                await release.wait()

            warm = stub.Stream(requests())  # starts the reaper and the pool's first threads
            assert (await warm.read()).WhichOneof("event") == "opened"
            before = set(threading.enumerate())
            calls = [stub.Stream(requests()) for _ in range(sessions)]
            replies = await asyncio.gather(*(c.read() for c in calls))
            assert all(r.WhichOneof("event") == "opened" for r in replies)
            await asyncio.sleep(0.2)
            added = [t.name for t in set(threading.enumerate()) - before]
            release.set()
            for c in calls + [warm]:
                c.cancel()
            return added

    added = asyncio.run(hold())
    # One pool thread per session, nothing else (a reader thread each would double it).
    pool = [name for name in added if name.startswith("charlstm-rpc")]
    others = [name for name in added if not name.startswith("charlstm-rpc")]
    assert len(pool) <= sessions and len(others) <= 1, added
    wait_for(lambda: active_streams(running) == 0, what="sessions closed")


def test_stop_without_grace_still_tells_an_idle_session_why(start_server):
    running = start_server()
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        requests = Requests(_open())
        call = charlstm_pb2_grpc.CharLstmStub(channel).Stream(iter(requests))
        assert next(call).WhichOneof("event") == "opened"
        wait_for(lambda: active_streams(running) == 1, what="the session open")
        started = time.monotonic()
        running.stop(0)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.details()
        assert time.monotonic() - started < 1.0
        requests.close()


def test_a_session_that_generated_then_idles_expires(start_server):
    running = start_server(idle_timeout=0.5)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        requests = Requests(_open(), pb.StreamRequest(generate=pb.StreamGenerate(length=30)))
        call = charlstm_pb2_grpc.CharLstmStub(channel).Stream(iter(requests))
        events = []
        while not events or events[-1] != "end":
            events.append(next(call).WhichOneof("event"))
        ended = time.monotonic()
        # Still open well within the timeout: a feed is answered.
        requests.send(pb.StreamRequest(feed=pb.StreamFeed(text="a")))
        assert next(call).WhichOneof("event") == "prediction"
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in err.value.details()
        assert 0.4 <= time.monotonic() - ended < 5.0
        requests.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
def test_end_call_from_another_thread_sends_the_status(code):
    served = {}

    def handler(requests, context):
        yield b"hello"
        threading.Timer(0.1, end_call, args=(context, code, "ended from outside")).start()
        # The blocked iterator ends: RpcError, or StopIteration when gRPC saw the empty read
        # before the cancellation (the registry keeps its own record of why it ended a wait).
        try:
            for _ in requests:
                pass
        except grpc.RpcError:
            pass
        served["ended"] = True

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {
        "S": grpc.stream_stream_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            requests = Requests(b"x")
            call = channel.stream_stream("/t.T/S")(iter(requests))
            assert next(call) == b"hello"
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == code
            assert err.value.details() == "ended from outside"
            # The handler's wait ended too (the client has not half-closed).
            wait_for(lambda: served.get("ended"), what="the handler's wait to end")
            requests.close()
    finally:
        server.stop(0)
