"""Protobuf messages <-> plain types for the inference and model-management RPCs.

Everything that checks a request field lives here, so every range is enforced in one place and
every error names the field as the client spells it (``sampling.temperature``,
``model.version``, ``inputs[2]``). Nothing past this module sees a protobuf message.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from charlstm.engine import ModelConfig, SamplingOptions
from charlstm.service.errors import InvalidArgument, ResourceExhausted
from charlstm.service.store import InvalidName, VersionInfo, validate_label, validate_name
from charlstm.v1 import charlstm_pb2 as pb

__all__ = [
    "model_ref",
    "model_name",
    "label_name",
    "sampling_options",
    "limit",
    "add_char_probabilities",
    "timestamp",
    "architecture",
    "model_version",
    "model_message",
]

MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Requests -> plain values


def model_name(name: str, field: str = "name") -> str:
    """A model name, or InvalidArgument naming ``field`` with the naming rule."""
    try:
        return validate_name(name, "model")
    except InvalidName as exc:
        raise InvalidArgument(str(exc), field=field) from exc


def label_name(label: str, field: str = "label") -> str:
    """A label that may be set (not ``latest``), or InvalidArgument naming ``field``."""
    try:
        return validate_label(label)
    except InvalidName as exc:
        raise InvalidArgument(str(exc), field=field) from exc


def model_ref(ref: pb.ModelRef, field: str = "model") -> tuple[str, int | str | None]:
    """``ModelRef`` -> ``(name, ref)`` as the store takes them: ``ref`` is None (latest), a
    version number or a label."""
    name = model_name(ref.name, f"{field}.name")
    selector = ref.WhichOneof("selector")
    if selector == "version":
        if ref.version < 1:
            raise InvalidArgument(
                f"{field}.version must be >= 1 (got {ref.version}); leave it unset for the latest",
                field=f"{field}.version",
            )
        return name, int(ref.version)
    if selector == "label":
        if ref.label.lower() == "latest":
            return name, None
        try:
            validate_name(ref.label, "label")
        except InvalidName as exc:
            raise InvalidArgument(str(exc), field=f"{field}.label") from exc
        return name, ref.label
    return name, None


def sampling_options(msg: pb.SamplingOptions, field: str = "sampling") -> SamplingOptions:
    """``SamplingOptions`` -> the engine's, defaults filled in, every range checked.

    ``top_k`` at or above the vocabulary size keeps every character (no upper bound).
    """
    if msg.ByteSize() == 0:
        # Nothing set (the usual Predict): the engine's defaults, which need no checking.
        return SamplingOptions()
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise InvalidArgument(
            f"{field}.temperature must be a number in [0, {MAX_TEMPERATURE:g}] "
            f"(0 is greedy) (got {temperature!r})",
            field=f"{field}.temperature",
        )
    top_k = int(msg.top_k)
    if top_k < 0:
        raise InvalidArgument(
            f"{field}.top_k must be >= 0 (0 disables it) (got {top_k})", field=f"{field}.top_k"
        )
    top_p = msg.top_p if msg.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidArgument(
            f"{field}.top_p must be a number in (0, 1] (got {top_p!r})", field=f"{field}.top_p"
        )
    seed = None
    if msg.HasField("seed"):
        if msg.seed < 0:
            raise InvalidArgument(
                f"{field}.seed must be in [0, {MAX_SEED}] (got {msg.seed}); leave it unset for a "
                "fresh random seed",
                field=f"{field}.seed",
            )
        seed = int(msg.seed)
    options = SamplingOptions(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                              seed=seed)
    try:
        options.validate()
    except ValueError as exc:  # the engine's ConfigError; keep the client's field path
        name = getattr(exc, "field", "")
        raise InvalidArgument(str(exc), field=f"{field}.{name}" if name else field) from exc
    return options


def limit(value: int, maximum: int, *, what: str, flag: str, field: str | None = None) -> None:
    """RESOURCE_EXHAUSTED when ``value`` exceeds the server limit ``maximum`` set by ``flag``;
    ``what`` describes the value for a person, ``field`` names the request field."""
    if value > maximum:
        raise ResourceExhausted(
            f"{what} is {value}, over this server's limit of {maximum} ({flag})", field=field
        )


# ---------------------------------------------------------------------------------------------
# Plain values -> responses


def add_char_probabilities(field: Any, pairs: Iterable[tuple[str, float]]) -> None:
    """Append ``(char, probability)`` pairs to a repeated ``CharProbability`` field, built in
    place: a list of messages passed to a constructor is copied into it, and for a cached
    Predict that copying was 2.5 of the 5.8 us its response took to build."""
    for c, p in pairs:
        field.add(char=c, probability=float(p))


def timestamp(unix_seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(round(unix_seconds * 1e9)))
    return ts


def _num_parameters(metadata: dict, config: ModelConfig) -> int:
    tensors = metadata.get("tensors")
    if isinstance(tensors, dict) and tensors:
        total = 0
        for spec in tensors.values():
            n = 1
            for dim in spec.get("shape", ()):
                n *= int(dim)
            total += n
        return total
    # No tensor table: count from the architecture (PyTorch layout, two bias vectors).
    V, E, H, L = config.vocab_size, config.embedding_size, config.hidden_size, config.num_layers
    lstm = sum(4 * H * ((E if k == 0 else H) + H + 2) for k in range(L))
    return V * E + lstm + V * H + V


def architecture(metadata: dict) -> pb.Architecture:
    """The ``Architecture`` of a stored version, from its metadata (weights are not read)."""
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
    except (KeyError, TypeError, ValueError):
        return pb.Architecture()  # written by something else; describe what we can
    return pb.Architecture(
        vocab_size=config.vocab_size,
        embedding_size=config.embedding_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        num_parameters=_num_parameters(metadata, config),
    )


def _optional_float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def model_version(info: VersionInfo) -> pb.ModelVersion:
    """A ``ModelVersion`` from the store's description of it."""
    meta = info.metadata or {}
    metrics = meta.get("metrics") or {}
    msg = pb.ModelVersion(
        version=info.version,
        created=timestamp(info.created),
        size_bytes=int(info.size_bytes),
        step=int(metrics.get("step") or 0),
        labels=sorted(info.labels),
        job_id=str(meta.get("job_id") or ""),
        resumable=bool(info.resumable),
    )
    train_loss = _optional_float(metrics.get("train_loss"))
    if train_loss is not None:
        msg.train_loss = train_loss
    val_loss = _optional_float(metrics.get("val_loss"))
    if val_loss is not None:
        msg.val_loss = val_loss
    return msg


def model_message(
    name: str, versions: list[VersionInfo], labels: dict[str, int], *, with_versions: bool
) -> pb.Model:
    """A ``Model`` from its versions (oldest first) and labels; architecture and vocabulary
    are the latest version's."""
    latest = versions[-1] if versions else None
    msg = pb.Model(name=name, labels=dict(labels))
    if latest is not None:
        msg.latest_version = latest.version
        msg.architecture.CopyFrom(architecture(latest.metadata or {}))
        vocab = (latest.metadata or {}).get("vocab")
        if isinstance(vocab, str):
            msg.vocabulary = vocab
    if with_versions:
        msg.versions.extend(model_version(v) for v in versions)
    return msg
