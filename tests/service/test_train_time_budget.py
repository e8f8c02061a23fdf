"""The ``max_seconds`` hyperparameter (``charlstm train --max-minutes``): resolved, shown,
and ending a real job normally with a saved version."""

from __future__ import annotations

import grpc
import pytest

from charlstm.client.cli import build_parser
from charlstm.service import errors
from charlstm.service import hyperparameters as hyper
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

try:
    from .training_fixtures import CORPUS, tiny_hyperparameters
except ImportError:  # tests/service is not a package
    from training_fixtures import CORPUS, tiny_hyperparameters


def test_a_budget_alone_leaves_the_length_unset_and_round_trips() -> None:
    resolved = hyper.resolve(pb.Hyperparameters(max_seconds=90.0))
    assert (resolved.train.max_seconds, resolved.train.steps, resolved.train.epochs) == (90.0, None, None)
    message = hyper.to_proto(resolved)
    assert message.max_seconds == 90.0 and message.WhichOneof("length") is None
    assert hyper.resolve(message) == resolved
    both = hyper.resolve(pb.Hyperparameters(max_seconds=5.0, steps=7))
    assert (both.train.max_seconds, both.train.steps) == (5.0, 7)
    assert hyper.resolve(pb.Hyperparameters()).train.max_seconds is None


@pytest.mark.parametrize("value", [0.0, -3.0, float("nan"), float("inf")])
def test_a_bad_budget_names_the_field(value: float) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        hyper.resolve(pb.Hyperparameters(max_seconds=value))
    assert info.value.field == "hyperparameters.max_seconds"


def test_the_cli_sends_max_minutes_as_seconds(capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "m", "f.txt", "--max-minutes", "1.5"]).hp_max_seconds == 90.0
    assert parser.parse_args(["train", "m", "f.txt"]).hp_max_seconds is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "m", "f.txt", "--max-minutes", "0"])
    assert "--max-minutes" in capsys.readouterr().err


def test_a_job_with_only_a_budget_succeeds_with_a_version_when_time_is_up(server) -> None:
    budget = tiny_hyperparameters(max_seconds=1.0, eval_every=1_000_000)
    budget.ClearField("steps")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = charlstm_pb2_grpc.CharLstmStub(channel)
        events = list(stub.Train(pb.TrainRequest(model="timed", text=CORPUS, hyperparameters=budget), timeout=60))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "succeeded"
        job = events[0].accepted.job
        assert job.hyperparameters.max_seconds == 1.0 and job.hyperparameters.WhichOneof("length") is None
        last = [e.progress for e in events if e.HasField("progress")][-1]
        assert last.step == last.total_steps > 1 and last.HasField("val_loss")  # the end is validated
        assert 1.0 <= last.elapsed_seconds < 10.0
        model = stub.GetModel(pb.GetModelRequest(name="timed"))
        assert model.latest_version == events[-1].succeeded.version >= 1
