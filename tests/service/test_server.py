"""The server as a whole: health, reflection, token, TLS, metrics, logs, flags, restart on the
same store (issue 4, items 6-8) and graceful shutdown."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from serving_helpers import Requests, ref, scrape, wait_for

from charlstm.service.config import ServerConfig, add_serve_arguments
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

SERVICE = "charlstm.v1.CharLstm"


def health_status(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_answers_serving(channel):
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_status(channel, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_api(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    pool = DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    predict = service.FindMethodByName("Predict")
    assert predict.input_type.full_name == "charlstm.v1.PredictRequest"
    assert "Stream" in [m.name for m in service.methods]


def test_token_guards_every_rpc_but_health(start_server):
    running = start_server(token="s3cret-token")
    good = [("authorization", "Bearer s3cret-token")]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        request = pb.PredictRequest(model=ref(), inputs=["a"])
        for metadata in (None, [("authorization", "Bearer wrong")],
                         [("authorization", "s3cret-token")],
                         [("authorization", "Bearer s3cret-token-and-more")]):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert stub.Predict(request, metadata=good).predictions
        assert stub.Predict(request, metadata=[("authorization", "bearer s3cret-token")]).predictions

        # Streaming calls and reflection too; health does not need the token.
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Stream(iter([pb.StreamRequest(open=pb.StreamOpen(model=ref()))])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(pb.ListModelsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        # Refused calls are logged and counted like any other.
        assert scrape(running)[
            'charlstm_rpcs_total{code="UNAUTHENTICATED",method="/charlstm.v1.CharLstm/Predict"}'] == 4


def test_tls(start_server, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    running = start_server(tls_cert=str(cert), tls_key=str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        assert stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"]), timeout=10).predictions
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            charlstm_pb2_grpc.CharLstmStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_restart_on_the_same_store_serves_the_same_models(start_server):
    request = pb.PredictRequest(model=ref(label="stable"), inputs=["the ", "dog"], length=30,
                                sampling=pb.SamplingOptions(seed=11), next_top_k=3)
    first = start_server()
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        before = stub.Predict(request)
        stub.SetLabel(pb.SetLabelRequest(name="tiny", label="canary", version=2))
        models_before = stub.ListModels(pb.ListModelsRequest())
    first.stop(1.0)

    second = start_server()
    with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        assert stub.Predict(request) == before
        assert stub.ListModels(pb.ListModelsRequest()) == models_before
        assert dict(stub.GetModel(pb.GetModelRequest(name="tiny")).labels) == {
            "stable": 1, "canary": 2}


def test_metrics_count_rpcs_by_method_and_code(server, stub):
    stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"]))
    stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"], length=7))
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.PredictRequest(model=ref("ghost"), inputs=["a"]))
    samples = scrape(server)
    method = "/charlstm.v1.CharLstm/Predict"
    assert samples[f'charlstm_rpcs_total{{code="OK",method="{method}"}}'] == 2
    assert samples[f'charlstm_rpcs_total{{code="NOT_FOUND",method="{method}"}}'] == 1
    assert samples[f'charlstm_rpc_latency_seconds_count{{method="{method}"}}'] == 3
    assert samples["charlstm_generated_chars_total"] == 7
    assert samples["charlstm_model_cache_models"] == 1
    assert samples['charlstm_jobs{state="running"}'] == 0


def test_graceful_shutdown(start_server):
    # A grace period well above the checks' own latency, so a loaded machine cannot end the
    # drain before the checks made during it.
    running = start_server(max_generate_chars=1_000_000, grace_period=3.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = charlstm_pb2_grpc.CharLstmStub(channel)
    open_ = pb.StreamRequest(open=pb.StreamOpen(model=ref()))
    long_generation = pb.StreamRequest(generate=pb.StreamGenerate(length=1_000_000))
    # Three sessions: an idle one; one generating for a client that keeps reading; one
    # generating for a client that reads nothing (it can only be cancelled).
    idle_requests = Requests(open_)
    idle = stub.Stream(iter(idle_requests))
    reading_requests = Requests(open_, long_generation)
    reading = stub.Stream(iter(reading_requests))
    stuck_requests = Requests(open_, long_generation)
    stuck = stub.Stream(iter(stuck_requests))
    for call in (idle, reading, stuck):
        assert next(call).WhichOneof("event") == "opened"
    wait_for(lambda: running.admission.in_flight == 3, what="three calls in flight")
    reader_outcome = {}

    def read_all() -> None:
        received = 0
        try:
            for _ in reading:
                received += 1
        except grpc.RpcError as exc:
            reader_outcome.update(code=exc.code(), details=exc.details(), received=received)

    reader = threading.Thread(target=read_all)
    reader.start()

    started = time.monotonic()
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    # The idle session ends at once, with a status that says why.
    with pytest.raises(grpc.RpcError) as err:
        next(idle)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.value.details()
    assert time.monotonic() - started < 1.0  # at once: long before the 3 s grace period
    # While draining: health says NOT_SERVING, new calls are refused.
    assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.value.details()
    stopper.join(10)
    reader.join(10)
    assert not stopper.is_alive() and not reader.is_alive()
    # The generations got their grace period; the reading client then heard why it ended.
    assert 2.4 < time.monotonic() - started < 10  # generations stop 0.5 s before the grace ends
    assert reader_outcome["code"] == grpc.StatusCode.UNAVAILABLE, reader_outcome
    assert "shutting down" in reader_outcome["details"] and reader_outcome["received"] > 10
    with pytest.raises(grpc.RpcError):
        for _ in stuck:
            pass
    for requests in (idle_requests, reading_requests, stuck_requests):
        requests.close()
    assert running.wait(0)
    channel.close()


def test_flags_and_environment():
    parser = add_serve_arguments(argparse.ArgumentParser(), environ={
        "CHARLSTM_PORT": "6000", "CHARLSTM_TOKEN": "from-env", "CHARLSTM_METRICS_PORT": "off",
        "CHARLSTM_MAX_MESSAGE_BYTES": "4M", "CHARLSTM_LOG_FORMAT": "JSON",
    })
    config = ServerConfig.from_args(parser.parse_args(["--port", "7000", "--idle-timeout", "9"]))
    assert config.port == 7000  # the flag beats the environment
    assert config.token == "from-env" and not config.metrics_enabled
    assert config.max_message_bytes == 4 * 1024 * 1024 and config.log_format == "json"
    assert config.idle_timeout == 9.0 and config.thread_pool_size > config.max_streams
    assert "from-env" not in parser.format_help()
    with pytest.raises(ValueError, match="idle_timeout"):
        ServerConfig(idle_timeout=0)
    with pytest.raises(ValueError, match="tls"):
        ServerConfig(tls_cert="a.pem")


def test_serve_command_logs_json_and_stops_on_sigterm(store_dir: Path):
    env = dict(os.environ, CHARLSTM_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm.service.server", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "off", "--store", str(store_dir), "--grace-period", "2"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        events = []
        for line in proc.stderr:
            events.append(json.loads(line))
            if events[-1].get("event") == "server_started":
                break
        port = events[-1]["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = charlstm_pb2_grpc.CharLstmStub(channel)
            stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"]),
                         metadata=[("x-request-id", "abc-123")])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        events += [json.loads(line) for line in proc.stderr]
    finally:
        proc.kill()
        proc.wait()
    access = [e for e in events if e.get("event") == "rpc"]
    assert access and access[0]["method"] == "/charlstm.v1.CharLstm/Predict"
    assert access[0]["code"] == "OK" and access[0]["request_id"] == "abc-123"
    assert access[0]["duration_ms"] >= 0
    names = [e.get("event") for e in events]
    assert "signal_received" in names and names[-1] == "server_stopped"


def test_a_port_in_use_fails_cleanly(start_server, store_dir):
    first = start_server()
    with pytest.raises(RuntimeError, match="metrics"):
        start_server(metrics_port=first.metrics_port)
    with pytest.raises(RuntimeError, match="cannot listen"):
        start_server(port=first.port)
    # The first server is unaffected.
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
