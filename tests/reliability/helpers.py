"""Helpers shared by the reliability tests: the API's methods read from the service
descriptor (so a new RPC is covered without editing a test), one generic way to call any of
them, and a server of a test module's own over a copy of the model template."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Iterable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charlstm.service.config import ServerConfig
from charlstm.service.server import RunningServer, create_server
from charlstm.v1 import charlstm_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["CharLstm"]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    path: str  # /charlstm.v1.CharLstm/Predict
    client_streaming: bool
    server_streaming: bool
    request: Descriptor

    @property
    def request_class(self) -> type:
        return message_factory.GetMessageClass(self.request)


METHODS = [Method(m.name, f"/{SERVICE.full_name}/{m.name}", m.client_streaming,
                  m.server_streaming, m.input_type) for m in SERVICE.methods]


def call(channel: grpc.Channel, method: Method, requests: Iterable[Any], *,
         metadata=None, timeout: float = 10.0, max_responses: int | None = None
         ) -> grpc.StatusCode:
    """Call ``method`` with ``requests`` (messages, or raw ``bytes`` sent as they are); reads
    the responses (at most ``max_responses``, then cancels) and returns the status code."""
    requests = list(requests)

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    multicallable = kind(method.path, request_serializer=serialize, response_deserializer=None)
    argument = iter(requests) if method.client_streaming else requests[0]
    try:
        if not method.server_streaming:
            multicallable(argument, metadata=metadata, timeout=timeout)
            return grpc.StatusCode.OK
        responses = multicallable(argument, metadata=metadata, timeout=timeout)
        for count, _ in enumerate(responses, 1):
            if max_responses is not None and count >= max_responses:
                responses.cancel()
                return grpc.StatusCode.OK
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def serve_copy(template: Path, root: Path, **overrides) -> RunningServer:
    """A server on 127.0.0.1:0 over a fresh copy of ``template`` under ``root``."""
    store = root / "store"
    shutil.copytree(template, store)
    settings = dict(host="127.0.0.1", port=0, metrics_port=0, store=str(store), grace_period=1.0,
                    max_streams=16, demo_models=False)
    settings.update(overrides)
    return create_server(ServerConfig(**settings))


def healthy(channel: grpc.Channel) -> bool:
    """Health says SERVING."""
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=10).status
    return status == health_pb2.HealthCheckResponse.SERVING


def cancel_all_jobs(stub) -> None:
    """Cancel whatever jobs a test started (fuzzed Train calls may start one)."""
    for job in stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs:
        if job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
            try:
                stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=10)
            except grpc.RpcError:
                pass  # it ended meanwhile
