"""Log lines (issue 7): the JSON and text lines stay what they were while written faster, and
the background writer keeps every line, in order, and writes it out on flush."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from charlstm.service.logs import (
    AccessLog,
    BackgroundStreamHandler,
    JsonFormatter,
    TextFormatter,
    _timestamp,
)

ODD_VALUES = ["plain", "é\n\"quoted\" = x", "", None, True, False, 0, -5, 2**70, 0.1, 1e300,
              float("nan"), float("inf"), -0.0, [1, "a"], {"k": 1}, 3.0]


def _record(fields: dict | None, message: str = "rpc") -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "charlstm.test", "msg": message,
                                    "levelname": "INFO", "levelno": logging.INFO})
    if fields is not None:
        record.fields = fields
    return record


@pytest.mark.parametrize("value", ODD_VALUES)
def test_a_json_line_is_what_json_dumps_writes(value):
    fields = {"method": "/charlstm.v1.CharLstm/Predict", "value": value, "event": "shadowed",
              "time": "shadowed", "ü key": value}
    record = _record(fields)
    want = {"time": _timestamp(record), "level": "INFO", "logger": "charlstm.test",
            "event": "rpc"}
    for key, v in fields.items():
        want.setdefault(key, v)
    assert JsonFormatter().format(record) == json.dumps(want, default=str)


def test_text_values_are_quoted_when_a_reader_would_split_them():
    line = TextFormatter().format(_record({"a": "x y", "b": "k=v", "c": "", "d": "plain",
                                           "e": "tab\there", "f": 1.5}))
    assert line.endswith(' rpc a="x y" b="k=v" c="" d=plain e="tab\\there" f=1.5')


def test_the_background_writer_keeps_every_line_in_order_and_flushes_on_demand():
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, linger=0.5)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("charlstm.test.background")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        threads = [threading.Thread(target=lambda i=i: [logger.warning("t%d-%03d", i, k)
                                                       for k in range(200)]) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stream.getvalue() == ""  # still lingering: nothing written from the callers
        handler.flush()
        lines = stream.getvalue().splitlines()
        assert len(lines) == 800
        for i in range(4):
            mine = [line for line in lines if line.startswith(f"t{i}-")]
            assert mine == [f"t{i}-{k:03d}" for k in range(200)]
        logger.warning("later")
        deadline = time.monotonic() + 5
        while "later" not in stream.getvalue():  # written by the thread, after its linger
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
        handler.close()
    handler._thread.join(5)
    assert not handler._thread.is_alive()  # close() ends the writer thread


def test_access_records_carry_the_time_thread_and_fields_of_each_call(caplog):
    caplog.set_level(logging.INFO, logger="charlstm.access")

    class Context:
        def code(self):
            return None

        def is_active(self):
            return True

        def peer(self):
            return "ipv4:127.0.0.1:1234"

        def details(self):
            return None

    before = time.time()
    AccessLog().record("/x.Y/Z", Context(), time.perf_counter(), "rid", error=False)
    (record,) = [r for r in caplog.records if r.name == "charlstm.access"]
    assert before <= record.created <= time.time()
    assert record.threadName == threading.current_thread().name
    assert record.getMessage() == "rpc"
    assert record.fields == {"method": "/x.Y/Z", "code": "OK", "request_id": "rid",
                             "duration_ms": record.fields["duration_ms"],
                             "peer": "ipv4:127.0.0.1:1234"}
