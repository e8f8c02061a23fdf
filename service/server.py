"""Builds, runs and drains the charlstm gRPC server.

    running = create_server(ServerConfig(port=0, metrics_port=0, store=tmp))
    ... talk to 127.0.0.1:{running.port} ...
    running.stop()

What :func:`create_server` assembles, in order:

1. the call pipeline (``call_pipeline.py``), wrapped once around every method: the access
   log and RPC metrics (``logs.py``), the bearer token check (``auth.py``, when a token is
   configured), admission control (``admission.py``), request parsing (``decoding.py``: a
   malformed message is INVALID_ARGUMENT, not INTERNAL);
2. the ``charlstm.v1.CharLstm`` servicer, ``grpc.health.v1.Health`` and server reflection;
3. the listening port (TLS when a certificate and key are given) with the message-size limits;
4. the training-job scheduler, then the server, then health SERVING and the metrics endpoint.

Graceful shutdown (:meth:`RunningServer.stop`, called on SIGTERM/SIGINT by :func:`serve`):

1. health turns NOT_SERVING (health checks keep being answered), and admission control refuses
   every new call but health checks with UNAVAILABLE;
2. Stream sessions stop taking requests: one waiting for its next request ends with
   UNAVAILABLE after a short settle (``sessions.DRAIN_SETTLE``, so that a request already on
   its way is not lost to the race), at once when the grace period is over; one generating
   finishes its generation first;
3. running training jobs are asked to checkpoint and stop (``JobManager.shutdown``), in
   parallel with
4. waiting for the calls in flight to finish; shortly before the grace period ends, Stream
   generations still running stop between two characters and end with UNAVAILABLE; whatever
   is still running when the period is over (a client that stopped reading, say) is cancelled
   by ``grpc.Server.stop``.

A second signal skips what is left of the grace period.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from charlstm.service.admission import AdmissionControl
from charlstm.service.auth import TokenCheck
from charlstm.service.call_pipeline import CallPipeline, ServiceCollector
from charlstm.service.config import ServerConfig, add_serve_arguments
from charlstm.service.logs import AccessLog, configure_logging, log_event
from charlstm.service.metrics import Metrics
from charlstm.service.servicer import CharLstmServicer
from charlstm.v1 import charlstm_pb2, charlstm_pb2_grpc

__all__ = ["RunningServer", "create_server", "serve", "main", "SERVICE_NAME"]

log = logging.getLogger("charlstm.server")

SERVICE_NAME = charlstm_pb2.DESCRIPTOR.services_by_name["CharLstm"].full_name


class RunningServer:
    """A started server: its ports, its parts, and how to stop it."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        server: grpc.Server,
        servicer: CharLstmServicer,
        health_servicer: health.HealthServicer,
        admission: AdmissionControl,
        metrics: Metrics,
        port: int,
        metrics_port: int | None,
    ):
        self.config = config
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.admission = admission
        self.metrics = metrics
        self.port = port
        self.metrics_port = metrics_port
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` (or the configured host), for clients on this machine."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}" if ":" not in host else f"[{host.strip('[]')}]:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop (see the module docstring); blocks until stopped.

        ``grace`` defaults to the configured ``grace_period``. Calling it again while a stop
        is under way cuts the grace period short (``grpc.Server.stop(0)``) and waits.
        """
        grace = self.config.grace_period if grace is None else max(0.0, float(grace))
        with self._stop_lock:
            already = self._stopping
            self._stopping = True
        if already:
            if grace == 0:
                self.server.stop(0)
            self._stopped.wait()
            return

        deadline = time.monotonic() + grace
        log_event(log, "server_draining", grace_seconds=grace,
                  in_flight=self.admission.in_flight)
        self.health.enter_graceful_shutdown()
        self.admission.start_draining()
        self.servicer.begin_shutdown()
        jobs = threading.Thread(
            target=self._shutdown_jobs, args=(grace,), name="charlstm-jobs-shutdown", daemon=True
        )
        jobs.start()
        # Most of the grace period for calls to finish on their own; then generations are
        # told to stop, which leaves their calls a moment to end with a proper status before
        # grpc cancels whatever remains.
        margin = min(0.5, grace * 0.2)
        drained = self.admission.wait_idle(deadline - margin - time.monotonic())
        if not drained:
            self.servicer.end_streams()
            drained = self.admission.wait_idle(deadline - time.monotonic())
        self.server.stop(max(0.0, deadline - time.monotonic())).wait()
        jobs.join()
        self.metrics.stop_http()
        log_event(log, "server_stopped", drained=drained)
        self._stopped.set()

    def _shutdown_jobs(self, grace: float) -> None:
        try:
            self.servicer.shutdown_jobs(grace)
        except Exception:  # noqa: BLE001 - the server must still stop
            log.exception("shutting down training jobs failed",
                          extra={"fields": {"event": "jobs_shutdown_failed"}})

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` passes (False)."""
        return self._stopped.wait(timeout)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    try:
        with open(config.tls_cert, "rb") as f:
            cert = f.read()
        with open(config.tls_key, "rb") as f:  # type: ignore[arg-type]
            key = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS certificate or key: {exc}") from exc
    return grpc.ssl_server_credentials([(key, cert)])


def _connection_age_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments that close client connections after ``--max-connection-age``.

    Clients balancing over replicas (round_robin) only learn of a new replica when they
    reconnect; a connection that lives for ever would keep its calls on the old ones. After the
    age the server sends GOAWAY: new calls go over a new connection, calls in flight get the
    grace period to finish. gRPC adds +-10% jitter so that clients do not all reconnect at once.
    """
    if config.max_connection_age <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000)),
    ]


