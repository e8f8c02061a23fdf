"""The server's configuration: one dataclass, its command-line flags and their environment
variables.

Every flag ``--some-name`` can also be set with the environment variable
``CHARLSTM_SOME_NAME``; a flag on the command line wins over the environment, which wins over
the default. ``charlstm serve --help`` lists them all with their defaults.

Choices worth knowing:

- ``--host`` defaults to ``0.0.0.0`` (all IPv4 interfaces) because the server is meant to run in
  a container behind a port mapping; set ``--token`` (and TLS) before exposing it, or bind
  ``127.0.0.1``.
- ``--metrics-port`` defaults to 9090; ``0`` picks a free port (logged at start-up) and
  ``off`` (or any negative number) disables the metrics endpoint.
- ``--max-workers 0`` (the default) sizes the RPC thread pool from ``--max-streams``: the sync
  server holds one pool thread per open Stream session, so the pool must outgrow the stream
  limit for unary calls to keep flowing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from charlstm.service.store import S3Settings
from charlstm.service.store.s3_settings import parse_bool

__all__ = ["ServerConfig", "add_serve_arguments", "ENV_PREFIX"]

ENV_PREFIX = "CHARLSTM_"
MiB = 1024 * 1024

# Pool threads kept free for unary calls on top of one per open stream.
_UNARY_THREADS = 16


@dataclass
class ServerConfig:
    """Everything ``charlstm serve`` can be told. Defaults are the documented ones."""

    host: str = "0.0.0.0"
    port: int = 50051
    store: str = "./charlstm-store"
    max_workers: int = 0  # 0: max_streams + 16
    max_jobs: int = 1
    max_queued_jobs: int = 100
    max_message_bytes: int = 16 * MiB
    max_corpus_bytes: int = 64 * MiB
    max_generate_chars: int = 10_000
    max_streams: int = 256
    max_inputs: int = 64
    max_input_chars: int = 1_000_000
    idle_timeout: float = 300.0
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int = 9090  # 0: a free port; negative: off
    log_level: str = "INFO"
    log_format: str = "text"
    model_cache_size: int = 8
    prompt_cache_size: int = 1024  # 0: off
    grace_period: float = 15.0
    batching: str = "on"
    max_batch_size: int = 256
    batch_max_wait_ms: float = 2.0
    refresh_seconds: float = 2.0
    local_refresh_ms: float = 20.0
    max_connection_age: float = 0.0  # 0: connections live for ever
    max_connection_age_grace: float = 30.0
    shared_store: bool = False
    lease_seconds: float = 15.0
    replica_id: str | None = None
    # Object storage (--store s3://BUCKET/PREFIX); unset: boto3's AWS_* environment variables.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_single_writer: bool = False
    train_ranks: int = 1  # > 1: each job trains data-parallel under `mpirun -np train_ranks`
    demo_models: bool = True  # import the bundled models (shakespeare) the store lacks

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting when a value is out of range."""
        def at_least(name: str, lo: float) -> None:
            if getattr(self, name) < lo:
                raise ValueError(f"{name} must be >= {lo} (got {getattr(self, name)!r})")

        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be in [0, 65535] (got {self.port})")
        if self.metrics_port > 65535:
            raise ValueError(f"metrics_port must be <= 65535 (got {self.metrics_port})")
        for name in ("max_jobs", "max_queued_jobs", "max_streams", "max_inputs",
                     "max_generate_chars", "model_cache_size", "max_input_chars"):
            at_least(name, 1)
        at_least("max_workers", 0)
        at_least("prompt_cache_size", 0)
        at_least("max_message_bytes", 1024)
        at_least("max_corpus_bytes", 1)
        if not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds (got {self.idle_timeout})")
        at_least("grace_period", 0)
        at_least("refresh_seconds", 0)
        at_least("local_refresh_ms", 0)
        at_least("max_connection_age", 0)
        at_least("max_connection_age_grace", 0)
        if not self.lease_seconds >= 1:
            raise ValueError(f"lease_seconds must be >= 1 (got {self.lease_seconds})")
        if self.replica_id is not None and not self.replica_id:
            self.replica_id = None
        at_least("train_ranks", 1)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json (got {self.log_format!r})")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got {self.log_level!r})"
            )
        if self.batching not in ("on", "off"):
            raise ValueError(f"batching must be on or off (got {self.batching!r})")
        at_least("max_batch_size", 1)
        if not 0 <= self.batch_max_wait_ms <= 1000:
            raise ValueError(
                f"batch_max_wait_ms must be in [0, 1000] (got {self.batch_max_wait_ms})")
        if self.token is not None and not self.token:
            self.token = None
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ValueError("s3_endpoint_url must start with http:// or https:// "
                             f"(got {self.s3_endpoint_url!r})")

    def s3_settings(self) -> S3Settings:
        """How to reach an ``s3://`` store (ignored for a directory store)."""
        return S3Settings(endpoint_url=self.s3_endpoint_url or None, region=self.s3_region or None,
                          access_key_id=self.s3_access_key_id or None,
                          secret_access_key=self.s3_secret_access_key or None,
                          single_writer=self.s3_single_writer)

    @property
    def thread_pool_size(self) -> int:
        """Threads for the gRPC server: ``max_workers``, or enough for every stream plus
        some for unary calls when ``max_workers`` is 0."""
        return self.max_workers or self.max_streams + _UNARY_THREADS

    @property
    def store_is_shared(self) -> bool:
        """True when other replicas may use the store: ``--shared-store``, or any store that is
        not a local directory (``s3://...``)."""
        scheme, sep, _ = self.store.partition("://")
        return self.shared_store or bool(sep and scheme != "file")

    @property
    def effective_refresh_seconds(self) -> float:
        """``refresh_seconds`` on a shared store. A store only this process writes to is read
        on every request (0): cheap on a local directory, and a version saved by a tool beside
        the server serves at once, as it always did."""
        return self.refresh_seconds if self.store_is_shared else 0.0

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "ServerConfig":
        """Build from the namespace of a parser set up by :func:`add_serve_arguments`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


# ---------------------------------------------------------------------------------------------
# Flags


def _port_or_off(text: str) -> int:
    if text.strip().lower() in ("off", "none", "disabled"):
        return -1
    return int(text)


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G (binary) suffix: ``16M`` = 16 MiB."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1024, "M": MiB, "G": 1024 * MiB}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    return int(float(t) * scale)


_HELP: dict[str, str] = {
    "host": "interface to listen on (0.0.0.0: all IPv4; :: for IPv6; 127.0.0.1: local only)",
    "port": "gRPC port (0: a free port)",
    "store": "directory holding models, corpora and job records, or s3://BUCKET/PREFIX for "
    "S3-compatible object storage shared by several servers",
    "max_workers": "RPC thread-pool size (0: max-streams + 16)",
    "max_jobs": "training jobs running at once; the rest queue",
    "max_queued_jobs": "training jobs waiting at once; more get RESOURCE_EXHAUSTED",
    "max_message_bytes": "largest gRPC message accepted or sent (suffixes K, M, G)",
    "max_corpus_bytes": "largest corpus accepted, inline or uploaded (suffixes K, M, G)",
    "max_generate_chars": "most characters one Predict input or Stream generate may ask for",
    "max_streams": "Stream sessions open at once; more get RESOURCE_EXHAUSTED",
    "max_inputs": "most inputs in one Predict request",
    "max_input_chars": "most characters in one Predict request (all inputs) or Stream feed",
    "idle_timeout": "seconds a Stream session may stay idle before it ends with DEADLINE_EXCEEDED",
    "token": "bearer token required on every RPC but health (unset: no authentication); "
    "prefer the environment variable, command lines are visible to other users",
    "tls_cert": "PEM certificate chain; with --tls-key, serve TLS",
    "tls_key": "PEM private key for --tls-cert",
    "metrics_port": "Prometheus /metrics HTTP port (0: a free port; off: disabled)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text (key=value) or json, one line per event",
    "model_cache_size": "model versions kept loaded in memory (least recently used go first)",
    "prompt_cache_size": "Predict inputs (up to 256 characters) whose state after the text is "
    "kept, so a repeated prompt is not fed again (about 4 KB each at H=256 L=2; 0: off)",
    "grace_period": "seconds in-flight calls and running jobs get to finish on SIGTERM/SIGINT",
    "batching": "on: concurrent Stream sessions and Predict calls on one model version advance "
    "together, one matrix product per step; off: each request steps the model alone",
    "max_batch_size": "most rows (sessions, Predict inputs) advanced by one batched step",
    "batch_max_wait_ms": "milliseconds a batched step may wait for requests about to arrive",
    "refresh_seconds": "seconds a resolved 'latest' or label is reused before the store is read "
    "again: a version written by another replica serves here within this time (0: every request)",
    "local_refresh_ms": "on a store only this server uses: milliseconds a resolved 'latest' or "
    "label is reused before the store's folders are looked at again; a version saved there by "
    "another tool serves within this time, one saved through this server at once (0: every "
    "request)",
    "max_connection_age": "seconds after which a client connection is asked to reconnect "
    "(GOAWAY), so that load balancing reaches new replicas (0: never)",
    "max_connection_age_grace": "seconds calls in flight (Stream sessions) keep a connection "
    "past --max-connection-age",
    "shared_store": "several replicas share this store: job records, corpora and job leases "
    "are kept in the store, so every replica lists the same jobs and each job runs on one",
    "lease_seconds": "with --shared-store: a running job's lease expires this long after its "
    "replica stopped renewing it (renewed every third of it); the job is then reported failed",
    "replica_id": "this replica's name in job leases (default: host name and process id)",
    "s3_endpoint_url": "URL of an S3-compatible server, e.g. http://127.0.0.1:8333 (unset: "
    "AWS_ENDPOINT_URL, else AWS S3)",
    "s3_region": "region of the bucket (unset: AWS_REGION / AWS_DEFAULT_REGION)",
    "s3_access_key_id": "access key for the object store (unset: AWS_ACCESS_KEY_ID or ~/.aws)",
    "s3_secret_access_key": "secret key for the object store (unset: AWS_SECRET_ACCESS_KEY or "
    "~/.aws); prefer the environment variable, command lines are visible to other users",
    "s3_single_writer": "true: accept an object store that ignores conditional writes, "
    "promising that this is the only process writing to it (otherwise it is refused)",
    "train_ranks": "MPI ranks per training job: above 1, each job trains data-parallel under "
    "`mpirun -np N` (needs OpenMPI and the `mpi` extra)",
    "demo_models": "on: import the bundled demo models (shakespeare) the store lacks at start, "
    "never replacing a model of the same name; off: do not",
}

_TYPES: dict[str, Callable[[str], Any]] = {
    "metrics_port": _port_or_off,
    "max_message_bytes": _size,
    "max_corpus_bytes": _size,
    "log_level": lambda text: text.strip().upper(),
    "log_format": lambda text: text.strip().lower(),
    "batching": lambda text: text.strip().lower(),
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "log_format": ("text", "json"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "batching": ("on", "off"),
}


def add_serve_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    """Add one flag per :class:`ServerConfig` field to ``parser``; defaults come from
    ``CHARLSTM_<NAME>`` environment variables when set. Returns the parser."""
    env = os.environ if environ is None else environ
    for f in dataclasses.fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        env_name = ENV_PREFIX + f.name.upper()
        default = f.default
        if f.name in _TYPES:
            convert = _TYPES[f.name]
        elif isinstance(default, bool):
            convert = parse_bool  # --flag alone, or 1/0, true/false, yes/no, on/off
        elif isinstance(default, int):
            convert = int
        elif isinstance(default, float):
            convert = float
        else:
            convert = str
        if env_name in env:
            try:
                default = convert(env[env_name])
            except ValueError:
                parser.error(f"environment variable {env_name}={env[env_name]!r} is not valid "
                             f"for {flag}")
        shown = "unset" if default is None else default
        if f.name in ("token", "s3_secret_access_key") and default is not None:
            shown = "set from the environment"  # never print the secret
        parser.add_argument(
            flag,
            dest=f.name,
            type=convert,
            # A boolean flag alone means true (`--shared-store`); a value may follow.
            **({"nargs": "?", "const": True} if convert is parse_bool else {}),
            default=default,
            choices=_CHOICES.get(f.name),
            metavar=f.name.upper(),
            help=f"{_HELP[f.name]} (env {env_name}; default: {shown})",
        )
    return parser
