"""Plain Python types the client returns, and their converters from the protobuf messages.

Protobuf stays inside the client: every method returns these frozen dataclasses, built by the
``*_from_proto`` functions below. `to_jsonable` turns any of them into JSON-ready dicts (the
command line's ``--json`` output).

Conventions: times are timezone-aware `datetime` in UTC (None when the server left them unset);
optional metrics the server may not have yet (validation loss...) are None when unset; a
character distribution is a list of ``(char, probability)``, most likely first.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Mapping
from typing import Any, Literal

from google.protobuf import timestamp_pb2

from charlstm.v1 import charlstm_pb2 as pb

__all__ = [
    "CharDistribution",
    "Prediction",
    "PredictResult",
    "TrainProgress",
    "CheckpointSaved",
    "JobSucceeded",
    "JobFailed",
    "JobCancelled",
    "TrainEvent",
    "TrainEventKind",
    "Job",
    "JobState",
    "Architecture",
    "ModelVersion",
    "Model",
    "Corpus",
    "EvalResult",
    "SessionInfo",
    "GeneratedChar",
    "to_jsonable",
]

CharDistribution = list[tuple[str, float]]
"""Next-character probabilities, most likely first: ``[("e", 0.31), (" ", 0.12), ...]``."""

JobState = Literal["unspecified", "queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
TrainEventKind = Literal["accepted", "progress", "checkpoint", "succeeded", "failed", "cancelled"]

TERMINAL_JOB_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


def _time(message: Any, field: str) -> _dt.datetime | None:
    """A Timestamp field as an aware UTC datetime, or None when unset."""
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=_dt.timezone.utc)


def _optional(message: Any, field: str) -> Any:
    """The value of a proto3 `optional` field, or None when unset."""
    return getattr(message, field) if message.HasField(field) else None


def _distribution(chars: Any) -> CharDistribution:
    return [(c.char, c.probability) for c in chars]


# --- predictions -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the model says about one input text.

    Attributes:
        input: the text conditioned on.
        next: the most likely next characters with their probabilities, most likely first.
        continuation: the sampled continuation ("" when none was asked for).
        continuation_probabilities: the probability of each continuation character when drawn.
    """

    input: str
    next: CharDistribution
    continuation: str
    continuation_probabilities: list[float]


@dataclasses.dataclass(frozen=True)
class PredictResult:
    """The answer to `predict`: which model version answered, and one `Prediction` per input."""

    model: str
    version: int
    predictions: list[Prediction]


def predict_result_from_proto(response: pb.PredictResponse) -> PredictResult:
    return PredictResult(
        model=response.model,
        version=response.version,
        predictions=[
            Prediction(
                input=p.input,
                next=_distribution(p.next),
                continuation=p.continuation,
                continuation_probabilities=list(p.continuation_probabilities),
            )
            for p in response.predictions
        ],
    )


# --- training ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """Progress of a training job after a step. Losses are in nats per character."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float
    val_loss: float | None
    chars_per_second: float
    learning_rate: float
    grad_norm: float
    elapsed_seconds: float
    eta_seconds: float


def train_progress_from_proto(p: pb.TrainProgress) -> TrainProgress:
    return TrainProgress(
        step=p.step,
        total_steps=p.total_steps,
        epoch=p.epoch,
        train_loss=p.train_loss,
        val_loss=_optional(p, "val_loss"),
        chars_per_second=p.chars_per_second,
        learning_rate=p.learning_rate,
        grad_norm=p.grad_norm,
        elapsed_seconds=p.elapsed_seconds,
        eta_seconds=p.eta_seconds,
    )


@dataclasses.dataclass(frozen=True)
class CheckpointSaved:
    """A training job stored a new model version."""

    version: int
    step: int
    val_loss: float | None


@dataclasses.dataclass(frozen=True)
class JobSucceeded:
    """A training job finished: `version` holds the last parameters, `best_version` the lowest
    validation loss (0 when none was measured)."""

    version: int
    best_version: int
    best_val_loss: float | None
    final_train_loss: float


@dataclasses.dataclass(frozen=True)
class JobFailed:
    """A training job failed; when `resumable`, it can be resumed from `last_version`."""

    reason: str
    resumable: bool
    last_version: int


@dataclasses.dataclass(frozen=True)
class JobCancelled:
    """A training job was cancelled; `last_version` is the latest version it saved (0: none)."""

    last_version: int


