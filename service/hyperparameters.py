"""``Hyperparameters`` (protobuf) <-> the engine's configs, with the defaults of the .proto.

:func:`resolve` fills every unset field with its default (or, when resuming, with the value
the resumed version was trained with), validates the ranges and returns a
:class:`ResolvedHyperparameters`: the architecture (a ``ModelConfig`` without ``vocab_size``,
which only the corpus decides), the engine ``TrainConfig`` and the checkpoint interval.
:func:`to_proto` turns it back into a message with every field set (the ``Job`` message shows
the hyperparameters in force). Errors name the field as the client sees it:
``hyperparameters.hidden_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charlstm.engine import ConfigError, ModelConfig, TrainConfig
from charlstm.v1 import charlstm_pb2 as pb

from . import errors

DEFAULT_CHECKPOINT_EVERY = 500
# Not in the engine's ranges, but a job has to end within the life of a server: these bound
# what a client can ask for (steps x seq_len x batch_size is still limited by time, not here).
MAX_STEPS = 1_000_000_000
MAX_EPOCHS = 1_000_000.0

ARCHITECTURE_FIELDS = ("embedding_size", "hidden_size", "num_layers", "dropout")

_OPTIMIZERS = {pb.OPTIMIZER_ADAMW: "adamw", pb.OPTIMIZER_SGD: "sgd"}
_SCHEDULES = {pb.SCHEDULE_CONSTANT: "constant", pb.SCHEDULE_COSINE: "cosine"}


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """Every hyperparameter of a job, defaults filled in and validated."""

    architecture: dict[str, Any]  # embedding_size, hidden_size, num_layers, dropout
    train: TrainConfig
    checkpoint_every: int  # 0: only at the end

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The engine's ModelConfig for a corpus with ``vocab_size`` ids (validated)."""
        config = ModelConfig(vocab_size=vocab_size, **self.architecture)
        config.validate()
        return config

    def to_dict(self) -> dict:
        """JSON-able (job records, and the worker's arguments)."""
        return {
            "architecture": dict(self.architecture),
            "train": self.train.to_dict(),
            "checkpoint_every": self.checkpoint_every,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ResolvedHyperparameters":
        return cls(dict(d["architecture"]), TrainConfig.from_dict(d["train"]), int(d["checkpoint_every"]))


def resolve(
    message: pb.Hyperparameters | None,
    *,
    base: ResolvedHyperparameters | None = None,
) -> ResolvedHyperparameters:
    """Fill in and validate the hyperparameters of a request.

    Unset fields take the .proto's defaults, or ``base``'s values when given (used when
    resuming, so that a resume request need not repeat the architecture). Raises
    InvalidArgument with field ``hyperparameters.<name>`` for a value out of range.
    """
    m = message if message is not None else pb.Hyperparameters()
    arch = dict(base.architecture) if base else {
        "embedding_size": 64, "hidden_size": 256, "num_layers": 2, "dropout": 0.0}
    for name in ARCHITECTURE_FIELDS:
        if m.HasField(name):
            arch[name] = getattr(m, name)

    train = base.train.to_dict() if base else TrainConfig().to_dict()
    for name in ("seq_len", "batch_size", "learning_rate", "warmup_steps", "min_lr_ratio", "clip",
                 "weight_decay", "momentum", "seed", "val_fraction", "eval_every"):
        if m.HasField(name):
            train[name] = getattr(m, name)
    length = m.WhichOneof("length")
    if length == "steps":
        train["steps"], train["epochs"] = m.steps, None
    elif length == "epochs":
        train["steps"], train["epochs"] = None, m.epochs
    if m.HasField("max_seconds"):
        train["max_seconds"] = m.max_seconds
    if length is None and train["steps"] is None and train["epochs"] is None and train["max_seconds"] is None:
        train["steps"] = TrainConfig.DEFAULT_STEPS  # a time budget alone may end training
    if m.optimizer != pb.OPTIMIZER_UNSPECIFIED:
        train["optimizer"] = _enum(_OPTIMIZERS, m.optimizer, "optimizer", pb.Optimizer)
    if m.schedule != pb.SCHEDULE_UNSPECIFIED:
        train["schedule"] = _enum(_SCHEDULES, m.schedule, "schedule", pb.Schedule)

    checkpoint_every = base.checkpoint_every if base else DEFAULT_CHECKPOINT_EVERY
    if m.HasField("checkpoint_every"):
        checkpoint_every = m.checkpoint_every
    if checkpoint_every < 0:
        raise _invalid("checkpoint_every", f"must be an integer >= 0 (got {checkpoint_every})")
    if train["steps"] is not None and train["steps"] > MAX_STEPS:
        raise _invalid("steps", f"must be an integer in [1, {MAX_STEPS}] (got {train['steps']})")
    if train["epochs"] is not None and not train["epochs"] <= MAX_EPOCHS:  # NaN fails too
        raise _invalid("epochs", f"must be a number in (0, {MAX_EPOCHS:g}] (got {train['epochs']!r})")

    try:
        # vocab_size 2 only stands in for the corpus's, to check the other fields.
        ModelConfig(vocab_size=2, **arch).validate()
        config = TrainConfig(**train)
        config.validate()
    except ConfigError as exc:
        raise translate_config_error(exc) from None
    return ResolvedHyperparameters(arch, config, int(checkpoint_every))


def to_proto(resolved: ResolvedHyperparameters) -> pb.Hyperparameters:
    """The message with every field set to the value in force."""
    t = resolved.train
    m = pb.Hyperparameters(
        embedding_size=resolved.architecture["embedding_size"],
        hidden_size=resolved.architecture["hidden_size"],
        num_layers=resolved.architecture["num_layers"],
        dropout=resolved.architecture["dropout"],
        seq_len=t.seq_len,
        batch_size=t.batch_size,
        optimizer=_reverse(_OPTIMIZERS)[t.optimizer],
        learning_rate=t.learning_rate,
        schedule=_reverse(_SCHEDULES)[t.schedule],
        warmup_steps=t.warmup_steps,
        min_lr_ratio=t.min_lr_ratio,
        clip=t.clip,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        seed=t.seed,
        val_fraction=t.val_fraction,
        eval_every=t.eval_every,
        checkpoint_every=resolved.checkpoint_every,
    )
    if t.max_seconds is not None:
        m.max_seconds = t.max_seconds
    if t.epochs is not None:
        m.epochs = t.epochs
    elif t.steps is not None or t.max_seconds is None:
        m.steps = t.steps if t.steps is not None else TrainConfig.DEFAULT_STEPS
    return m


def from_checkpoint_metadata(metadata: dict) -> ResolvedHyperparameters:
    """The hyperparameters a stored version was trained with (the base for a resume)."""
    model_config = metadata["model_config"]
    arch = {name: model_config[name] for name in ARCHITECTURE_FIELDS}
    train_dict = metadata.get("train_config") or TrainConfig().to_dict()
    every = int(metadata.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY))
    return ResolvedHyperparameters(arch, TrainConfig.from_dict(train_dict), every)


