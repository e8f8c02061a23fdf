"""Prometheus metrics of one server, on their own registry, served on their own HTTP port.

Each :class:`Metrics` owns a ``CollectorRegistry`` rather than using the process-global one, so
several servers can run in one process (the tests do) without clashing metric names.

Names (all prefixed ``charlstm_``):

==============================================  =======================================
``rpcs_total{method,code}``                     finished RPCs by full method and status
``rpc_latency_seconds{method}``                 RPC duration histogram
``active_streams``                              open Stream sessions
``generated_chars_total``                       characters sampled (Predict and Stream)
``stream_sessions_expired_total``               Stream sessions ended by the idle timeout
``batch_rows``                                  rows (streams) advanced by each batched step
``batch_queue_wait_seconds``                    wait of a request before its first batched step
``model_cache_models``                          models loaded in the cache
``model_loads_total``                           checkpoint loads into the cache
``jobs{state}``                                 training jobs by state
``training_steps_total``                        optimiser steps done by all jobs
``training_chars_per_second{job}``              latest throughput of each running job
``training_loss{job,split}``                    latest train/val loss of each running job
==============================================  =======================================
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

__all__ = ["Metrics"]

# Latency buckets from sub-millisecond Predict calls to minute-long generations.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)


class Metrics:
    """The metrics of one server process.

    Attributes are prometheus-client objects; update them directly, e.g.
    ``metrics.rpcs_total.labels(method="/charlstm.v1.CharLstm/Predict", code="OK").inc()``.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpcs_total = Counter(
            "charlstm_rpcs", "Finished RPCs by method and status code.",
            ["method", "code"], registry=r,
        )
        self.rpc_latency_seconds = Histogram(
            "charlstm_rpc_latency_seconds", "RPC duration in seconds, by method.",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.active_streams = Gauge(
            "charlstm_active_streams", "Open Stream sessions.", registry=r,
        )
        self.generated_chars_total = Counter(
            "charlstm_generated_chars", "Characters sampled by Predict and Stream.", registry=r,
        )
        self.stream_sessions_expired_total = Counter(
            "charlstm_stream_sessions_expired",
            "Stream sessions ended because they stayed idle past the idle timeout.", registry=r,
        )
        self.batch_rows = Histogram(
            "charlstm_batch_rows",
            "Rows (streams of Stream sessions and Predict inputs) advanced by one batched step.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r,
        )
        self.batch_queue_wait_seconds = Histogram(
            "charlstm_batch_queue_wait_seconds",
            "Seconds a request waited for its first batched step.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.model_cache_models = Gauge(
            "charlstm_model_cache_models", "Model versions loaded in the cache.", registry=r,
        )
        self.model_loads_total = Counter(
            "charlstm_model_loads", "Checkpoints loaded into the model cache.", registry=r,
        )
        self.jobs = Gauge(
            "charlstm_jobs", "Training jobs by state.", ["state"], registry=r,
        )
        self.training_steps_total = Counter(
            "charlstm_training_steps", "Optimiser steps done by all training jobs.", registry=r,
        )
        self.training_chars_per_second = Gauge(
            "charlstm_training_chars_per_second",
            "Latest training throughput of each running job, characters per second.",
            ["job"], registry=r,
        )
        self.training_loss = Gauge(
            "charlstm_training_loss",
            "Latest loss (nats per character) of each running job; split is train or val.",
            ["job", "split"], registry=r,
        )
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def start_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on ``addr:port`` in a daemon thread.

        Port 0 picks a free port. Returns the bound port.
        """
        if self._http is not None:
            raise RuntimeError("the metrics HTTP server is already running")
        server_class = _ThreadingWSGIServer6 if ":" in addr else _ThreadingWSGIServer
        self._http = make_server(addr, port, make_wsgi_app(self.registry), server_class,
                                 handler_class=_QuietHandler)
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name="charlstm-metrics-http", daemon=True,
        )
        self._http_thread.start()
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        """Stop the HTTP server started by :meth:`start_http` (no-op if none)."""
        if self._http is not None:
            # Our own server (not prometheus_client.start_http_server) so that shutdown polls
            # every 50 ms rather than 500 ms.
            self._http.shutdown()
            self._http.server_close()
            self._http = None
            self._http_thread = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample, 0.0 when absent (for tests and health reports).

        ``name`` is the full sample name, e.g. ``charlstm_active_streams`` or
        ``charlstm_generated_chars_total``.
        """
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else float(found)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        """Scrapes are not events worth a log line."""
