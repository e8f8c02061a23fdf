"""ListModels, GetModel, DeleteModel, SetLabel and Evaluate through a real server."""

from __future__ import annotations

import math

import grpc
import pytest
from serving_helpers import CORPUS, ref, status_details
from test_predict import load_engine_model

from charlstm.engine import evaluate_text
from charlstm.service.corpora import CorpusStore
from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb


def test_list_models_describes_each_latest_version(stub, store_dir):
    reply = stub.ListModels(pb.ListModelsRequest())
    models = {m.name: m for m in reply.models}
    assert set(models) == {"tiny", "other"}
    tiny = models["tiny"]
    assert tiny.latest_version == 2 and dict(tiny.labels) == {"stable": 1}
    assert len(tiny.versions) == 0  # versions only in GetModel
    model, vocab = load_engine_model(store_dir, version=2)
    assert tiny.vocabulary == vocab.chars
    arch = tiny.architecture
    assert (arch.vocab_size, arch.embedding_size, arch.hidden_size, arch.num_layers) == (
        vocab.size, 8, 24, 2)
    assert arch.num_parameters == model.num_parameters()


def test_get_model_lists_versions_with_metrics(stub, store_dir):
    model = stub.GetModel(pb.GetModelRequest(name="tiny"))
    assert [v.version for v in model.versions] == [1, 2]
    infos = LocalStore(store_dir).list_versions("tiny")
    for v, info in zip(model.versions, infos):
        meta = info.metadata["metrics"]
        assert v.step == meta["step"]
        assert math.isclose(v.train_loss, meta["train_loss"])
        assert math.isclose(v.val_loss, meta["val_loss"])
        assert v.size_bytes == info.size_bytes > 0
        assert abs(v.created.ToNanoseconds() / 1e9 - info.created) < 1e-3
        assert not v.resumable
    assert list(model.versions[0].labels) == ["stable"] and not model.versions[1].labels


def test_set_label_moves_and_removes(stub):
    model = stub.SetLabel(pb.SetLabelRequest(name="tiny", label="canary", version=2))
    assert dict(model.labels) == {"stable": 1, "canary": 2}
    assert stub.Predict(pb.PredictRequest(model=ref(label="canary"), inputs=["a"])).version == 2
    stub.SetLabel(pb.SetLabelRequest(name="tiny", label="stable", version=2))
    model = stub.SetLabel(pb.SetLabelRequest(name="tiny", label="canary", version=0))
    assert dict(model.labels) == {"stable": 2}
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model=ref(label="canary"), inputs=["a"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_delete_a_version_then_the_model(stub):
    # Version 1 carries the `stable` label: refused until the label goes.
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteModel(pb.DeleteModelRequest(name="tiny", version=1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "label" in err.value.details()

    assert list(stub.DeleteModel(pb.DeleteModelRequest(name="tiny", version=2)).deleted_versions) == [2]
    # The cache does not keep serving the deleted version: latest is now 1.
    assert stub.Predict(pb.PredictRequest(model=ref(), inputs=["a"])).version == 1
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model=ref(version=2), inputs=["a"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    assert list(stub.DeleteModel(pb.DeleteModelRequest(name="tiny")).deleted_versions) == [1]
    assert {m.name for m in stub.ListModels(pb.ListModelsRequest()).models} == {"other"}
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(name="tiny"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_being_trained_cannot_be_deleted(stub):
    train = stub.Train(pb.TrainRequest(
        model="tiny", text=CORPUS,
        hyperparameters=pb.Hyperparameters(embedding_size=8, hidden_size=16, num_layers=1,
                                           seq_len=16, batch_size=4, steps=1_000_000)))
    job = next(train).accepted.job
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteModel(pb.DeleteModelRequest(name="tiny"))
        code, message, _ = status_details(err.value)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and job.id in message
        # Versions the job does not need can still go.
        assert list(stub.DeleteModel(pb.DeleteModelRequest(name="tiny", version=2)).deleted_versions) == [2]
    finally:
        stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
        train.cancel()


def test_evaluate_text_and_corpus_match_the_engine(stub, store_dir):
    text = "the lazy dog jumps over the quick brown fox.\n" * 3 + "Zebra!"
    reply = stub.Evaluate(pb.EvaluateRequest(model=ref(version=1), text=text))
    model, vocab = load_engine_model(store_dir, version=1)
    expected = evaluate_text(model, vocab, text)
    assert (reply.model, reply.version) == ("tiny", 1)
    assert math.isclose(reply.loss, expected.loss, rel_tol=1e-6)
    assert math.isclose(reply.bits_per_char, expected.loss / math.log(2), rel_tol=1e-6)
    assert reply.characters == len(text) - 1
    assert reply.unknown_characters == sum(ch not in vocab.chars for ch in text) > 0

    corpus = CorpusStore(store_dir / "corpora", max_bytes=1 << 20).put_text(text)
    by_id = stub.Evaluate(pb.EvaluateRequest(model=ref(version=1), corpus_id=corpus.id))
    assert math.isclose(by_id.loss, reply.loss, rel_tol=1e-9)


def test_the_trained_model_beats_the_barely_trained_one(stub):
    """Version 1 (150 steps) has a lower loss on its training text than version 2 (60 steps)."""
    losses = [stub.Evaluate(pb.EvaluateRequest(model=ref(version=v), text=CORPUS[:500])).loss
              for v in (1, 2)]
    assert losses[0] < losses[1]
