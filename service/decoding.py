"""Parses request messages inside the call, so a malformed one is INVALID_ARGUMENT.

grpc's sync server deserializes requests before any handler runs and answers a message that
fails to parse (bytes that are not protobuf, invalid UTF-8 in a ``string`` field) with
INTERNAL "Exception deserializing request!" -- a server error for a client mistake. This
interceptor, installed innermost, takes the deserializer off each handler and parses in the
handler instead, ending the call with INVALID_ARGUMENT when parsing fails.

A streamed request that fails to parse ends the call the same way, even when the handler reads
its requests on another thread (Stream's inbox): the status is set on the call before the
request iterator raises, and grpc sends it when the handler returns.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from charlstm.service.errors import InvalidArgument, to_status
from charlstm.service.logs import current_request_id

__all__ = ["RequestDecodingInterceptor"]


class RequestDecodingInterceptor(grpc.ServerInterceptor):
    """Moves request parsing into the handler: malformed messages get INVALID_ARGUMENT."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method

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

        def unary_request(behavior: Callable) -> Callable:
            def wrapped(raw: bytes, context: grpc.ServicerContext) -> Any:
                return behavior(decode(raw, context), context)
            return wrapped

        def unary_request_stream(behavior: Callable) -> Callable:
            def wrapped(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
                yield from behavior(decode(raw, context), context)
            return wrapped

        def stream_request(behavior: Callable) -> Callable:
            def wrapped(raws: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                return behavior(decode_all(raws, context), context)
            return wrapped

        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_request(handler.unary_unary), response_serializer=serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                unary_request_stream(handler.unary_stream), response_serializer=serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                stream_request(handler.stream_unary), response_serializer=serializer)
        return grpc.stream_stream_rpc_method_handler(
            stream_request(handler.stream_stream), response_serializer=serializer)