@dataclasses.dataclass(frozen=True)
class Job:
    """A training job.

    Attributes:
        hyperparameters: the hyperparameters in force, by their proto field names
            (``hidden_size``, ``steps``...; ``optimizer``/``schedule`` as lower-case names such as
            ``"adamw"``); fields the server left unset are absent.
        state: ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled`` or ``interrupted``.
        last_version: the latest version the job saved (0: none yet).
        resumed_from_version: the version it resumed from (0: a fresh start).
    """

    id: str
    model: str
    state: JobState
    hyperparameters: dict[str, Any]
    corpus_id: str
    progress: TrainProgress | None
    last_version: int
    error: str
    created: _dt.datetime | None
    started: _dt.datetime | None
    finished: _dt.datetime | None
    resumed_from_version: int

    @property
    def done(self) -> bool:
        """True once the job has stopped (succeeded, failed, cancelled or interrupted)."""
        return self.state in TERMINAL_JOB_STATES


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix).lower()


def hyperparameters_from_proto(h: pb.Hyperparameters) -> dict[str, Any]:
    """The set fields of a Hyperparameters message, enums as lower-case names."""
    out: dict[str, Any] = {}
    for field, value in h.ListFields():
        if field.name == "optimizer":
            out["optimizer"] = _enum_name(pb.Optimizer, value, "OPTIMIZER_")
        elif field.name == "schedule":
            out["schedule"] = _enum_name(pb.Schedule, value, "SCHEDULE_")
        else:
            out[field.name] = value
    return out


def job_from_proto(job: pb.Job) -> Job:
    return Job(
        id=job.id,
        model=job.model,
        state=_enum_name(pb.JobState, job.state, "JOB_STATE_"),  # type: ignore[arg-type]
        hyperparameters=hyperparameters_from_proto(job.hyperparameters),
        corpus_id=job.corpus_id,
        progress=train_progress_from_proto(job.progress) if job.HasField("progress") else None,
        last_version=job.last_version,
        error=job.error,
        created=_time(job, "created"),
        started=_time(job, "started"),
        finished=_time(job, "finished"),
        resumed_from_version=job.resumed_from_version,
    )


@dataclasses.dataclass(frozen=True)
class TrainEvent:
    """One event of a training job, as streamed by `train` and `watch_job`.

    `kind` says which one of the payload attributes is set (the others are None):
    ``accepted`` (always first; the `Job`), ``progress``, ``checkpoint``, and exactly one terminal
    event: ``succeeded``, ``failed`` or ``cancelled``.
    """

    kind: TrainEventKind
    job_id: str
    time: _dt.datetime | None
    accepted: Job | None = None
    progress: TrainProgress | None = None
    checkpoint: CheckpointSaved | None = None
    succeeded: JobSucceeded | None = None
    failed: JobFailed | None = None
    cancelled: JobCancelled | None = None

    @property
    def terminal(self) -> bool:
        """True for the job's last event (succeeded, failed or cancelled)."""
        return self.kind in ("succeeded", "failed", "cancelled")


def train_event_from_proto(event: pb.TrainEvent) -> TrainEvent:
    kind = event.WhichOneof("event")
    common: dict[str, Any] = {"job_id": event.job_id, "time": _time(event, "time")}
    if kind == "accepted":
        return TrainEvent(kind="accepted", accepted=job_from_proto(event.accepted.job), **common)
    if kind == "progress":
        return TrainEvent(kind="progress", progress=train_progress_from_proto(event.progress), **common)
    if kind == "checkpoint":
        c = event.checkpoint
        saved = CheckpointSaved(version=c.version, step=c.step, val_loss=_optional(c, "val_loss"))
        return TrainEvent(kind="checkpoint", checkpoint=saved, **common)
    if kind == "succeeded":
        s = event.succeeded
        done = JobSucceeded(
            version=s.version,
            best_version=s.best_version,
            best_val_loss=_optional(s, "best_val_loss"),
            final_train_loss=s.final_train_loss,
        )
        return TrainEvent(kind="succeeded", succeeded=done, **common)
    if kind == "failed":
        f = event.failed
        failed = JobFailed(reason=f.reason, resumable=f.resumable, last_version=f.last_version)
        return TrainEvent(kind="failed", failed=failed, **common)
    if kind == "cancelled":
        cancelled = JobCancelled(last_version=event.cancelled.last_version)
        return TrainEvent(kind="cancelled", cancelled=cancelled, **common)
    raise ValueError(f"training event without a known payload (got {kind!r})")


