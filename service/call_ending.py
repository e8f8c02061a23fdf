"""Ending a server call, with a status, from a thread other than the one serving it.

A Stream session waiting for its next request is a gRPC pool thread blocked inside the call's
request iterator. grpcio's sync server gives that wait no timeout and no public way to end it
with a chosen status from outside: ``ServicerContext.cancel()`` ends it, but the client then
reads a bare CANCELLED, not why. :func:`end_call` cancels the call in gRPC core *with* a status
(``grpc_call_cancel_with_status``): the client reads that code and message, and the blocked
iterator raises in the serving thread, which then finishes the call's Python side.

Keeping a second thread per session blocked in the iterator instead (so the serving thread
could wait on a queue with a timeout) cost ~34 KB of resident memory per idle session.
"""

from __future__ import annotations

import logging

import grpc

__all__ = ["end_call"]

log = logging.getLogger("charlstm.service.call_ending")


def end_call(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> bool:
    """End the call of ``context`` now with ``code`` and ``details``; safe from any thread and
    on a call already over. Returns False when only a plain cancel was possible (the client
    then sees CANCELLED)."""
    # grpcio's own server context keeps the core call here (grpc._server._Context); the
    # cygrpc call's cancel(code, details) is the one grpcio's channel side uses as well.
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    cancel = getattr(call, "cancel", None)
    if cancel is not None:
        try:
            cancel(code.value[0], details)
            return True
        except Exception:  # noqa: BLE001 - an internal changed shape: fall back to cancel()
            log.warning("could not end a call with a status; cancelling it instead",
                        exc_info=True, extra={"fields": {"event": "end_call_fallback"}})
    context.cancel()
    return False
