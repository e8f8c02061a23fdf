"""The service's error vocabulary, and the one place that turns errors into gRPC statuses.

RPC code (and the cores behind it) raise a :class:`ServiceError` subclass, or let a domain
error from the engine or the store propagate; :func:`rpc_errors` wraps every servicer method and
turns what escapes into a status with a message a person can act on:

- :class:`ServiceError` -> its ``code``; when ``field`` is set the status carries a
  ``google.rpc.BadRequest`` detail with one field violation naming the request field.
- engine/store errors -> :func:`translate` picks the code (``ConfigError`` and ``InvalidName``
  become INVALID_ARGUMENT with their field, ``*NotFound`` NOT_FOUND, and so on).
- anything else is a bug: logged with its traceback and the request id, and answered with
  INTERNAL ``internal error (request id X)`` so no internals leak to the client.

Clients read the details back with ``grpc_status.rpc_status.from_call``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Iterator, TypeVar

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "ServiceError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "DeadlineExceeded",
    "DataLoss",
    "Internal",
    "translate",
    "to_status",
    "rpc_errors",
]

log = logging.getLogger("charlstm.service.errors")

F = TypeVar("F", bound=Callable[..., Any])


class ServiceError(Exception):
    """A request failed for a reason the client should hear about.

    Args:
        message: for a person: what was wrong and what is allowed, e.g.
            ``sampling.temperature must be a number in [0, 100] (got 120)``.
        field: the offending request field as a dotted path (``sampling.temperature``,
            ``inputs[3]``); sent as a google.rpc.BadRequest field violation.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range (name it with ``field``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """No such model, version, label, job, corpus or session."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is well-formed but the current state forbids it (deleting a labelled
    version, cancelling a finished job, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A server limit was reached: concurrent streams, generation length, batch size,
    corpus size, ... The message names the limit and its flag."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    """The call lacks a valid ``authorization: Bearer <token>`` header."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServiceError):
    """The server is draining for shutdown; retry on another instance or later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """A Stream session stayed idle past the server's idle timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(ServiceError):
    """A stored checkpoint is corrupt (its message names model, version and file)."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(ServiceError):
    """A known server-side failure whose message is safe to show (a store write failed)."""

    code = grpc.StatusCode.INTERNAL


# ---------------------------------------------------------------------------------------------
# Domain errors -> ServiceError


def translate(exc: BaseException) -> ServiceError:
    """Map an exception to the :class:`ServiceError` the client should see.

    ServiceErrors pass through. Engine ``ConfigError`` and store ``InvalidName`` (any
    ``StoreInputError``) become INVALID_ARGUMENT with their ``field``; the store's
    ``ModelNotFound``/``VersionNotFound``/``LabelNotFound`` NOT_FOUND; ``LabelInUse``
    FAILED_PRECONDITION; ``CorruptCheckpoint`` DATA_LOSS; ``StoreWriteError`` (and any other
    ``StoreError``) INTERNAL with its message. Anything else becomes an :class:`Internal` with a
    generic message (the caller logs the original).
    """
    if isinstance(exc, ServiceError):
        return exc
    config_error, store = _domain_errors()
    if config_error is not None and isinstance(exc, config_error):
        return InvalidArgument(str(exc), field=getattr(exc, "field", None))
    if store is not None:
        if isinstance(exc, getattr(store, "StoreInputError", store.InvalidName)):
            # InvalidName and the other refused arguments carry the field they are about.
            return InvalidArgument(str(exc), field=getattr(exc, "field", None))
        if isinstance(exc, (store.ModelNotFound, store.VersionNotFound, store.LabelNotFound)):
            return NotFound(str(exc))
        if isinstance(exc, store.LabelInUse):
            return FailedPrecondition(str(exc))
        if isinstance(exc, store.CorruptCheckpoint):
            return DataLoss(str(exc))
        if isinstance(exc, (store.StoreWriteError, store.StoreError)):
            # A failed write (disk full, ...) or an unusable store: the message is ours and
            # safe to show, and it tells the operator what to fix.
            return Internal(str(exc))
    return Internal(_GENERIC)


_GENERIC = "internal error"


def _domain_errors() -> tuple[type | None, Any]:
    """The engine's ConfigError and the store module, imported on first use.

    Imported late, not at module level: every service module imports errors.py, and naming an
    error must not require the engine or the store to be importable (useful while they are
    being built, and it keeps import cycles impossible).
    """
    try:
        from charlstm.engine import ConfigError
    except ImportError:
        ConfigError = None  # noqa: N806
    try:
        from charlstm.service import store

        store.InvalidName  # noqa: B018 - the real module, not a placeholder
    except (ImportError, AttributeError):
        store = None
    return ConfigError, store


_GRPC_TO_RPC_CODE = {c: getattr(code_pb2, c.name) for c in grpc.StatusCode}


def to_status(error: ServiceError, *, request_id: str | None = None) -> grpc.Status:
    """Build the ``grpc.Status`` for an error: code, message and google.rpc details
    (a BadRequest field violation when ``error.field`` is set); the request id, when known,
    rides along as ``x-request-id`` trailing metadata."""
    proto = status_pb2.Status(code=_GRPC_TO_RPC_CODE[error.code], message=error.message)
    if error.field:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.message
                )
            ]
        )
        proto.details.add().Pack(bad_request)
    status = rpc_status.to_status(proto)
    if request_id:
        status = status._replace(
            trailing_metadata=tuple(status.trailing_metadata) + (("x-request-id", request_id),)
        )
    return status


# ---------------------------------------------------------------------------------------------
# The decorator


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after recording the code; let that one through
    # untouched rather than reporting it as an internal error.
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a test double without code()
        return False
    return code is not None and code != grpc.StatusCode.OK


def _abort(exc: BaseException, context: grpc.ServicerContext, method_name: str) -> None:
    """Abort the RPC with the status for ``exc`` (raises, as context.abort does)."""
    # The request id comes from the call pipeline (logs.py); imported late to keep
    # this module free of import cycles.
    from charlstm.service.logs import current_request_id

    request_id = current_request_id()
    error = translate(exc)
    if isinstance(error, Internal):
        # A bug, or a server-side failure such as a full disk: the operator needs the
        # traceback, the client a request id to quote.
        log.error(
            "unexpected error in %s (request id %s)",
            method_name,
            request_id,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"fields": {"method": method_name, "request_id": request_id}},
        )
        error = Internal(f"{error.message} (request id {request_id})")
    context.abort_with_status(to_status(error, request_id=request_id))


def rpc_errors(method: F) -> F:
    """Decorate a servicer method so every failure ends the RPC with a proper status.

    Works for unary-response methods (unary or client-streaming requests) and for
    server-streaming/bidirectional methods written as generators: errors raised while
    the generator runs, including after it has yielded responses, are caught too.
    """
    name = method.__qualname__

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                if _already_aborted(context):
                    raise
                _abort(exc, context, name)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            if _already_aborted(context):
                raise
            _abort(exc, context, name)

    return unary_wrapper  # type: ignore[return-value]
