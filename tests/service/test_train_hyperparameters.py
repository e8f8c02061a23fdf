"""Hyperparameters messages <-> engine configs: defaults, ranges, resume rules."""

from __future__ import annotations

import math

import pytest

from charlstm.engine import TrainConfig
from charlstm.service import errors
from charlstm.service import hyperparameters as hyper
from charlstm.v1 import charlstm_pb2 as pb


def test_an_empty_message_takes_the_documented_defaults() -> None:
    resolved = hyper.resolve(pb.Hyperparameters())
    assert resolved.architecture == {"embedding_size": 64, "hidden_size": 256, "num_layers": 2, "dropout": 0.0}
    t = resolved.train
    assert (t.seq_len, t.batch_size, t.steps, t.epochs) == (64, 32, 1000, None)
    assert (t.optimizer, t.learning_rate, t.schedule, t.warmup_steps, t.min_lr_ratio) == ("adamw", 0.002, "cosine", 0, 0.1)
    assert (t.clip, t.weight_decay, t.momentum, t.seed, t.val_fraction, t.eval_every) == (5.0, 0.0, 0.9, 0, 0.1, 100)
    assert resolved.checkpoint_every == 500
    assert hyper.resolve(None) == resolved


def test_round_trip_through_the_message_keeps_every_value() -> None:
    message = pb.Hyperparameters(
        embedding_size=8, hidden_size=16, num_layers=1, dropout=0.25, seq_len=10, batch_size=3,
        epochs=1.5, optimizer=pb.OPTIMIZER_SGD, learning_rate=0.1, schedule=pb.SCHEDULE_CONSTANT,
        warmup_steps=4, min_lr_ratio=0.5, clip=0.0, weight_decay=0.01, momentum=0.5, seed=7,
        val_fraction=0.0, eval_every=3, checkpoint_every=0)
    resolved = hyper.resolve(message)
    assert resolved.train.optimizer == "sgd" and resolved.train.epochs == 1.5 and resolved.train.steps is None
    back = hyper.to_proto(resolved)
    assert back == message
    assert hyper.resolve(back) == resolved
    assert hyper.ResolvedHyperparameters.from_dict(resolved.to_dict()) == resolved
    # Unset length comes back as the default number of steps, explicitly.
    assert hyper.to_proto(hyper.resolve(pb.Hyperparameters())).steps == TrainConfig.DEFAULT_STEPS


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": 5000}, "hidden_size"),
        ({"embedding_size": -1}, "embedding_size"),
        ({"num_layers": 17}, "num_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": math.nan}, "dropout"),
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 4097}, "batch_size"),
        ({"steps": 0}, "steps"),
        ({"steps": 2**62}, "steps"),
        ({"epochs": 0.0}, "epochs"),
        ({"epochs": math.inf}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"clip": -0.1}, "clip"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"seed": -5}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"eval_every": 0}, "eval_every"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"optimizer": 9}, "optimizer"),
        ({"schedule": 9}, "schedule"),
    ],
)
def test_out_of_range_values_name_their_field(fields: dict, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        hyper.resolve(pb.Hyperparameters(**fields))
    assert caught.value.field == f"hyperparameters.{field}"
    assert caught.value.message.startswith(f"hyperparameters.{field}")


def _metadata(resolved: hyper.ResolvedHyperparameters) -> dict:
    return {"model_config": resolved.model_config(30).to_dict(), "train_config": resolved.train.to_dict(),
            "checkpoint_every": resolved.checkpoint_every}


def test_a_resume_inherits_unset_fields_from_the_stored_version() -> None:
    stored = hyper.resolve(pb.Hyperparameters(hidden_size=16, embedding_size=8, num_layers=1, seq_len=12,
                                              batch_size=2, steps=50, checkpoint_every=10))
    base = hyper.from_checkpoint_metadata(_metadata(stored))
    assert base == stored
    resumed = hyper.resolve(pb.Hyperparameters(steps=80), base=base)
    assert resumed.architecture == stored.architecture and resumed.train.seq_len == 12
    assert resumed.train.steps == 80 and resumed.checkpoint_every == 10
    hyper.check_resumable_with(resumed, _metadata(stored), 3)


@pytest.mark.parametrize("fields, field", [({"hidden_size": 32}, "hidden_size"), ({"batch_size": 4}, "batch_size"),
                                           ({"optimizer": pb.OPTIMIZER_SGD}, "optimizer")])
def test_a_resume_must_keep_the_architecture_and_data_layout(fields: dict, field: str) -> None:
    stored = hyper.resolve(pb.Hyperparameters(hidden_size=16, batch_size=2))
    changed = hyper.resolve(pb.Hyperparameters(**fields), base=stored)
    with pytest.raises(errors.InvalidArgument) as caught:
        hyper.check_resumable_with(changed, _metadata(stored), 3)
    assert caught.value.field == f"hyperparameters.{field}" and "version 3" in caught.value.message


def test_a_corpus_too_short_for_the_windows_is_refused_up_front() -> None:
    train = hyper.resolve(pb.Hyperparameters(seq_len=10, batch_size=4, val_fraction=0.5)).train
    hyper.check_corpus_fits(88, train, "text")  # 44 training chars = 4 streams of 11
    with pytest.raises(errors.InvalidArgument) as caught:
        hyper.check_corpus_fits(87, train, "corpus_id")
    assert caught.value.field == "corpus_id" and "44" in caught.value.message
