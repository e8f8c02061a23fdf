"""The client's exceptions: one class per common gRPC status code, all under `CharLstmError`.

Every failed call raises a `CharLstmError` (never a bare `grpc.RpcError`), keeping what the
server said: the status code, its message and the google.rpc.BadRequest field violations that
name the offending request field. Catch the subclass for the case you handle, or the base class
for everything.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
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
    "error_for_code",
    "from_rpc_error",
]


class CharLstmError(Exception):
    """A call to the charlstm service failed.

    Attributes:
        code: the gRPC status code (`grpc.StatusCode`).
        message: the server's explanation (the status details), for a person.
        field_violations: ``(field, description)`` pairs from a google.rpc.BadRequest detail;
            empty when the server named no field.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field_violations: list[tuple[str, str]] = list(field_violations or [])

    @property
    def code_name(self) -> str:
        """The status code's name, such as ``NOT_FOUND``."""
        return self.code.name

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(CharLstmError):
    """INVALID_ARGUMENT: a request field is out of range or malformed; see `field_violations`."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(CharLstmError):
    """NOT_FOUND: no such model, version, label, job or corpus."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(CharLstmError):
    """FAILED_PRECONDITION: the request is valid but the state forbids it (for example deleting
    a labelled version, or cancelling a job that has already ended)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(CharLstmError):
    """RESOURCE_EXHAUSTED: a server limit was hit (message size, corpus size, queued jobs...)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(CharLstmError):
    """UNAUTHENTICATED: the bearer token is missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(CharLstmError):
    """PERMISSION_DENIED: the token is valid but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnavailableError(CharLstmError):
    """UNAVAILABLE: the server cannot be reached or is shutting down. Safe calls are retried
    before this is raised (see `RetryPolicy`)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(CharLstmError):
    """DEADLINE_EXCEEDED: no answer within the call's timeout (or an idle session expired)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(CharLstmError):
    """CANCELLED: the call was cancelled (by this client or by the server)."""

    code = grpc.StatusCode.CANCELLED


class DataLossError(CharLstmError):
    """DATA_LOSS: a stored checkpoint is corrupt; the message names the model, version and file."""

    code = grpc.StatusCode.DATA_LOSS


class InternalError(CharLstmError):
    """INTERNAL: a bug on the server; the message carries a request id for its logs."""

    code = grpc.StatusCode.INTERNAL


_CLASS_FOR_CODE: dict[grpc.StatusCode, type[CharLstmError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        DeadlineExceededError,
        CancelledError,
        DataLossError,
        InternalError,
    )
}


def error_for_code(
    code: grpc.StatusCode, message: str, field_violations: list[tuple[str, str]] | None = None
) -> CharLstmError:
    """Builds the exception for ``code``: its subclass, or `CharLstmError` for rarer codes."""
    cls = _CLASS_FOR_CODE.get(code)
    if cls is None:
        return CharLstmError(message, code=code, field_violations=field_violations)
    return cls(message, field_violations=field_violations)


def _field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried in the status details, if any."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError):
        # A status detail that disagrees with the call's own code/message, or an error object
        # that is not a full grpc.Call: keep the code and message, drop the details.
        return []
    if status is None:
        return []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def from_rpc_error(error: grpc.RpcError) -> CharLstmError:
    """Converts a `grpc.RpcError` (sync or grpc.aio) into the matching `CharLstmError`."""
    code_method = getattr(error, "code", None)
    code = code_method() if callable(code_method) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_method = getattr(error, "details", None)
    # str(error) of a sync RpcError is a multi-line debug dump: never used as the message.
    message = (details_method() if callable(details_method) else None) or code.name.lower()
    return error_for_code(code, message, _field_violations(error))
