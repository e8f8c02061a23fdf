"""A scripted in-process gRPC server for the client's unit tests: each RPC counts its calls and
fails or stalls as a test tells it to, so retries, deadlines and error details can be checked
without the real service."""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc as pb_grpc


def bad_request(field: str, message: str) -> grpc.Status:
    """An INVALID_ARGUMENT status carrying a google.rpc.BadRequest field violation."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
            ]
        )
    )
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    )


class ScriptedServicer(pb_grpc.CharLstmServicer):
    """Fails the first ``unavailable[method]`` calls of a method with UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.unavailable: collections.Counter[str] = collections.Counter()
        self.metadata: list[tuple[str, str]] = []
        self.uploaded: list[bytes] = []
        self.stall = threading.Event()  # set by tests: stalled RPCs give up
        self._lock = threading.Lock()

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            self.metadata = list(context.invocation_metadata())
            failing = self.calls[method] <= self.unavailable[method]
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method} is warming up")

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        self._enter("Predict", context)
        return pb.PredictResponse(
            model=request.model.name,
            version=7,
            predictions=[
                pb.Prediction(input=text, next=[pb.CharProbability(char="a", probability=0.75)],
                              continuation="bc",
                              continuation_probabilities=[0.5, 0.25])
                for text in request.inputs
            ],
        )  # fmt: skip

    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Any:
        self._enter("Train", context)
        if request.model == "silent":
            self.stall.wait(10)  # never answers: the client's opening deadline must fire
            return
        yield pb.TrainEvent(
            job_id="j1", accepted=pb.JobAccepted(job=pb.Job(id="j1", model=request.model))
        )

    def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelResponse:
        self._enter("DeleteModel", context)
        return pb.DeleteModelResponse(deleted_versions=[1])

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        self._enter("ListModels", context)
        return pb.ListModelsResponse(models=[pb.Model(name="m", latest_version=1)])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        self._enter("GetModel", context)
        context.abort_with_status(
            bad_request(
                "name", f"name must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}} (got {request.name!r})"
            )
        )

    def UploadCorpus(self, request_iterator: Any, context: grpc.ServicerContext) -> pb.Corpus:
        data = b"".join(chunk.data for chunk in request_iterator)
        self._enter("UploadCorpus", context)
        self.uploaded.append(data)
        return pb.Corpus(
            id=hashlib.sha256(data).hexdigest(), size_bytes=len(data), characters=len(data.decode())
        )

    def Stream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Stream", context)
        for request in request_iterator:
            if request.HasField("open"):
                yield pb.StreamResponse(
                    opened=pb.StreamOpened(session_id="s1", model=request.open.model.name, version=1)
                )
            elif request.HasField("feed"):
                self.stall.wait(10)  # never answers a feed: the client's reply deadline must fire
                return


class FakeServer:
    """Runs a `ScriptedServicer` on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.servicer = ScriptedServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_CharLstmServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.servicer.stall.set()
        self.server.stop(0).wait(5)


def elapsed(start: float) -> float:
    return time.monotonic() - start
