"""The charlstm client: a Python library (sync and asyncio) and the `charlstm` command line.

It depends on the generated protos and grpcio only (never on the engine or NumPy)::

    from charlstm.client import CharLstmClient, NotFoundError

    with CharLstmClient("localhost:50051") as client:
        result = client.predict("shakespeare", "ROMEO:", length=80, temperature=0.8)
        print(result.predictions[0].continuation)
"""

from charlstm.client.aio import AsyncCharLstmClient, AsyncStreamSession, AsyncTrainEventStream
from charlstm.client.client import CharLstmClient
from charlstm.client.errors import (
    CancelledError,
    CharLstmError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from charlstm.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from charlstm.client.streams import StreamSession, TrainEventStream
from charlstm.client.types import (
    Architecture,
    CheckpointSaved,
    Corpus,
    EvalResult,
    GeneratedChar,
    Job,
    JobCancelled,
    JobFailed,
    JobSucceeded,
    Model,
    ModelVersion,
    Prediction,
    PredictResult,
    SessionInfo,
    TrainEvent,
    TrainProgress,
    to_jsonable,
)

__all__ = [
    "CharLstmClient",
    "AsyncCharLstmClient",
    "StreamSession",
    "AsyncStreamSession",
    "TrainEventStream",
    "AsyncTrainEventStream",
    "RetryPolicy",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "CharLstmError",
    "InvalidArgumentError",
    "NotFoundError",
    "FailedPreconditionError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "UnavailableError",
    "DeadlineExceededError",
    "CancelledError",
    "DataLossError",
    "InternalError",
    "from_rpc_error",
    "Architecture",
    "CheckpointSaved",
    "Corpus",
    "EvalResult",
    "GeneratedChar",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobSucceeded",
    "Model",
    "ModelVersion",
    "Prediction",
    "PredictResult",
    "SessionInfo",
    "TrainEvent",
    "TrainProgress",
    "to_jsonable",
]
