"""Every status code the serving RPCs use, from real calls (issue 4, item 7), with messages a
person can act on and google.rpc.BadRequest details naming the field."""

from __future__ import annotations

import grpc
import pytest
from serving_helpers import Requests, ref, status_details

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
RE = grpc.StatusCode.RESOURCE_EXHAUSTED
FP = grpc.StatusCode.FAILED_PRECONDITION

S = pb.SamplingOptions
P = pb.PredictRequest

# (rpc, request, code, field named in the BadRequest detail or None, words in the message)
UNARY_CASES = [
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(temperature=-1)), IA,
     "sampling.temperature", "[0, 100]"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(temperature=float("nan"))), IA,
     "sampling.temperature", "temperature"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(temperature=101)), IA,
     "sampling.temperature", "101"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(top_p=0)), IA, "sampling.top_p", "(0, 1]"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(top_p=1.5)), IA, "sampling.top_p", "1.5"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(top_k=-2)), IA, "sampling.top_k", ">= 0"),
    ("Predict", P(model=ref(), inputs=["a"], sampling=S(seed=-1)), IA, "sampling.seed", "seed"),
    ("Predict", P(model=ref(), inputs=[]), IA, "inputs", "at least one"),
    ("Predict", P(model=ref(), inputs=["a"], length=-1), IA, "length", ">= 0"),
    ("Predict", P(model=ref(), inputs=["a"], next_top_k=-1), IA, "next_top_k", "vocabulary"),
    ("Predict", P(model=ref(), inputs=["a"], next_top_k=10_000), IA, "next_top_k", "10000"),
    ("Predict", P(model=pb.ModelRef(name="../../etc"), inputs=["a"]), IA, "model.name", "allowed"),
    ("Predict", P(model=pb.ModelRef(name=""), inputs=["a"]), IA, "model.name", "empty"),
    ("Predict", P(model=pb.ModelRef(name="tiny", version=0), inputs=["a"]), IA, "model.version",
     ">= 1"),
    ("Predict", P(model=pb.ModelRef(name="tiny", label="no/such"), inputs=["a"]), IA,
     "model.label", "label"),
    ("Predict", P(model=ref("nosuch"), inputs=["a"]), NF, None, "nosuch"),
    ("Predict", P(model=ref(version=9), inputs=["a"]), NF, None, "9"),
    ("Predict", P(model=ref(label="missing"), inputs=["a"]), NF, None, "missing"),
    ("Predict", P(model=ref(), inputs=["a"], length=50_001), RE, "length", "--max-generate-chars"),
    ("Predict", P(model=ref(), inputs=["a"] * 65), RE, "inputs", "--max-inputs"),
    ("Predict", P(model=ref(), inputs=["a" * 1_000_001]), RE, "inputs", "--max-input-chars"),
    ("GetModel", pb.GetModelRequest(name="nosuch"), NF, None, "nosuch"),
    ("GetModel", pb.GetModelRequest(name="a b"), IA, "name", "allowed"),
    ("DeleteModel", pb.DeleteModelRequest(name="tiny", version=-1), IA, "version", ">= 1"),
    ("DeleteModel", pb.DeleteModelRequest(name="tiny", version=7), NF, None, "7"),
    ("DeleteModel", pb.DeleteModelRequest(name="tiny", version=1), FP, None, "stable"),
    ("SetLabel", pb.SetLabelRequest(name="tiny", label="latest", version=1), IA, "label",
     "reserved"),
    ("SetLabel", pb.SetLabelRequest(name="tiny", label="x", version=-3), IA, "version", "0"),
    ("SetLabel", pb.SetLabelRequest(name="tiny", label="x", version=0), NF, None, "x"),
    ("SetLabel", pb.SetLabelRequest(name="tiny", label="x", version=5), NF, None, "5"),
    ("Evaluate", pb.EvaluateRequest(model=ref(), text="a"), IA, "text", "at least 2"),
    ("Evaluate", pb.EvaluateRequest(model=ref()), IA, "text", "corpus_id"),
    ("Evaluate", pb.EvaluateRequest(model=ref(), corpus_id="f" * 64), NF, "corpus_id",
     "UploadCorpus"),
    ("Evaluate", pb.EvaluateRequest(model=ref(), corpus_id="../x"), IA, "corpus_id", "hex"),
]


@pytest.fixture
def limited(start_server):
    running = start_server(max_generate_chars=50_000, max_inputs=64, max_input_chars=1_000_000,
                           max_streams=2)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield running, charlstm_pb2_grpc.CharLstmStub(channel)


