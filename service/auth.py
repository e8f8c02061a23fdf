"""Bearer-token authentication for every RPC but health checks.

With a token configured, a call must carry the metadata ``authorization: Bearer <token>``;
otherwise it ends with UNAUTHENTICATED before any handler runs. The comparison takes the same
time however much of the token matches (``hmac.compare_digest``).

Exempt: ``grpc.health.v1.Health`` only, so that load balancers and orchestrators can probe the
server without the secret. Server reflection is *not* exempt: it reveals the whole API, which
is no business of an unauthenticated caller (``grpcurl -H 'authorization: Bearer ...'`` works).

The check runs inside every call's wrapper (``call_pipeline.py``), first after the access log.
"""

from __future__ import annotations

import hmac

import grpc

from charlstm.service.errors import Unauthenticated, to_status
from charlstm.service.logs import current_request_id

__all__ = ["TokenCheck", "EXEMPT_PREFIXES"]

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


class TokenCheck:
    """Refuses calls without the configured bearer token (UNAUTHENTICATED)."""

    def __init__(self, token: str, exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES):
        if not token:
            raise ValueError("token must not be empty")
        self._expected = token.encode("utf-8")
        self._exempt = exempt_prefixes

    def applies_to(self, method: str) -> bool:
        """False for the exempt methods (health checks)."""
        return not method.startswith(self._exempt)

    def check(self, context: grpc.ServicerContext) -> None:
        """Abort the call with UNAUTHENTICATED unless its metadata holds the token."""
        problem = self.problem(context.invocation_metadata())
        if problem is not None:
            context.abort_with_status(
                to_status(Unauthenticated(problem), request_id=current_request_id()))

    def problem(self, metadata) -> str | None:
        """Why the call's credentials are refused, or None when they are good."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return ("missing credentials: this server requires the metadata "
                    "`authorization: Bearer <token>`")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not value[: len(_SCHEME)].lower() == _SCHEME:
            return "the authorization metadata must read `Bearer <token>`"
        presented = value[len(_SCHEME):].strip().encode("utf-8")
        if not hmac.compare_digest(presented, self._expected):
            return "invalid token"
        return None
