"""What every RPC goes through around its servicer method, wrapped once per method at start-up.

Each call, in this order (outermost first):

1. its request id (``logs.begin_request``), and once it is over one access-log line and the RPC
   metrics (``logs.AccessLog``), refused calls included;
2. the bearer-token check (``auth.py``, when a token is configured; health checks exempt);
3. admission control (``admission.py``: counted in flight, refused once draining; health
   checks exempt);
4. request parsing inside the call (``decoding.py``: a malformed message is INVALID_ARGUMENT);
5. the servicer method, whose ``rpc_errors`` turns its failures into statuses.

Why not ``grpc.ServerInterceptor``: grpc runs the interceptor pipeline on every call, and each
interceptor built a new method handler and its closures per call; under 8 Predict clients that
chain and its wrappers were a large share of the server's GIL time. Here
:class:`ServiceCollector` stands in for the server while the services register themselves,
:meth:`CallPipeline.install` wraps each of their method handlers once and registers the
wrapped ones on the real server; a call then costs one wrapper function.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, Sequence

import grpc

from charlstm.service.admission import AdmissionControl
from charlstm.service.auth import TokenCheck
from charlstm.service.decoding import request_parser
from charlstm.service.logs import AccessLog, begin_request

__all__ = ["CallPipeline", "ServiceCollector", "HEALTH_PREFIX"]

HEALTH_PREFIX = "/grpc.health.v1.Health/"

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


class ServiceCollector:
    """Takes the place of a ``grpc.Server`` in the generated ``add_*Servicer_to_server``
    functions (and ``enable_server_reflection``): keeps the method handlers they register."""

    def __init__(self) -> None:
        #: service name -> {method name -> handler}
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        #: handlers registered without their methods' names (none in grpcio >= 1.62's code)
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services.setdefault(service, {}).update(handlers)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        # Generated code registers the same methods by name as well; those wrapped copies are
        # found first, so these only answer for methods registered nowhere else.
        self.generic.extend(handlers)


class CallPipeline:
    """Builds each method's wrapped handler (see the module docstring)."""

    def __init__(self, access: AccessLog, admission: AdmissionControl,
                 token: TokenCheck | None = None):
        self._access = access
        self._admission = admission
        self._token = token

    def install(self, server: grpc.Server, services: ServiceCollector) -> None:
        """Register on ``server`` the wrapped handlers of every collected service."""
        for service, handlers in services.services.items():
            wrapped = {name: self.wrap(f"/{service}/{name}", handler)
                       for name, handler in handlers.items()}
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, wrapped),))
            # Registered by name, grpc matches the method without asking generic handlers.
            server.add_registered_method_handlers(service, wrapped)
        if services.generic:
            server.add_generic_rpc_handlers((_WrapOnFirstUse(self, services.generic),))

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` with the per-call work of ``method`` (its full name) around it."""
        streaming_request = handler.request_streaming
        parse = None
        if handler.request_deserializer is not None:
            parse = request_parser(method, handler.request_deserializer, streaming_request)
        token = self._token if self._token is not None and self._token.applies_to(method) \
            else None
        admission = None if method.startswith(HEALTH_PREFIX) else self._admission
        if handler.response_streaming:
            behaviour = handler.stream_stream if streaming_request else handler.unary_stream
            wrapped = self._streamed(method, behaviour, parse, token, admission)
            make = (grpc.stream_stream_rpc_method_handler if streaming_request
                    else grpc.unary_stream_rpc_method_handler)
        else:
            behaviour = handler.stream_unary if streaming_request else handler.unary_unary
            wrapped = self._unary(method, behaviour, parse, token, admission)
            make = (grpc.stream_unary_rpc_method_handler if streaming_request
                    else grpc.unary_unary_rpc_method_handler)
        return make(wrapped, request_deserializer=None if parse else handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _unary(self, method: str, behaviour: Behaviour, parse: Behaviour | None,
               token: TokenCheck | None, admission: AdmissionControl | None) -> Behaviour:
        record = self._access.record

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = begin_request(context.invocation_metadata())
            started = time.perf_counter()
            error = True
            try:
                if token is not None:
                    token.check(context)
                if admission is not None:
                    admission.enter(context)
                try:
                    response = behaviour(parse(request, context) if parse else request, context)
                finally:
                    if admission is not None:
                        admission.leave()
                error = False
                return response
            finally:
                record(method, context, started, request_id, error)

        return call

    def _streamed(self, method: str, behaviour: Behaviour, parse: Behaviour | None,
                  token: TokenCheck | None, admission: AdmissionControl | None) -> Behaviour:
        record = self._access.record

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id = begin_request(context.invocation_metadata())
            started = time.perf_counter()
            recorded = threading.Lock()

            def finish(error: bool) -> None:
                if recorded.acquire(blocking=False):
                    record(method, context, started, request_id, error)

            # A cancelled stream's generator is only closed when it is collected: the
            # termination callback records the call promptly either way.
            context.add_callback(lambda: finish(not context.is_active()
                                                and context.code() is None))
            error = True
            try:
                if token is not None:
                    token.check(context)
                leave = admission.enter_stream(context) if admission is not None else None
                try:
                    # grpc iterates a response stream on one pool thread, start to end, so the
                    # request id set above holds for the whole generator.
                    yield from behaviour(parse(request, context) if parse else request, context)
                finally:
                    if leave is not None:
                        leave()
                error = False
            finally:
                finish(error)

        return call


class _WrapOnFirstUse(grpc.GenericRpcHandler):
    """Generic handlers registered without method names, each method wrapped on its first
    call and kept (only methods that exist are kept, so the cache stays bounded)."""

    def __init__(self, pipeline: CallPipeline, handlers: list[grpc.GenericRpcHandler]):
        self._pipeline = pipeline
        self._handlers = handlers
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._lock = threading.Lock()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        found = self._wrapped.get(method)
        if found is not None:
            return found
        for generic in self._handlers:
            handler = generic.service(handler_call_details)
            if handler is not None:
                with self._lock:
                    return self._wrapped.setdefault(method, self._pipeline.wrap(method, handler))
        return None
