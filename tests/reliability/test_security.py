"""Security (issue 9, item 5) beyond what tests/service and tests/client already show.

Already tested elsewhere, not repeated: the token on Predict/Stream/ListModels/reflection with
malformed and wrong values (tests/service/test_server.py::test_token_guards_every_rpc_but_health),
TLS (test_server.py::test_tls, tests/client/test_client_security.py), ``../../etc`` and ``a b``
as model names, and the limits on Predict inputs, input characters, generate length, open
streams and message size (tests/service/test_errors.py), corpus size and invalid UTF-8 on
UploadCorpus (tests/service/test_train_rpcs.py::test_bad_uploads_and_unknown_jobs).

Here: the token on *every* method of every service the server offers (read through
reflection, so a new RPC or service is covered without editing this file), path-traversal and
lookalike names on every RPC that takes a model or label name, and the limits not covered yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from helpers import Method, call, cancel_all_jobs, healthy, serve_copy
from serving_helpers import Requests, ref, status_details

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

TOKEN = "reliability-token"
GOOD = [("authorization", f"Bearer {TOKEN}")]
HEALTH = "grpc.health.v1.Health"
IA, RE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def guarded(model_template: Path, tmp_path_factory) -> Iterator[grpc.Channel]:
    running = serve_copy(model_template, tmp_path_factory.mktemp("token"), token=TOKEN)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield channel
    finally:
        channel.close()
        running.stop(0.5)


def offered_methods(channel: grpc.Channel) -> list[Method]:
    """Every method of every service the server lists through reflection (with the token)."""
    class Authorized(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        def _with_token(self, details):
            return details._replace(metadata=list(details.metadata or []) + GOOD)

        def intercept_unary_unary(self, continuation, details, request):
            return continuation(self._with_token(details), request)

        def intercept_stream_stream(self, continuation, details, requests):
            return continuation(self._with_token(details), requests)

    database = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(channel, Authorized()))
    pool = DescriptorPool(database)
    methods = []
    for service_name in database.get_services():
        service = pool.FindServiceByName(service_name)
        methods += [Method(m.name, f"/{service.full_name}/{m.name}", m.client_streaming,
                           m.server_streaming, m.input_type) for m in service.methods]
    return methods


def test_every_method_but_health_refuses_a_missing_or_wrong_token(guarded: grpc.Channel) -> None:
    methods = offered_methods(guarded)
    names = {m.path for m in methods}
    # The listing is complete: all 13 CharLstm RPCs, reflection and health.
    charlstm = pb.DESCRIPTOR.services_by_name["CharLstm"].methods
    assert len(charlstm) == 13 and {f"/charlstm.v1.CharLstm/{m.name}" for m in charlstm} <= names
    assert any("ServerReflection" in n for n in names) and any(HEALTH in n for n in names)
    refused = {}
    for method in methods:
        # b"" is a valid empty message of any type; the token check comes before the handler.
        # Health.Watch streams until the deadline: a short one, and any answer but
        # UNAUTHENTICATED, is what health should give.
        timeout = 1.0 if method.path.startswith(f"/{HEALTH}/") else 10.0
        for metadata in (None, [("authorization", "Bearer wrong")]):
            code = call(guarded, method, [b""], metadata=metadata, timeout=timeout)
            refused[method.path, bool(metadata)] = code
    for (path, _), code in refused.items():
        if path.startswith(f"/{HEALTH}/"):
            assert code != grpc.StatusCode.UNAUTHENTICATED, path
        else:
            assert code == grpc.StatusCode.UNAUTHENTICATED, (path, code)
    assert healthy(guarded)


# -- names -------------------------------------------------------------------------------------

BAD_NAMES = ["..", "../x", "a/b", "a\\b", "a\x00b", ".hidden", "a" * 65, "tіny", "ｔｉｎｙ",
             "tiny\u200b", "tiny/../other", "/etc/passwd", "-x", "CON/x"]



def stream_open(name: str) -> list[pb.StreamRequest]:
    return [pb.StreamRequest(open=pb.StreamOpen(model=pb.ModelRef(name=name)))]


# (rpc, field named in the error, requests for a bad name) for every RPC that takes a name.
NAME_TAKERS: list[tuple[str, str, Callable[[str], list]]] = [
    ("Train", "model", lambda n: [pb.TrainRequest(model=n, text="abcdefgh" * 100)]),
    ("ListJobs", "model", lambda n: [pb.ListJobsRequest(model=n)]),
    ("Predict", "model.name", lambda n: [pb.PredictRequest(model=pb.ModelRef(name=n), inputs=["a"])]),
    ("Predict", "model.label", lambda n: [pb.PredictRequest(model=pb.ModelRef(name="tiny", label=n),
                                                          inputs=["a"])]),
    ("Stream", "open.model.name", stream_open),
    ("GetModel", "name", lambda n: [pb.GetModelRequest(name=n)]),
    ("DeleteModel", "name", lambda n: [pb.DeleteModelRequest(name=n)]),
    ("SetLabel", "name", lambda n: [pb.SetLabelRequest(name=n, label="x", version=1)]),
    ("SetLabel", "label", lambda n: [pb.SetLabelRequest(name="tiny", label=n, version=1)]),
    ("Evaluate", "model.name", lambda n: [pb.EvaluateRequest(model=pb.ModelRef(name=n), text="abc")]),
    ("Evaluate", "model.label", lambda n: [pb.EvaluateRequest(
        model=pb.ModelRef(name="tiny", label=n), text="abc")]),
]


def test_every_name_field_is_covered() -> None:
    """A new RPC with a name field must be added to NAME_TAKERS."""
    def has_name(descriptor, depth=0) -> bool:
        return depth < 3 and any(
            f.name in ("name", "model", "label") and f.type == f.TYPE_STRING
            or f.message_type is not None and has_name(f.message_type, depth + 1)
            for f in descriptor.fields)

    takers = {m.name for m in pb.DESCRIPTOR.services_by_name["CharLstm"].methods
              if has_name(m.input_type)}
    assert takers == {rpc for rpc, _, _ in NAME_TAKERS}


@pytest.mark.parametrize("rpc,field,build", NAME_TAKERS, ids=[f"{r}-{f}" for r, f, _ in NAME_TAKERS])
def test_traversal_and_lookalike_names_are_invalid_argument(stub, store_dir, rpc, field, build):
    before = sorted(p.relative_to(store_dir) for p in store_dir.rglob("*"))
    for name in BAD_NAMES:
        requests = build(name)
        method = getattr(stub, rpc)
        with pytest.raises(grpc.RpcError) as err:
            if rpc == "Stream":
                list(method(iter(requests), timeout=10))
            elif rpc == "Train":
                list(method(requests[0], timeout=10))
            else:
                method(requests[0], timeout=10)
        code, message, fields = status_details(err.value)
        assert (code, [f for f, _ in fields]) == (IA, [field]), (rpc, name, code, message)
    # Nothing was created, moved or removed anywhere in the store.
    assert sorted(p.relative_to(store_dir) for p in store_dir.rglob("*")) == before


# -- limits not covered in tests/service/test_errors.py ----------------------------------------


def stream_status(stub, *requests) -> tuple:
    it = Requests(*requests)
    call_ = stub.Stream(iter(it), timeout=10)
    try:
        for _ in call_:
            pass
    except grpc.RpcError as err:
        return status_details(err)
    finally:
        it.close()
    return grpc.StatusCode.OK, "", []


def test_stream_text_past_max_input_chars(start_server) -> None:
    running = start_server(max_input_chars=100)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        code, message, fields = stream_status(
            stub, pb.StreamRequest(open=pb.StreamOpen(model=ref(), prefix="a" * 101)))
        assert (code, [f for f, _ in fields]) == (RE, ["open.prefix"]) and "--max-input-chars" in message
        code, message, fields = stream_status(
            stub, pb.StreamRequest(open=pb.StreamOpen(model=ref())),
            pb.StreamRequest(feed=pb.StreamFeed(text="a" * 100)),  # at the limit: fine
            pb.StreamRequest(feed=pb.StreamFeed(text="a" * 101)))
        assert (code, [f for f, _ in fields]) == (RE, ["feed.text"]) and "--max-input-chars" in message


def test_inline_corpus_and_evaluate_text_past_their_limits(start_server) -> None:
    running = start_server(max_corpus_bytes=2_000, max_message_bytes=64 * 1024)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Train(pb.TrainRequest(model="big", text="abcdefgh" * 300), timeout=10))
        assert err.value.code() == RE, err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # past the message limit: refused by grpc
            stub.Evaluate(pb.EvaluateRequest(model=ref(), text="a" * 70_000), timeout=10)
        assert err.value.code() == RE
        with pytest.raises(grpc.RpcError) as err:  # a chunk past the message limit
            stub.UploadCorpus(iter([pb.CorpusChunk(data=b"a" * 70_000)]), timeout=10)
        assert err.value.code() == RE
        assert stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []


def test_queued_jobs_past_the_limit(start_server) -> None:
    running = start_server(max_jobs=1, max_queued_jobs=2)  # 2 keeps the test small
    text = "the quick brown fox jumps over the lazy dog.\n" * 40
    hyper = pb.Hyperparameters(embedding_size=4, hidden_size=8, num_layers=1, seq_len=8,
                               batch_size=2, steps=1_000_000, checkpoint_every=1_000_000)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        try:
            for i in range(3):  # one runs (or waits for its worker), two queue
                first = next(stub.Train(pb.TrainRequest(model=f"q{i}", text=text,
                                                        hyperparameters=hyper), timeout=10))
                assert first.HasField("accepted")
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Train(pb.TrainRequest(model="q3", text=text, hyperparameters=hyper),
                                timeout=10))
            assert err.value.code() == RE and "queued" in err.value.details()
        finally:
            cancel_all_jobs(stub)
