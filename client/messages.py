"""Python arguments -> request messages, shared by the sync and asyncio clients.

Only checks that the server cannot make for us (two mutually exclusive arguments, an unknown
keyword) happen here, as `ValueError`/`TypeError` before any call; every range check is the
server's, which names the field in its INVALID_ARGUMENT error.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, Union

from charlstm.v1 import charlstm_pb2 as pb

CHUNK_BYTES = 1 << 20
"""Corpus uploads are sent in chunks of this many bytes (1 MiB): well under the server's
message limit, and large enough that per-message overhead does not matter."""

CorpusSource = Union[str, "os.PathLike[str]", bytes, IO[bytes], IO[str]]
"""A path, raw UTF-8 bytes, or a file object opened in binary or text mode."""

HYPERPARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in pb.Hyperparameters.DESCRIPTOR.fields)
"""The keyword arguments `train` accepts: the Hyperparameters fields (``hidden_size``,
``num_layers``, ``steps``, ``learning_rate``...)."""

_ENUMS: dict[str, tuple[Any, str]] = {
    "optimizer": (pb.Optimizer, "OPTIMIZER_"),
    "schedule": (pb.Schedule, "SCHEDULE_"),
}


def model_ref(name: str, version: int | None = None, label: str | None = None) -> pb.ModelRef:
    """A ModelRef: the latest version, or the given ``version`` or ``label`` (not both)."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    ref = pb.ModelRef(name=name)
    if version is not None:
        ref.version = version
    elif label is not None:
        ref.label = label
    return ref


def sampling_options(
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> pb.SamplingOptions | None:
    """SamplingOptions with only the given fields set, or None when nothing was given (so
    the server's or the session's defaults apply)."""
    if temperature is None and top_k is None and top_p is None and seed is None:
        return None
    options = pb.SamplingOptions()
    if temperature is not None:
        options.temperature = temperature
    if top_k is not None:
        options.top_k = top_k
    if top_p is not None:
        options.top_p = top_p
    if seed is not None:
        options.seed = seed
    return options


def hyperparameters(values: Mapping[str, Any]) -> pb.Hyperparameters:
    """Hyperparameters from keyword arguments named like its fields; None means unset (the
    server's default). ``optimizer``/``schedule`` take names (``"adamw"``, ``"sgd"``,
    ``"cosine"``, ``"constant"``) or the enum values."""
    unknown = sorted(set(values) - set(HYPERPARAMETER_NAMES))
    if unknown:
        raise TypeError(
            f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(HYPERPARAMETER_NAMES)}"
        )
    if values.get("steps") is not None and values.get("epochs") is not None:
        raise ValueError("give steps or epochs, not both")
    message = pb.Hyperparameters()
    for name, value in values.items():
        if value is None:
            continue
        if name in _ENUMS and isinstance(value, str):
            enum_type, prefix = _ENUMS[name]
            full_name = prefix + value.upper()
            if full_name not in enum_type.keys():
                allowed = [
                    n.removeprefix(prefix).lower()
                    for n in enum_type.keys()
                    if not n.endswith("UNSPECIFIED")
                ]
                raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
            value = enum_type.Value(full_name)
        setattr(message, name, value)
    return message


def train_request(
    model: str,
    text: str | None,
    corpus_id: str | None,
    resume_from_version: int | None,
    hyper: Mapping[str, Any],
) -> pb.TrainRequest:
    if (text is None) == (corpus_id is None):
        raise ValueError("give exactly one of text or corpus_id")
    request = pb.TrainRequest(model=model, hyperparameters=hyperparameters(hyper))
    if text is not None:
        request.text = text
    else:
        request.corpus_id = corpus_id  # type: ignore[assignment]
    if resume_from_version:
        request.resume_from_version = resume_from_version
    return request


def predict_request(
    model: str,
    inputs: str | Sequence[str],
    *,
    next_top_k: int | None,
    length: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    version: int | None,
    label: str | None,
) -> pb.PredictRequest:
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    request = pb.PredictRequest(model=model_ref(model, version, label), inputs=texts, length=length)
    if next_top_k is not None:
        request.next_top_k = next_top_k
    sampling = sampling_options(temperature, top_k, top_p, seed)
    if sampling is not None:
        request.sampling.CopyFrom(sampling)
    return request


