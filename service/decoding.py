"""Parses request messages inside the call, so a malformed one is INVALID_ARGUMENT.

grpc's sync server deserializes requests before any handler runs and answers a message that
fails to parse (bytes that are not protobuf, invalid UTF-8 in a ``string`` field) with
INTERNAL "Exception deserializing request!" -- a server error for a client mistake. The call
wrapper (``call_pipeline.py``) takes the deserializer off each handler and parses with
:func:`request_parser` inside the call instead, ending it with INVALID_ARGUMENT when parsing
fails.

A streamed request that fails to parse ends the call the same way: the status is set on the
call before the request iterator raises, and grpc sends it when the handler returns.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from charlstm.service.errors import InvalidArgument, to_status
from charlstm.service.logs import current_request_id

__all__ = ["request_parser"]


def request_parser(method: str, parse: Callable[[bytes], Any],
                   streaming: bool) -> Callable[[Any, grpc.ServicerContext], Any]:
    """``(raw, context) -> message`` for ``method``'s requests (``streaming``: an iterator of
    raw requests -> an iterator of messages), aborting with INVALID_ARGUMENT on a bad one."""

    def decode(raw: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            error = InvalidArgument(
                f"the request to {method} is not a valid message of its type (malformed "
                "protobuf, or a string field that is not valid UTF-8)")
            context.abort_with_status(to_status(error, request_id=current_request_id()))

    def decode_all(raws: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        for raw in raws:
            yield decode(raw, context)

    return decode_all if streaming else decode