# Training settings a resumed run must share with the run it continues (the data layout and
# the optimiser's moments depend on them).
RESUME_FIXED_TRAIN_FIELDS = ("seq_len", "batch_size", "optimizer", "val_fraction")


def check_resumable_with(resolved: ResolvedHyperparameters, metadata: dict, version: int) -> None:
    """InvalidArgument if ``resolved`` cannot continue a stored version: another architecture,
    or another window shape, optimiser or validation split."""
    stored_train = metadata.get("train_config") or {}
    pairs = [(name, resolved.architecture[name], metadata["model_config"][name])
             for name in ARCHITECTURE_FIELDS]
    pairs += [(name, getattr(resolved.train, name), stored_train.get(name))
              for name in RESUME_FIXED_TRAIN_FIELDS if name in stored_train]
    for name, wanted, stored in pairs:
        if wanted != stored:
            raise _invalid(
                name,
                f"must equal {stored!r} to resume from version {version} (got {wanted!r}); "
                "leave it unset to keep the stored value",
            )


def check_corpus_fits(characters: int, train: TrainConfig, field: str) -> None:
    """InvalidArgument (naming the corpus field) if a corpus of ``characters`` characters is
    too short for the windows of ``train`` (the engine's rule: every one of the batch_size
    streams of the training slice needs at least seq_len + 1 characters)."""
    n_train = int(characters * (1.0 - train.val_fraction))
    need = train.batch_size * (train.seq_len + 1)
    if n_train // train.batch_size < train.seq_len + 1:
        raise errors.InvalidArgument(
            f"{field} is too short for these hyperparameters: training needs at least "
            f"batch_size * (seq_len + 1) = {need} characters after holding out val_fraction="
            f"{train.val_fraction:g} (got {n_train} of {characters}); use a longer text or a "
            "smaller hyperparameters.batch_size or hyperparameters.seq_len",
            field=field,
        )


def translate_config_error(exc: ConfigError) -> errors.InvalidArgument:
    """An engine ConfigError about a hyperparameter, as the client's field names it."""
    field = f"hyperparameters.{exc.field}"
    message = str(exc)
    if message.startswith(exc.field):
        message = "hyperparameters." + message
    return errors.InvalidArgument(message, field=field)


def _invalid(name: str, rule: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"hyperparameters.{name} {rule}", field=f"hyperparameters.{name}")


def _enum(table: dict[int, str], value: int, name: str, enum_type) -> str:
    if value not in table:
        allowed = ", ".join(enum_type.Name(v) for v in table)
        raise _invalid(name, f"must be one of {allowed} (got {value})")
    return table[value]


def _reverse(table: dict[int, str]) -> dict[str, int]:
    return {v: k for k, v in table.items()}
