"""Structured logging: one line per event, as text or JSON, with request ids.

- :func:`configure_logging` sets up the ``charlstm`` logger tree once per process.
- :func:`log_event` writes one event with key/value fields (``event=rpc method=... code=OK``).
- :class:`AccessLogInterceptor` gives every RPC a request id (the client's ``x-request-id``
  metadata, else a fresh one), makes it available to the handler through
  :func:`current_request_id`, and after the RPC writes one access line (method, status code,
  duration, peer) and updates the RPC metrics.

A text line reads::

    2025-01-01T12:00:00.123Z INFO charlstm.access rpc method=/charlstm.v1.CharLstm/Predict code=OK duration_ms=3.1 request_id=9f...

and the same event as JSON::

    {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "charlstm.access",
     "event": "rpc", "method": "/charlstm.v1.CharLstm/Predict", "code": "OK", ...}
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import grpc

from charlstm.service.metrics import Metrics

__all__ = [
    "configure_logging",
    "log_event",
    "current_request_id",
    "AccessLogInterceptor",
    "REQUEST_ID_KEY",
    "rewrap_handler",
]

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID_LEN = 128

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "charlstm_request_id", default=None
)

access_log = logging.getLogger("charlstm.access")


def current_request_id() -> str | None:
    """The id of the RPC this thread is serving (None outside an RPC)."""
    return _request_id.get()


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields; the current request id is added when known."""
    if not logger.isEnabledFor(level):
        return
    request_id = current_request_id()
    if request_id is not None and "request_id" not in fields:
        fields["request_id"] = request_id
    logger.log(level, event, extra={"fields": fields})


# ---------------------------------------------------------------------------------------------
# Formatters


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f"
    )[:-3] + "Z"


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # Quote values a reader or a log parser would otherwise split.
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message key=value ...`` on one line (tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        fields = getattr(record, "fields", None) or {}
        parts.extend(f"{k}={_format_value(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message/event, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            out["event"] = record.getMessage()
            for key, value in fields.items():
                out.setdefault(key, value)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Send the ``charlstm`` loggers (and grpc's) to ``stream`` (stderr) in ``fmt``
    (``text`` or ``json``) at ``level``. Calling it again replaces the previous set-up."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("charlstm", "grpc"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if getattr(old, "_charlstm", False):
                logger.removeHandler(old)
        handler._charlstm = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("charlstm").setLevel(level.upper())
    # grpc's own logger is chatty at INFO; its warnings are worth keeping.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


# ---------------------------------------------------------------------------------------------
# The access-log interceptor


def _request_id_from(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and value:
            # The client's id is echoed into logs: keep it short and printable.
            clean = "".join(ch for ch in value[:_MAX_REQUEST_ID_LEN] if ch.isprintable())
            if clean:
                return clean
    return uuid.uuid4().hex


class AccessLogInterceptor(grpc.ServerInterceptor):
    """Assigns request ids, writes one access-log line per RPC and records RPC metrics.

    Install it first (outermost) so refused calls (unauthenticated, draining) are logged and
    counted too.
    """

    def __init__(self, metrics: Metrics | None = None):
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        method = handler_call_details.method
        request_id = _request_id_from(handler_call_details.invocation_metadata)

        def start(context: grpc.ServicerContext) -> Callable[[bool], None]:
            """Begin timing; returns ``finish(error)``, which records the call once.

            Streams are also finished by the call's termination callback: a cancelled
            stream's generator is only closed when it is collected."""
            _request_id.set(request_id)
            started = time.perf_counter()
            done = threading.Lock()

            def finish(error: bool) -> None:
                if done.acquire(blocking=False):
                    self._record(method, context, started, request_id, error)

            return finish

        def wrap_unary(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                finish = start(context)
                error = True
                try:
                    response = behavior(request_or_iterator, context)
                    error = False
                    return response
                finally:
                    finish(error)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                finish = start(context)
                context.add_callback(lambda: finish(not context.is_active()
                                                    and context.code() is None))
                error = True
                try:
                    # grpc iterates a response stream on one pool thread, start to end, so the
                    # request id set in start() holds for the whole generator.
                    yield from behavior(request_or_iterator, context)
                    error = False
                finally:
                    finish(error)

            return wrapped

        return rewrap_handler(handler, wrap_unary, wrap_stream)

    def _record(
        self,
        method: str,
        context: grpc.ServicerContext,
        started: float,
        request_id: str,
        error: bool,
    ) -> None:
        duration = time.perf_counter() - started
        code = _final_code(context, error)
        if self._metrics is not None:
            self._metrics.rpcs_total.labels(method=method, code=code).inc()
            self._metrics.rpc_latency_seconds.labels(method=method).observe(duration)
        fields: dict[str, Any] = {
            "method": method,
            "code": code,
            "duration_ms": round(duration * 1000.0, 3),
            "request_id": request_id,
        }
        try:
            fields["peer"] = context.peer()
        except Exception:  # noqa: BLE001 - peer() can fail once the call is gone
            pass
        if code not in ("OK", "CANCELLED") and isinstance(context.details(), (bytes, str)):
            details = context.details()
            fields["details"] = details.decode("utf-8", "replace") if isinstance(
                details, bytes) else details
        access_log.info("rpc", extra={"fields": fields})


def _final_code(context: grpc.ServicerContext, error: bool) -> str:
    """The status the client got, as best the server can tell from its side."""
    code = context.code()
    if code is not None:
        return code.name
    if not context.is_active() and error:
        # The generator was closed because the client cancelled or its deadline passed.
        return "CANCELLED"
    return "UNKNOWN" if error else "OK"


def rewrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_stream) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour is wrapped according to its response arity."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
