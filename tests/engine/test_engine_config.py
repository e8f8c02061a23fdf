"""ModelConfig / TrainConfig: validation messages, dict round trips."""

from __future__ import annotations

import json

import pytest

from charlstm.engine import CharLSTM, ConfigError, ModelConfig, TrainConfig


@pytest.mark.parametrize(
    "kw, field, says",
    [
        ({"hidden_size": 0}, "hidden_size", "hidden_size must be an integer in [1, 4096] (got 0)"),
        ({"hidden_size": -3}, "hidden_size", "(got -3)"),
        ({"hidden_size": 2.5}, "hidden_size", "integer"),
        ({"hidden_size": True}, "hidden_size", "integer"),
        ({"embedding_size": 0}, "embedding_size", "[1, 4096]"),
        ({"num_layers": 0}, "num_layers", "[1, 16]"),
        ({"num_layers": 17}, "num_layers", "[1, 16]"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"dropout": -0.1}, "dropout", "[0, 1)"),
        ({"dropout": float("nan")}, "dropout", "[0, 1)"),
        ({"dtype": "float16"}, "dtype", "'float32', 'float64'"),
        ({"vocab_size": 1}, "vocab_size", "vocab_size"),
    ],
)
def test_bad_model_config_names_the_field_and_range(kw, field, says):
    config = ModelConfig(**{"vocab_size": 10, **kw})
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert err.value.field == field
    assert isinstance(err.value, ValueError)
    assert says in str(err.value)
    with pytest.raises(ConfigError):
        CharLSTM(config)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"steps": 10, "epochs": 2.0}, "steps"),
        ({"steps": 0}, "steps"),
        ({"epochs": 0.0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"schedule": "step"}, "schedule"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"clip": -1.0}, "clip"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"eval_every": 0}, "eval_every"),
    ],
)
def test_bad_train_config_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kw).validate()
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_defaults_are_valid_and_round_trip_through_json():
    m = ModelConfig(vocab_size=66, dropout=0.25, dtype="float64")
    m.validate()
    assert ModelConfig.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    t = TrainConfig(epochs=2.5, optimizer="sgd", schedule="constant")
    t.validate()
    assert TrainConfig.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert TrainConfig().to_dict()["steps"] is None


def test_from_dict_refuses_unknown_and_missing_fields_and_bad_values():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"vocab_size": 5, "hiden_size": 3})
    assert err.value.field == "hiden_size"
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"hidden_size": 3})
    assert err.value.field == "vocab_size"
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"batch_size": 0})
    assert err.value.field == "batch_size"
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([1, 2])