def create_server(config: ServerConfig, *, metrics: Metrics | None = None) -> RunningServer:
    """Build and start a server for ``config``; returns once it is SERVING.

    ``config.port`` 0 picks a free port (``RunningServer.port``); likewise
    ``config.metrics_port`` 0 (``RunningServer.metrics_port``; None when disabled).
    Raises RuntimeError when the port cannot be bound, ValueError for unreadable TLS files.
    """
    metrics = metrics if metrics is not None else Metrics()
    servicer = CharLstmServicer(config, metrics=metrics)
    admission = AdmissionControl()
    pipeline = CallPipeline(AccessLog(metrics), admission,
                            TokenCheck(config.token) if config.token else None)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.thread_pool_size, thread_name_prefix="charlstm-rpc"),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Fail loudly if another process holds the port instead of sharing it.
            ("grpc.so_reuseport", 0),
            *_connection_age_options(config),
        ],
    )
    services = ServiceCollector()  # registered through the pipeline's wrappers below
    charlstm_pb2_grpc.add_CharLstmServicer_to_server(servicer, services)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix="charlstm-health"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    for name in (health.OVERALL_HEALTH, SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), services
    )
    pipeline.install(server, services)

    credentials = _credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {config.address}: {exc}") from exc
    if port == 0:
        raise RuntimeError(f"cannot listen on {config.address}")

    metrics_port = None
    try:
        if config.metrics_enabled:
            try:
                metrics_port = metrics.start_http(config.metrics_port, addr=config.host)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot serve metrics on {config.host}:{config.metrics_port}: {exc}") from exc
        servicer.start()
        server.start()
    except BaseException:
        # Leave nothing behind: the bound port, the metrics endpoint, the job scheduler.
        server.stop(0)
        metrics.stop_http()
        servicer.shutdown_jobs(0)
        raise
    for name in (health.OVERALL_HEALTH, SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log_event(log, "server_started", address=config.host, port=port, metrics_port=metrics_port,
              store=config.store, tls=credentials is not None, auth=bool(config.token),
              max_streams=config.max_streams, threads=config.thread_pool_size,
              shared_store=config.store_is_shared,
              replica=getattr(servicer.jobs, "replica_id", None))
    return RunningServer(
        config=config, server=server, servicer=servicer, health_servicer=health_servicer,
        admission=admission, metrics=metrics, port=port, metrics_port=metrics_port,
    )


def serve(config: ServerConfig) -> int:
    """Run a server until SIGTERM or SIGINT, then drain it. Returns the exit status."""
    configure_logging(config.log_level, config.log_format)
    try:
        running = create_server(config)
    except Exception as exc:  # noqa: BLE001 - report any start-up failure, exit non-zero
        log_event(log, "server_failed_to_start", logging.ERROR, error=str(exc),
                  error_type=type(exc).__name__)
        return 1

    signals = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signals
        signals += 1
        grace = None if signals == 1 else 0.0  # a second signal: stop now
        log_event(log, "signal_received", signal=signal.Signals(signum).name,
                  grace_seconds=config.grace_period if grace is None else 0)
        # stop() blocks for the grace period: never in the signal handler itself.
        threading.Thread(target=running.stop, args=(grace,), name="charlstm-stop",
                         daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    while not running.wait(timeout=1.0):
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """``charlstm serve``: parse the flags (and CHARLSTM_* environment variables), serve."""
    parser = argparse.ArgumentParser(
        prog="charlstm serve",
        description="Serve charlstm models over gRPC: training jobs, Predict, Stream and model "
        "management, with health checks, reflection and Prometheus metrics.",
    )
    add_serve_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config = ServerConfig.from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    return serve(config)


if __name__ == "__main__":  # python -m charlstm.service.server
    raise SystemExit(main())