@pytest.mark.parametrize("rpc,request_,code,field,words", UNARY_CASES,
                         ids=[f"{c[0]}-{c[2].name}-{i}" for i, c in enumerate(UNARY_CASES)])
def test_unary_errors(limited, rpc, request_, code, field, words):
    _, stub = limited
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(request_)
    got_code, message, violations = status_details(err.value)
    assert got_code == code, message
    assert words in message
    if field is None:
        assert violations == []
    else:
        assert [f for f, _ in violations] == [field]
        assert violations[0][1] == message


def stream_error(stub, *requests: pb.StreamRequest) -> grpc.RpcError:
    it = Requests(*requests)
    call = stub.Stream(iter(it))
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    it.close()
    return err.value


STREAM_CASES = [
    ([pb.StreamRequest(feed=pb.StreamFeed(text="a"))], IA, "open", "first message"),
    ([pb.StreamRequest()], IA, "open", "first message"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref(), chars_per_message=0))], IA,
     "open.chars_per_message", "[1, 256]"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref(), sampling=S(top_p=2)))], IA,
     "open.sampling.top_p", "(0, 1]"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref("ghost")))], NF, None, "ghost"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref())),
      pb.StreamRequest(generate=pb.StreamGenerate(length=0))], IA, "generate.length", ">= 1"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref())),
      pb.StreamRequest(generate=pb.StreamGenerate(length=50_001))], RE, "generate.length",
     "--max-generate-chars"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref())),
      pb.StreamRequest(generate=pb.StreamGenerate(length=3, sampling=S(temperature=-0.5)))],
     IA, "generate.sampling.temperature", "[0, 100]"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref())),
      pb.StreamRequest(open=pb.StreamOpen(model=ref()))], IA, "open", "already open"),
    ([pb.StreamRequest(open=pb.StreamOpen(model=ref())), pb.StreamRequest()], IA, "action",
     "one of"),
]


@pytest.mark.parametrize("requests_,code,field,words", STREAM_CASES)
def test_stream_errors(limited, requests_, code, field, words):
    running, stub = limited
    got_code, message, violations = status_details(stream_error(stub, *requests_))
    assert got_code == code, message
    assert words in message
    assert [f for f, _ in violations] == ([field] if field else [])


def test_too_many_streams(limited):
    running, stub = limited
    held = [Requests(pb.StreamRequest(open=pb.StreamOpen(model=ref()))) for _ in range(2)]
    calls = [stub.Stream(iter(r)) for r in held]
    for call in calls:
        assert next(call).WhichOneof("event") == "opened"
    err = stream_error(stub, pb.StreamRequest(open=pb.StreamOpen(model=ref())))
    assert err.code() == RE and "--max-streams" in err.details()
    held[0].close()
    list(calls[0])
    # A slot is free again.
    again = Requests(pb.StreamRequest(open=pb.StreamOpen(model=ref())))
    call = stub.Stream(iter(again))
    assert next(call).WhichOneof("event") == "opened"
    again.close(), held[1].close()
    list(call), list(calls[1])


def test_oversized_message_is_refused(start_server):
    running = start_server(max_message_bytes=64 * 1024)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(P(model=ref(), inputs=["a" * 100_000]))
        assert err.value.code() == RE
        # The server is fine afterwards.
        assert stub.Predict(P(model=ref(), inputs=["a"])).predictions


def test_corrupt_checkpoint_is_data_loss_and_other_versions_serve(stub, store_dir):
    weights = store_dir / "models" / "tiny" / "versions" / "00000001" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(P(model=ref(version=1), inputs=["a"]))
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "tiny" in err.value.details() and "weights.safetensors" in err.value.details()
    assert stub.Predict(P(model=ref(version=2), inputs=["a"])).version == 2


def test_a_bug_is_internal_with_a_request_id_and_the_server_lives_on(server, stub):
    class Broken:
        def feed(self, *args):
            raise RuntimeError("secret internals")

        step = feed

    good = server.servicer.stepper
    server.servicer.stepper = Broken()
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(P(model=ref(), inputs=["a"]), metadata=[("x-request-id", "req-42")])
    finally:
        server.servicer.stepper = good
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error (request id req-42)"
    assert "secret" not in err.value.details()
    assert ("x-request-id", "req-42") in tuple(err.value.trailing_metadata())
    assert stub.Predict(P(model=ref(), inputs=["a"])).predictions
