import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]

class Schedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_UNSPECIFIED: _ClassVar[Schedule]
    SCHEDULE_CONSTANT: _ClassVar[Schedule]
    SCHEDULE_COSINE: _ClassVar[Schedule]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAMW: Optimizer
OPTIMIZER_SGD: Optimizer
SCHEDULE_UNSPECIFIED: Schedule
SCHEDULE_CONSTANT: Schedule
SCHEDULE_COSINE: Schedule
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_INTERRUPTED: JobState

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    label: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("embedding_size", "hidden_size", "num_layers", "dropout", "seq_len", "batch_size", "steps", "epochs", "optimizer", "learning_rate", "schedule", "warmup_steps", "min_lr_ratio", "clip", "weight_decay", "momentum", "seed", "val_fraction", "eval_every", "checkpoint_every", "max_seconds")
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_RATIO_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    seq_len: int
    batch_size: int
    steps: int
    epochs: float
    optimizer: Optimizer
    learning_rate: float
    schedule: Schedule
    warmup_steps: int
    min_lr_ratio: float
    clip: float
    weight_decay: float
    momentum: float
    seed: int
    val_fraction: float
    eval_every: int
    checkpoint_every: int
    max_seconds: float
    def __init__(self, embedding_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., dropout: _Optional[float] = ..., seq_len: _Optional[int] = ..., batch_size: _Optional[int] = ..., steps: _Optional[int] = ..., epochs: _Optional[float] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., schedule: _Optional[_Union[Schedule, str]] = ..., warmup_steps: _Optional[int] = ..., min_lr_ratio: _Optional[float] = ..., clip: _Optional[float] = ..., weight_decay: _Optional[float] = ..., momentum: _Optional[float] = ..., seed: _Optional[int] = ..., val_fraction: _Optional[float] = ..., eval_every: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., max_seconds: _Optional[float] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model", "text", "corpus_id", "hyperparameters", "resume_from_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    corpus_id: str
    hyperparameters: Hyperparameters
    resume_from_version: int
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., corpus_id: _Optional[str] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., resume_from_version: _Optional[int] = ...) -> None: ...

class CorpusChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Corpus(_message.Message):
    __slots__ = ("id", "size_bytes", "characters", "distinct_characters", "already_existed")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    size_bytes: int
    characters: int
    distinct_characters: int
    already_existed: bool
    def __init__(self, id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., characters: _Optional[int] = ..., distinct_characters: _Optional[int] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "model", "state", "hyperparameters", "corpus_id", "progress", "last_version", "error", "created", "started", "finished", "resumed_from_version", "resumable")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    state: JobState
    hyperparameters: Hyperparameters
    corpus_id: str
    progress: TrainProgress
    last_version: int
    error: str
    created: _timestamp_pb2.Timestamp
    started: _timestamp_pb2.Timestamp
    finished: _timestamp_pb2.Timestamp
    resumed_from_version: int
    resumable: bool
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., corpus_id: _Optional[str] = ..., progress: _Optional[_Union[TrainProgress, _Mapping]] = ..., last_version: _Optional[int] = ..., error: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resumed_from_version: _Optional[int] = ..., resumable: _Optional[bool] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "train_loss", "val_loss", "chars_per_second", "learning_rate", "grad_norm", "elapsed_seconds", "eta_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CHARS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    train_loss: float
    val_loss: float
    chars_per_second: float
    learning_rate: float
    grad_norm: float
    elapsed_seconds: float
    eta_seconds: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., chars_per_second: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("version", "step", "val_loss")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    version: int
    step: int
    val_loss: float
    def __init__(self, version: _Optional[int] = ..., step: _Optional[int] = ..., val_loss: _Optional[float] = ...) -> None: ...