# --- models ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Model architecture: vocabulary V (including the unknown-character id), embedding E,
    hidden H, layers L."""

    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    num_parameters: int


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One stored version of a model."""

    version: int
    created: _dt.datetime | None
    size_bytes: int
    step: int
    train_loss: float | None
    val_loss: float | None
    labels: list[str]
    job_id: str
    resumable: bool


@dataclasses.dataclass(frozen=True)
class Model:
    """A stored model. `versions` is oldest first, and empty in `list_models`."""

    name: str
    architecture: Architecture | None
    vocabulary: str
    latest_version: int
    versions: list[ModelVersion]
    labels: dict[str, int]


def model_from_proto(m: pb.Model) -> Model:
    a = m.architecture
    architecture = (
        Architecture(
            vocab_size=a.vocab_size,
            embedding_size=a.embedding_size,
            hidden_size=a.hidden_size,
            num_layers=a.num_layers,
            dropout=a.dropout,
            num_parameters=a.num_parameters,
        )
        if m.HasField("architecture")
        else None
    )
    versions = [
        ModelVersion(
            version=v.version,
            created=_time(v, "created"),
            size_bytes=v.size_bytes,
            step=v.step,
            train_loss=_optional(v, "train_loss"),
            val_loss=_optional(v, "val_loss"),
            labels=list(v.labels),
            job_id=v.job_id,
            resumable=v.resumable,
        )
        for v in m.versions
    ]
    return Model(
        name=m.name,
        architecture=architecture,
        vocabulary=m.vocabulary,
        latest_version=m.latest_version,
        versions=versions,
        labels=dict(sorted(m.labels.items(), key=lambda item: (item[1], item[0]))),
    )


# --- corpora and evaluation --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A stored corpus; `id` is the sha256 of its UTF-8 bytes (pass it as ``corpus_id``)."""

    id: str
    size_bytes: int
    characters: int
    distinct_characters: int
    already_existed: bool


def corpus_from_proto(c: pb.Corpus) -> Corpus:
    return Corpus(
        id=c.id,
        size_bytes=c.size_bytes,
        characters=c.characters,
        distinct_characters=c.distinct_characters,
        already_existed=c.already_existed,
    )


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """The loss of a stored model version on a text: mean nats per character over
    `characters` (= the text's length minus one) predictions, and the same in bits."""

    model: str
    version: int
    loss: float
    bits_per_char: float
    characters: int
    unknown_characters: int


def eval_result_from_proto(r: pb.EvaluateResponse) -> EvalResult:
    return EvalResult(
        model=r.model,
        version=r.version,
        loss=r.loss,
        bits_per_char=r.bits_per_char,
        characters=r.characters,
        unknown_characters=r.unknown_characters,
    )


# --- stream sessions ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """An open Stream session: its id, the model version serving it and that model's
    vocabulary size."""

    session_id: str
    model: str
    version: int
    vocab_size: int


def session_info_from_proto(o: pb.StreamOpened) -> SessionInfo:
    return SessionInfo(
        session_id=o.session_id, model=o.model, version=o.version, vocab_size=o.vocab_size
    )


@dataclasses.dataclass(frozen=True)
class GeneratedChar:
    """One generated character and the probability the model gave it when it was drawn."""

    char: str
    probability: float


def generated_chars_from_proto(chars: pb.GeneratedChars) -> list[GeneratedChar]:
    """The characters of one `chars` reply, each with its probability (NaN if the server sent
    fewer probabilities than characters)."""
    probabilities = list(chars.probabilities)
    return [
        GeneratedChar(char, probabilities[i] if i < len(probabilities) else math.nan)
        for i, char in enumerate(chars.text)
    ]


def distribution_from_proto(chars: Any) -> CharDistribution:
    """Repeated CharProbability -> ``[(char, probability), ...]``."""
    return _distribution(chars)


# --- JSON --------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Any of these types (or lists/dicts of them) as JSON-ready values: dataclasses become
    dicts, datetimes ISO 8601 strings, ``(char, probability)`` pairs
    ``{"char": ..., "probability": ...}`` objects, NaN and infinities null."""
    if isinstance(value, TrainEvent):
        # Only the payload that `kind` names: the others are always null.
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name in ("kind", "job_id", "time") or f.name == value.kind
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], float)
    ):
        return {"char": value[0], "probability": value[1]}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value