def evaluate_request(
    model: str, text: str | None, corpus_id: str | None, version: int | None, label: str | None
) -> pb.EvaluateRequest:
    if (text is None) == (corpus_id is None):
        raise ValueError("give exactly one of text or corpus_id")
    request = pb.EvaluateRequest(model=model_ref(model, version, label))
    if text is not None:
        request.text = text
    else:
        request.corpus_id = corpus_id  # type: ignore[assignment]
    return request


def stream_open(
    model: str,
    *,
    version: int | None,
    label: str | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    next_top_k: int | None,
    chars_per_message: int | None,
    prefix: str,
) -> pb.StreamRequest:
    opening = pb.StreamOpen(model=model_ref(model, version, label), prefix=prefix)
    sampling = sampling_options(temperature, top_k, top_p, seed)
    if sampling is not None:
        opening.sampling.CopyFrom(sampling)
    if next_top_k is not None:
        opening.next_top_k = next_top_k
    if chars_per_message is not None:
        opening.chars_per_message = chars_per_message
    return pb.StreamRequest(open=opening)


def stream_generate(
    length: int,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    max_chars_per_message: int | None = None,
) -> pb.StreamRequest:
    generate = pb.StreamGenerate(length=length)
    sampling = sampling_options(temperature, top_k, top_p, seed)
    if sampling is not None:
        generate.sampling.CopyFrom(sampling)
    if max_chars_per_message is not None:
        generate.max_chars_per_message = max_chars_per_message
    return pb.StreamRequest(generate=generate)


# --- corpus uploads ----------------------------------------------------------------------------


class CorpusReader:
    """Turns a corpus source into 1 MiB byte chunks without holding the whole file in memory.

    A source can be replayed (for a retry after UNAVAILABLE) when it is a path, bytes, or a
    seekable file object; `rewind()` says whether that worked. A pipe such as stdin cannot be
    replayed once a chunk has been read.
    """

    def __init__(self, source: CorpusSource, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._chunk_bytes = chunk_bytes
        self._path: str | None = None
        self._file: IO[Any] | None = None
        self._start: int | None = None
        self._started = False
        if isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
            # Open now so that a missing file fails before any call is made.
            self._file = open(self._path, "rb")
            self._owns_file = True
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._file = io.BytesIO(bytes(source))
            self._owns_file = True
        elif hasattr(source, "read"):
            self._file = source
            self._owns_file = False
        else:
            raise TypeError(
                f"corpus source must be a path, bytes or a file object (got {type(source).__name__})"
            )
        self._start = self._tell(self._file)

    @staticmethod
    def _tell(file: IO[Any]) -> int | None:
        try:
            return file.tell() if file.seekable() else None
        except (AttributeError, OSError, ValueError):
            return None

    def chunks(self) -> Iterator[pb.CorpusChunk]:
        """Yields the source as CorpusChunk messages, from the current position."""
        assert self._file is not None
        self._started = True
        text_mode = isinstance(self._file, io.TextIOBase)
        # Text-mode files give characters (up to 4 UTF-8 bytes each): read a quarter as many so
        # that a chunk stays within the chunk size. Binary chunks may split a character's
        # bytes, which the server accepts: only the concatenation must be valid UTF-8.
        size = self._chunk_bytes // 4 if text_mode else self._chunk_bytes
        while True:
            data = self._file.read(size)
            if not data:
                return
            yield pb.CorpusChunk(data=data.encode("utf-8") if text_mode else bytes(data))

    def rewind(self) -> bool:
        """Goes back to the start for another attempt; False when the source cannot replay."""
        if not self._started:
            return True
        if self._file is None or self._start is None:
            return False
        try:
            self._file.seek(self._start)
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        if self._owns_file and self._file is not None:
            self._file.close()


def text_corpus_reader(text: str, chunk_bytes: int = CHUNK_BYTES) -> CorpusReader:
    """A reader over text given in memory (encoded once as UTF-8)."""
    return CorpusReader(text.encode("utf-8"), chunk_bytes)