class JobAccepted(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobSucceeded(_message.Message):
    __slots__ = ("version", "best_version", "best_val_loss", "final_train_loss")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    FINAL_TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    version: int
    best_version: int
    best_val_loss: float
    final_train_loss: float
    def __init__(self, version: _Optional[int] = ..., best_version: _Optional[int] = ..., best_val_loss: _Optional[float] = ..., final_train_loss: _Optional[float] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("reason", "resumable", "last_version")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    reason: str
    resumable: bool
    last_version: int
    def __init__(self, reason: _Optional[str] = ..., resumable: _Optional[bool] = ..., last_version: _Optional[int] = ...) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ("last_version",)
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    last_version: int
    def __init__(self, last_version: _Optional[int] = ...) -> None: ...

class TrainEvent(_message.Message):
    __slots__ = ("job_id", "time", "accepted", "progress", "checkpoint", "succeeded", "failed", "cancelled")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    time: _timestamp_pb2.Timestamp
    accepted: JobAccepted
    progress: TrainProgress
    checkpoint: CheckpointSaved
    succeeded: JobSucceeded
    failed: JobFailed
    cancelled: JobCancelled
    def __init__(self, job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accepted: _Optional[_Union[JobAccepted, _Mapping]] = ..., progress: _Optional[_Union[TrainProgress, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., succeeded: _Optional[_Union[JobSucceeded, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ..., cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SamplingOptions(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class CharProbability(_message.Message):
    __slots__ = ("char", "probability")
    CHAR_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    char: str
    probability: float
    def __init__(self, char: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "inputs", "next_top_k", "length", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    inputs: _containers.RepeatedScalarFieldContainer[str]
    next_top_k: int
    length: int
    sampling: SamplingOptions
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., inputs: _Optional[_Iterable[str]] = ..., next_top_k: _Optional[int] = ..., length: _Optional[int] = ..., sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("input", "next", "continuation", "continuation_probabilities")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    input: str
    next: _containers.RepeatedCompositeFieldContainer[CharProbability]
    continuation: str
    continuation_probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, input: _Optional[str] = ..., next: _Optional[_Iterable[_Union[CharProbability, _Mapping]]] = ..., continuation: _Optional[str] = ..., continuation_probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("model", "sampling", "next_top_k", "prefix", "chars_per_message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    CHARS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    sampling: SamplingOptions
    next_top_k: int
    prefix: str
    chars_per_message: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ..., next_top_k: _Optional[int] = ..., prefix: _Optional[str] = ..., chars_per_message: _Optional[int] = ...) -> None: ...

class StreamFeed(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class StreamGenerate(_message.Message):
    __slots__ = ("length", "sampling", "max_chars_per_message")
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    length: int
    sampling: SamplingOptions
    max_chars_per_message: int
    def __init__(self, length: _Optional[int] = ..., sampling: _Optional[_Union[SamplingOptions, _Mapping]] = ..., max_chars_per_message: _Optional[int] = ...) -> None: ...

class StreamReset(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("open", "feed", "generate", "reset")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    FEED_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    feed: StreamFeed
    generate: StreamGenerate
    reset: StreamReset
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., feed: _Optional[_Union[StreamFeed, _Mapping]] = ..., generate: _Optional[_Union[StreamGenerate, _Mapping]] = ..., reset: _Optional[_Union[StreamReset, _Mapping]] = ...) -> None: ...

class StreamOpened(_message.Message):
    __slots__ = ("session_id", "model", "version", "vocab_size")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    version: int
    vocab_size: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class NextChars(_message.Message):
    __slots__ = ("position", "next")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    position: int
    next: _containers.RepeatedCompositeFieldContainer[CharProbability]
    def __init__(self, position: _Optional[int] = ..., next: _Optional[_Iterable[_Union[CharProbability, _Mapping]]] = ...) -> None: ...

class GeneratedChars(_message.Message):
    __slots__ = ("text", "probabilities")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    text: str
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerationEnd(_message.Message):
    __slots__ = ("generated",)
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    generated: int
    def __init__(self, generated: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("opened", "prediction", "chars", "end")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    opened: StreamOpened
    prediction: NextChars
    chars: GeneratedChars
    end: GenerationEnd
    def __init__(self, opened: _Optional[_Union[StreamOpened, _Mapping]] = ..., prediction: _Optional[_Union[NextChars, _Mapping]] = ..., chars: _Optional[_Union[GeneratedChars, _Mapping]] = ..., end: _Optional[_Union[GenerationEnd, _Mapping]] = ...) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("vocab_size", "embedding_size", "hidden_size", "num_layers", "dropout", "num_parameters")
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float
    num_parameters: int
    def __init__(self, vocab_size: _Optional[int] = ..., embedding_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., dropout: _Optional[float] = ..., num_parameters: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "created", "size_bytes", "step", "train_loss", "val_loss", "labels", "job_id", "resumable")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    created: _timestamp_pb2.Timestamp
    size_bytes: int
    step: int
    train_loss: float
    val_loss: float
    labels: _containers.RepeatedScalarFieldContainer[str]
    job_id: str
    resumable: bool
    def __init__(self, version: _Optional[int] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., labels: _Optional[_Iterable[str]] = ..., job_id: _Optional[str] = ..., resumable: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "architecture", "vocabulary", "latest_version", "versions", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: Architecture
    vocabulary: str
    latest_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    labels: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[_Union[Architecture, _Mapping]] = ..., vocabulary: _Optional[str] = ..., latest_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., labels: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deleted_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class SetLabelRequest(_message.Message):
    __slots__ = ("name", "label", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    version: int
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "text", "corpus_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    text: str
    corpus_id: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., text: _Optional[str] = ..., corpus_id: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("model", "version", "loss", "bits_per_char", "characters", "unknown_characters")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_CHAR_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    loss: float
    bits_per_char: float
    characters: int
    unknown_characters: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., loss: _Optional[float] = ..., bits_per_char: _Optional[float] = ..., characters: _Optional[int] = ..., unknown_characters: _Optional[int] = ...) -> None: ...
