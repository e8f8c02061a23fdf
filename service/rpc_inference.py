"""The Predict and Stream RPCs: thin methods that check the request, call the inference core
(``inference.py``, ``sessions.py``) and build the response.

Mixed into ``CharLstmServicer``, which provides ``self.config``, ``self.models``,
``self.sessions``, ``self.stepper``, ``self.prompts`` and ``self.metrics``.
"""

from __future__ import annotations

import logging
from typing import Iterator

import grpc

from charlstm.engine import Sampler
from charlstm.service import converters
from charlstm.service.config import ServerConfig
from charlstm.service.errors import InvalidArgument, Unavailable, rpc_errors
from charlstm.service.inference import Stepper, predict
from charlstm.service.logs import log_event
from charlstm.service.metrics import Metrics
from charlstm.service.model_cache import LoadedModel, ModelCache
from charlstm.service.prompt_cache import PromptCache
from charlstm.service.sessions import CLOSED, RequestReader, SessionRegistry, StreamSession
from charlstm.v1 import charlstm_pb2 as pb

__all__ = ["InferenceRpcs"]

log = logging.getLogger("charlstm.service.inference")

DEFAULT_NEXT_TOP_K = 5
MAX_CHARS_PER_MESSAGE = 256


class InferenceRpcs:
    """Predict and Stream."""

    config: ServerConfig
    models: ModelCache
    prompts: PromptCache
    sessions: SessionRegistry
    stepper: Stepper
    metrics: Metrics

    # -- Predict -----------------------------------------------------------------------------

    @rpc_errors
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        inputs = list(request.inputs)
        if not inputs:
            raise InvalidArgument("inputs must hold at least one text (an empty string "
                                  "conditions on nothing)", field="inputs")
        converters.limit(len(inputs), self.config.max_inputs, what="the number of inputs",
                         flag="--max-inputs", field="inputs")
        converters.limit(sum(len(t) for t in inputs), self.config.max_input_chars,
                         what="the total length of the inputs in characters",
                         flag="--max-input-chars", field="inputs")
        length = self._generation_length(request.length, "length", allow_zero=True)
        options = converters.sampling_options(request.sampling, "sampling")
        loaded = self._model(request.model, "model")
        next_top_k = self._next_top_k(
            request.next_top_k if request.HasField("next_top_k") else None,
            default=DEFAULT_NEXT_TOP_K if length == 0 else 0, loaded=loaded,
        )

        results = predict(
            loaded, inputs, next_top_k=next_top_k, length=length, options=options,
            stepper=self.stepper, should_stop=lambda: not context.is_active(),
            cache=self.prompts,
        )
        if length:
            self.metrics.generated_chars_total.inc(sum(len(r.continuation) for r in results))
        response = pb.PredictResponse(model=loaded.name, version=loaded.version)
        for r in results:  # built in place (see converters.add_char_probabilities)
            prediction = response.predictions.add(input=r.input, continuation=r.continuation)
            converters.add_char_probabilities(prediction.next, r.next)
            prediction.continuation_probabilities.extend(r.probabilities)
        return response

    # -- Stream ------------------------------------------------------------------------------

    @rpc_errors
    def Stream(
        self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        reader = RequestReader(request_iterator, context)
        opening = self.sessions.first_request(reader)
        if opening is CLOSED:
            return  # the client left without asking for anything
        if opening.WhichOneof("action") != "open":
            raise InvalidArgument(
                "the first message of a Stream must be `open` (got "
                f"`{opening.WhichOneof('action') or 'nothing'}`)", field="open",
            )
        session = self._open_session(opening.open)
        context.add_callback(lambda: self.sessions.close(session))
        try:
            yield pb.StreamResponse(opened=pb.StreamOpened(
                session_id=session.id, model=session.loaded.name,
                version=session.loaded.version, vocab_size=session.loaded.vocab_size,
            ))
            if opening.open.prefix:
                yield self._prediction(*session.feed(opening.open.prefix))
            while True:
                request = self.sessions.next_request(session, reader)
                if request is CLOSED:
                    return  # the client finished sending and everything asked is answered
                yield from self._handle(session, request, context)
        finally:
            self.sessions.close(session)

    def _open_session(self, msg: pb.StreamOpen) -> StreamSession:
        self._check_text(msg.prefix, "open.prefix")
        sampling = converters.sampling_options(msg.sampling, "open.sampling")
        loaded = self._model(msg.model, "open.model")
        next_top_k = self._next_top_k(
            msg.next_top_k if msg.HasField("next_top_k") else None,
            default=DEFAULT_NEXT_TOP_K, loaded=loaded, field="open.next_top_k",
        )
        chars_per_message = 1
        if msg.HasField("chars_per_message"):
            chars_per_message = self._chars_per_message(msg.chars_per_message,
                                                        "open.chars_per_message")
        session = self.sessions.open(
            loaded, sampling=sampling, next_top_k=next_top_k,
            chars_per_message=chars_per_message,
        )
        log_event(log, "stream_opened", session=session.id, model=loaded.name,
                  version=loaded.version)
        return session

    def _handle(
        self, session: StreamSession, request: pb.StreamRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        action = request.WhichOneof("action")
        if action == "feed":
            self._check_text(request.feed.text, "feed.text")
            yield self._prediction(*session.feed(request.feed.text))
        elif action == "reset":
            yield self._prediction(*session.reset())
        elif action == "generate":
            yield from self._generate(session, request.generate, context)
        elif action == "open":
            raise InvalidArgument("this Stream session is already open; `open` may only be the "
                                  "first message", field="open")
        else:
            raise InvalidArgument("a Stream message must set one of open, feed, generate or "
                                  "reset", field="action")

    def _generate(
        self, session: StreamSession, msg: pb.StreamGenerate, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        length = self._generation_length(msg.length, "generate.length", allow_zero=False)
        sampler: Sampler | None = None
        if msg.HasField("sampling"):
            # A full replacement of the session's options for this generation.
            sampler = Sampler(converters.sampling_options(msg.sampling, "generate.sampling"))

        polls = 0

        def stopped() -> bool:
            # Polled once per character: the session's flag and the drain's are plain reads;
            # the call's own state takes a lock, so it is asked every 16th time (a cancelled
            # call also closes the session, through the callback set when it opened).
            nonlocal polls
            polls += 1
            return (session.closed or self.sessions.generation_stopped
                    or (polls % 16 == 0 and not context.is_active()))

        # Characters per message: exactly `fill` (the session's chars_per_message), or, with
        # generate.max_chars_per_message, whatever is already drawn up to that many.
        fill, coalesce = session.chars_per_message, 0
        if msg.HasField("max_chars_per_message"):
            coalesce = self._chars_per_message(msg.max_chars_per_message,
                                               "generate.max_chars_per_message")
            fill = coalesce
        generated = 0
        counted = 0  # characters sent and added to generated_chars_total (in steps: its lock)
        text: list[str] = []
        probs: list[float] = []
        try:
            # Waiting for whole messages (fill) lets a batched generation wake us once each.
            chunk = 1 if coalesce else fill
            for char, p, ready in session.generate(length, sampler, should_stop=stopped,
                                                   chunk=chunk):
                generated += 1
                if fill == 1:  # one character a message (the default): no lists to join
                    yield pb.StreamResponse(chars=pb.GeneratedChars(text=char, probabilities=(p,)))
                else:
                    text.append(char)
                    probs.append(p)
                    if len(text) < fill and (not coalesce or ready):
                        continue
                    message = pb.GeneratedChars(text="".join(text), probabilities=probs)
                    text, probs = [], []  # handed over: counted even if the call ends at yield
                    yield pb.StreamResponse(chars=message)
                if generated - counted >= 64:
                    self.metrics.generated_chars_total.inc(generated - len(text) - counted)
                    counted = generated - len(text)
            if self.sessions.generation_stopped and context.is_active():
                raise Unavailable(
                    f"the server is shutting down: this generation stopped after {generated} of "
                    f"{length} characters and Stream session {session.id} is closed; open a new "
                    "one"
                )
            if session.closed or not context.is_active():
                return
            if text:
                message = pb.GeneratedChars(text="".join(text), probabilities=probs)
                text = []
                yield pb.StreamResponse(chars=message)
            yield pb.StreamResponse(end=pb.GenerationEnd(generated=generated))
        finally:
            # Every character handed to gRPC counts (a cancelled call's last message too).
            if generated - len(text) > counted:
                self.metrics.generated_chars_total.inc(generated - len(text) - counted)

    # -- shared checks -----------------------------------------------------------------------

    def _model(self, ref: pb.ModelRef, field: str) -> LoadedModel:
        name, version_ref = converters.model_ref(ref, field)
        return self.models.get(name, version_ref)

    def _generation_length(self, value: int, field: str, *, allow_zero: bool) -> int:
        lo = 0 if allow_zero else 1
        if value < lo:
            raise InvalidArgument(f"{field} must be >= {lo} (got {value})", field=field)
        converters.limit(int(value), self.config.max_generate_chars, what=field,
                         flag="--max-generate-chars", field=field)
        return int(value)

    def _next_top_k(self, value: int | None, *, default: int, loaded: LoadedModel,
                    field: str = "next_top_k") -> int:
        if value is None:
            return min(default, loaded.vocab_size)
        if not 0 <= value <= loaded.vocab_size:
            raise InvalidArgument(
                f"{field} must be in [0, {loaded.vocab_size}] (the vocabulary size of "
                f"{loaded.name} version {loaded.version}) (got {value})", field=field,
            )
        return int(value)

    @staticmethod
    def _chars_per_message(value: int, field: str) -> int:
        if not 1 <= value <= MAX_CHARS_PER_MESSAGE:
            raise InvalidArgument(f"{field} must be in [1, {MAX_CHARS_PER_MESSAGE}] (got {value})",
                                  field=field)
        return int(value)

    def _check_text(self, text: str, field: str) -> None:
        converters.limit(len(text), self.config.max_input_chars,
                         what=f"the length of {field} in characters", flag="--max-input-chars",
                         field=field)

    @staticmethod
    def _prediction(position: int, top: list[tuple[str, float]]) -> pb.StreamResponse:
        response = pb.StreamResponse(prediction=pb.NextChars(position=position))
        converters.add_char_probabilities(response.prediction.next, top)
        return response
