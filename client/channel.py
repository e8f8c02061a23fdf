"""Channels to the server: transport security, message limits, reconnection, the bearer token.

Shared by the sync and asyncio clients so that both talk to the server the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from charlstm.client.balancing import replica_channel_options

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20  # the server's default --max-message-bytes

Tls = bool | bytes
"""False: plaintext; True: TLS with the system's root certificates; bytes: TLS trusting these
PEM root certificates (a private CA or a self-signed server certificate)."""


def channel_options(
    max_message_bytes: int, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """Channel arguments. ``extra`` comes last and wins (for example
    ``("grpc.lb_policy_name", "round_robin")`` to spread calls over a DNS name's addresses)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Reconnect quickly after a server restart so that a retried call finds it: gRPC's
        # default first reconnection backoff is 1 s, longer than our first retry waits.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    options.extend(extra)
    return options


def prepare_target(
    target: str, max_message_bytes: int, extra: Sequence[tuple[str, Any]] = ()
) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target and channel arguments for a user's ``target``: one ``host:port`` as it
    is; a comma-separated list of replicas or a ``dns:///`` name with client-side round_robin
    and retries of idempotent calls (`charlstm.client.balancing`). ``extra`` wins."""
    grpc_target, balancing = replica_channel_options(target)
    return grpc_target, channel_options(max_message_bytes, [*balancing, *extra])


def channel_credentials(tls: Tls) -> grpc.ChannelCredentials | None:
    """TLS credentials for ``tls``, or None for a plaintext channel."""
    if tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, (bytes, bytearray)):
        return grpc.ssl_channel_credentials(root_certificates=bytes(tls))
    raise TypeError(
        f"tls must be False, True or PEM root certificates as bytes (got {type(tls).__name__})"
    )


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer <token>`` header, sent with every call.

    Sent as call metadata rather than call credentials because gRPC refuses call credentials on
    plaintext channels, and a token over plaintext on localhost is a legitimate setup.
    """
    if not token:
        return ()
    return (("authorization", f"Bearer {token}"),)


def open_channel(target: str, tls: Tls, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A sync channel (connects lazily, on the first call)."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(target: str, tls: Tls, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """A grpc.aio channel (bound to the running event loop)."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
