"""Unit tests of the replica targets and the service config they get (charlstm.client.balancing)."""

from __future__ import annotations

import json

import grpc
import pytest

from charlstm.client.balancing import (
    IDEMPOTENT_METHODS,
    replica_channel_options,
    replica_service_config,
    replica_target,
)
from charlstm.v1 import charlstm_pb2


@pytest.mark.parametrize("target,expected,balanced", [
    ("localhost:50051", "localhost:50051", False),  # one server: left exactly as it is
    ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", True),
    (" 10.0.0.1:1 , 10.0.0.1:1 ,", "ipv4:10.0.0.1:1", True),  # duplicates and blanks dropped
    ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", True),
    ("dns:///charlstm.default.svc:50051", "dns:///charlstm.default.svc:50051", True),
    ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", True),
    ("unix:/run/charlstm.sock", "unix:/run/charlstm.sock", False),
])
def test_replica_targets(target: str, expected: str, balanced: bool) -> None:
    resolved = replica_target(target)
    assert (resolved.target, resolved.balanced) == (expected, balanced)


def test_host_names_in_a_list_are_resolved_to_addresses() -> None:
    resolved = replica_target("localhost:7001,127.0.0.1:7002")
    assert resolved.balanced
    family, _, addresses = resolved.target.partition(":")
    assert family in ("ipv4", "ipv6") and addresses.endswith(":7002") and "localhost" not in addresses


@pytest.mark.parametrize("bad", ["10.0.0.1,10.0.0.2:2", "10.0.0.1:x,10.0.0.2:2",
                                 "10.0.0.1:1,[::1]:2", "no-such-host.invalid:1,10.0.0.1:2"])
def test_bad_server_lists_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match="server list|HOST:PORT|resolve|family"):
        replica_target(bad)


def test_the_service_config_retries_idempotent_methods_only() -> None:
    config = json.loads(replica_service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    named = {(n["service"], n["method"]) for n in method_config["name"]}
    assert named == set(IDEMPOTENT_METHODS)
    service = charlstm_pb2.DESCRIPTOR.services_by_name["CharLstm"]
    for name, method in named:
        if name == service.full_name:
            assert method in service.methods_by_name  # no typo: gRPC would ignore it silently
    never = {"Train", "Stream", "CancelJob", "DeleteModel", "UploadCorpus"}
    assert not never & {m for _, m in named}
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and 2 <= policy["maxAttempts"] <= 5


def test_grpc_accepts_the_channel_arguments() -> None:
    target, options = replica_channel_options("127.0.0.1:1,127.0.0.1:2")
    channel = grpc.insecure_channel(target, options=options)
    try:  # nothing listens: the call fails as UNAVAILABLE, not on a malformed service config
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2)
        assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()
    assert replica_channel_options("127.0.0.1:1") == ("127.0.0.1:1", [])
