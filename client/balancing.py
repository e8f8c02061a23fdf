"""Spreading calls over several replicas with gRPC's own client-side load balancing.

A replicated deployment is reached through one channel whose target names every replica:

- ``"10.0.0.1:50051,10.0.0.2:50051"`` (a comma-separated list) becomes the static target
  ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (host names in the list are resolved once, here,
  because gRPC's static ``ipv4:``/``ipv6:`` schemes take addresses only);
- ``"dns:///charlstm.default.svc:50051"`` is resolved (and re-resolved) by gRPC itself, which is
  what a Kubernetes headless Service needs: one A record per ready pod.

Such a channel gets a service config (:func:`replica_service_config`) with the ``round_robin``
policy, so unary calls rotate over the connected replicas, and a ``retryPolicy`` for the calls
that are safe to repeat only: a call refused with UNAVAILABLE by a replica that is going away is
retried by gRPC itself, on the next replica, before the library's own backoff
(:mod:`charlstm.client.retry`) comes into play. Train, Stream, CancelJob, DeleteModel and
UploadCorpus are never listed: gRPC must not repeat them.

A Stream session is one call, so it stays on the replica that opened it (see
``StreamSession``'s ``reopen`` option for taking it over elsewhere after UNAVAILABLE).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass

__all__ = [
    "IDEMPOTENT_METHODS",
    "ReplicaTarget",
    "replica_service_config",
    "replica_target",
]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:(?!\d)", re.IGNORECASE)  # unix:, xds:, ... not host:1
SERVICE = "charlstm.v1.CharLstm"
HEALTH_SERVICE = "grpc.health.v1.Health"

#: (service, method) pairs gRPC may retry: reads, Predict, Evaluate, SetLabel (setting a label
#: twice is setting it once), WatchJob (gRPC only retries a stream before its first reply) and
#: health checks.
IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    *((SERVICE, m) for m in ("GetJob", "ListJobs", "WatchJob", "Predict", "Evaluate",
                             "ListModels", "GetModel", "SetLabel")),
    (HEALTH_SERVICE, "Check"),
)


@dataclass(frozen=True)
class ReplicaTarget:
    """What to hand gRPC for a target: the target string and whether it names replicas."""

    target: str
    balanced: bool  # several addresses (or a DNS name): round_robin over them


def _split_host_port(address: str) -> tuple[str, str]:
    address = address.strip()
    if address.startswith("["):  # [::1]:50051
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {address!r}: expected [IPv6]:PORT")
        return host, port
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad address {address!r} in a server list: expected HOST:PORT")
    return host, port


def _resolve(host: str, port: str) -> list[str]:
    """``host:port`` as ``ip:port`` strings (IPv6 in brackets), IPv4 first."""
    try:
        ipaddress.ip_address(host)
        found = [host]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {host!r} in the server list: {exc}") from None
        found = sorted(dict.fromkeys(info[4][0] for info in infos), key=lambda ip: ":" in ip)
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in found]


def replica_target(target: str) -> ReplicaTarget:
    """Turn a user's target into a gRPC target (see the module docstring).

    A single ``host:port`` is left exactly as it is (one server: nothing to balance). A
    ``dns:///`` target is balanced over whatever addresses gRPC resolves it to. A
    comma-separated list becomes a static ``ipv4:``/``ipv6:`` target; ValueError if an entry is
    malformed or does not resolve, or if the list mixes IPv4 and IPv6 (gRPC's static targets
    take one family).
    """
    text = target.strip()
    if text.startswith("dns:"):
        return ReplicaTarget(text, True)
    if text.startswith(("ipv4:", "ipv6:")):  # already a static list for gRPC
        return ReplicaTarget(text, "," in text)
    if "," not in text or _SCHEME.match(text):  # one server, or a target we leave to gRPC
        return ReplicaTarget(text, False)
    addresses: list[str] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        host, port = _split_host_port(entry)
        # One address per host: a name resolving to both ::1 and 127.0.0.1 is still one server.
        addresses.append(_resolve(host, port)[0])
    families = {"ipv6" if a.startswith("[") else "ipv4" for a in addresses}
    if len(families) != 1:
        raise ValueError(f"server list {target!r} mixes IPv4 and IPv6 addresses; use one family")
    return ReplicaTarget(f"{families.pop()}:{','.join(dict.fromkeys(addresses))}", True)


def replica_service_config(
    *, max_attempts: int = 3, initial_backoff: float = 0.05, max_backoff: float = 1.0
) -> str:
    """The service config (JSON) of a replicated target: ``round_robin``, and a ``retryPolicy``
    on UNAVAILABLE for :data:`IDEMPOTENT_METHODS` only. ``max_attempts`` is capped by gRPC at 5.
    """
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": s, "method": m} for s, m in IDEMPOTENT_METHODS],
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": f"{initial_backoff:g}s",
                "maxBackoff": f"{max_backoff:g}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    }
    return json.dumps(config)


def replica_channel_options(target: str) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and the extra channel arguments for ``target``: none for one server;
    the replica service config (and retries switched on) for a list or a DNS name."""
    resolved = replica_target(target)
    if not resolved.balanced:
        return resolved.target, []
    return resolved.target, [
        ("grpc.service_config", replica_service_config()),
        ("grpc.enable_retries", 1),
        # The service config above is ours; a DNS TXT record must not replace it.
        ("grpc.service_config_disable_resolution", 1),
    ]
