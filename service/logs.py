"""Structured logging: one line per event, as text or JSON, with request ids.

- :func:`configure_logging` sets up the ``charlstm`` logger tree once per process.
- :func:`log_event` writes one event with key/value fields (``event=rpc method=... code=OK``).
- :func:`begin_request` gives every RPC a request id (the client's ``x-request-id``
  metadata, else a fresh one), available to the handler through :func:`current_request_id`;
  after the RPC :class:`AccessLog` writes one access line (method, status code, duration,
  peer) and updates the RPC metrics. Both run in every call's wrapper (``call_pipeline.py``).

A text line reads::

    2025-01-01T12:00:00.123Z INFO charlstm.access rpc method=/charlstm.v1.CharLstm/Predict code=OK duration_ms=3.1 request_id=9f...

and the same event as JSON::

    {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "charlstm.access",
     "event": "rpc", "method": "/charlstm.v1.CharLstm/Predict", "code": "OK", ...}
"""

from __future__ import annotations

import collections
import contextvars
import json
import logging
import math
import random
import re
import sys
import threading
import time
from json.encoder import encode_basestring_ascii
from typing import Any

import grpc

from charlstm.service.metrics import Metrics

__all__ = [
    "configure_logging",
    "BackgroundStreamHandler",
    "log_event",
    "current_request_id",
    "AccessLog",
    "begin_request",
    "REQUEST_ID_KEY",
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


# The date and time of the last second formatted: a busy server logs many lines a second.
_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    """``2025-01-01T12:00:00.123Z`` (UTC, milliseconds truncated)."""
    global _second
    # Rounded to the microsecond as datetime.fromtimestamp does, then truncated.
    fraction, whole = math.modf(record.created)
    seconds, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    cached = _second  # one read: another thread may replace it meanwhile
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{micros // 1000:03d}Z"


# json.dumps(..., default=str) builds an encoder per call; one serves every line.
_json = json.JSONEncoder(default=str)


# Characters a reader or a log parser would split a text value on (\s is str.isspace()).
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else _json.encode(value)
    # Quote values a reader or a log parser would otherwise split.
    if text == "" or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


# Keys a JSON line sets itself; a field of the same name is left out.
_JSON_OWN_KEYS = frozenset(("time", "level", "logger", "event"))


def _json_value(value: Any) -> str:
    """``value`` as json.dumps(value, default=str) writes it, the common types directly."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    return _json.encode(value)  # NaN, containers, anything else


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
        fields = getattr(record, "fields", None)
        if fields is not None and not record.exc_info:
            # An event (one per RPC for the access log): written piece by piece, the same
            # text as the dict below through json.dumps, without building the dict.
            parts = [f'{{"time": "{_timestamp(record)}", "level": '
                     f'{encode_basestring_ascii(record.levelname)}, "logger": '
                     f'{encode_basestring_ascii(record.name)}, "event": '
                     f'{encode_basestring_ascii(record.getMessage())}']
            for key, value in fields.items():
                if not isinstance(key, str):
                    break  # json.dumps's key conversions: the general way below
                if key not in _JSON_OWN_KEYS:
                    parts.append(f", {encode_basestring_ascii(key)}: {_json_value(value)}")
            else:
                parts.append("}")
                return "".join(parts)
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        if fields is not None:
            out["event"] = record.getMessage()
            for key, value in fields.items():
                out.setdefault(key, value)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _json.encode(out)


class BackgroundStreamHandler(logging.Handler):
    """Writes records to a stream from a background thread, many lines per write.

    A busy server logs a line per RPC. Written where it is logged, each line costs the
    request thread its formatting, a ``write`` under the handler lock and a wake-up of whoever
    reads the pipe. Here ``emit`` only queues the record; the writer thread wakes on the
    first record of a batch, waits ``linger`` seconds for more, then formats them all and
    writes them at once. Lines keep their order and content. (The standard library's
    ``QueueHandler``/``QueueListener`` pair moves the work off the request thread too, but
    writes and flushes each line on its own; the batched write is what this adds.) :meth:`flush` (which
    ``logging.shutdown`` calls at exit) and :meth:`close` write whatever is queued at once.
    """

    def __init__(self, stream: Any, linger: float = 0.01):
        super().__init__()
        self.stream = stream
        self._linger = linger
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one batch at a time, in order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="charlstm-log-writer",
                                        daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._pending.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def flush(self) -> None:
        self._write_pending()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._write_pending()
        super().close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            time.sleep(self._linger)
            # Cleared before taking the batch: a record queued from here on sets it again.
            self._wake.clear()
            self._write_pending()

    def _write_pending(self) -> None:
        with self._write_lock:
            lines = []
            while self._pending:
                record = self._pending.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:  # noqa: BLE001 - logging's own policy for a bad record
                    self.handleError(record)
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:  # noqa: BLE001 - e.g. the reader of the pipe went away
                self.handleError(record)


def configure_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Send the ``charlstm`` loggers (and grpc's) to ``stream`` (stderr) in ``fmt``
    (``text`` or ``json``) at ``level``, written from a background thread
    (:class:`BackgroundStreamHandler`). Calling it again replaces the previous set-up."""
    handler = BackgroundStreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    replaced = set()
    for name in ("charlstm", "grpc"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if getattr(old, "_charlstm", False):
                logger.removeHandler(old)
                replaced.add(old)
        handler._charlstm = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for old in replaced:
        old.close()  # writes what it still holds, and ends its thread
    logging.getLogger("charlstm").setLevel(level.upper())
    # grpc's own logger is chatty at INFO; its warnings are worth keeping.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


# ---------------------------------------------------------------------------------------------
# The access log


def _request_id_from(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and value:
            # The client's id is echoed into logs: keep it short and printable.
            clean = "".join(ch for ch in value[:_MAX_REQUEST_ID_LEN] if ch.isprintable())
            if clean:
                return clean
    # 128 random bits as 32 hex digits, like uuid4().hex; os.urandom, which uuid4 reads, was
    # a 9 us system call here, and a request id needs no cryptographic randomness.
    return f"{random.getrandbits(128):032x}"


def begin_request(metadata: Any) -> str:
    """Give the RPC on this thread its request id (the client's ``x-request-id`` metadata,
    else a fresh one), readable by :func:`current_request_id`; returns it."""
    request_id = _request_id_from(metadata)
    _request_id.set(request_id)
    return request_id


class AccessLog:
    """Writes one access-log line per RPC and records the RPC metrics.

    The call wrapper (``call_pipeline.py``) calls :meth:`record` once per call, outermost, so
    refused calls (unauthenticated, draining) are logged and counted too.
    """

    def __init__(self, metrics: Metrics | None = None):
        self._metrics = metrics
        # prometheus-client children by label values: ``labels()`` parses its arguments and
        # takes a lock on every call; the (method, code) pairs in use are few.
        self._counts: dict[tuple[str, str], Any] = {}
        self._latencies: dict[str, Any] = {}
        self._records = _RecordTemplate(access_log, "rpc")

    def record(
        self,
        method: str,
        context: grpc.ServicerContext,
        started: float,
        request_id: str,
        error: bool,
    ) -> None:
        """Log and count one finished call that began at ``started`` (``perf_counter``);
        ``error``: its behaviour raised (or, for a stream, did not run to its end)."""
        duration = time.perf_counter() - started
        code = _final_code(context, error)
        if self._metrics is not None:
            count = self._counts.get((method, code))
            if count is None:
                count = self._counts[(method, code)] = self._metrics.rpcs_total.labels(
                    method=method, code=code)
            latency = self._latencies.get(method)
            if latency is None:
                latency = self._latencies[method] = self._metrics.rpc_latency_seconds.labels(
                    method=method)
            count.inc()
            latency.observe(duration)
        if not access_log.isEnabledFor(logging.INFO):
            return
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
        access_log.handle(self._records.make(fields))


class _RecordTemplate:
    """Makes the ``LogRecord`` of one event of one logger, for events logged on every RPC.

    ``Logger.info`` looks up the caller's frame, and ``LogRecord.__init__`` asks for the
    process, its name, the thread and splits the source path on every record: about 15 us
    a call measured, for values that are the same each time. Here one real record is the
    template (so every attribute this Python's LogRecord has is present), and a new record
    copies it and sets what differs: the time, the thread and the fields.
    """

    def __init__(self, logger: logging.Logger, event: str):
        self._template = logger.makeRecord(logger.name, logging.INFO, __file__, 0, event, None,
                                           None, "record").__dict__.copy()
        self._created = self._template["created"]
        self._relative = self._template["relativeCreated"]

    def make(self, fields: dict[str, Any]) -> logging.LogRecord:
        record = logging.LogRecord.__new__(logging.LogRecord)
        attributes = record.__dict__
        attributes.update(self._template)
        now = time.time()
        attributes["created"] = now
        attributes["msecs"] = int((now - int(now)) * 1000) + 0.0  # as LogRecord computes it
        attributes["relativeCreated"] = self._relative + (now - self._created) * 1000
        current = threading.current_thread()
        attributes["thread"], attributes["threadName"] = current.ident, current.name
        attributes["fields"] = fields
        return record


def _final_code(context: grpc.ServicerContext, error: bool) -> str:
    """The status the client got, as best the server can tell from its side."""
    code = context.code()
    if code is not None:
        return code.name
    if not context.is_active() and error:
        # The generator was closed because the client cancelled or its deadline passed.
        return "CANCELLED"
    return "UNKNOWN" if error else "OK"
