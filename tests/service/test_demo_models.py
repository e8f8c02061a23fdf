"""The bundled demo model: ``charlstm serve`` offers ``shakespeare`` out of the box (float16
weights, served as float32), never replaces a user's model of that name, and can be turned off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from charlstm.client import CharLstmClient
from charlstm.engine import CharLSTM, ModelConfig, Vocab
from charlstm.service.config import ServerConfig, add_serve_arguments
from charlstm.service.demo_models import DEMO_DIR, bundled_models, install_demo_models
from charlstm.service.server import create_server
from charlstm.service.store import LocalStore

import argparse


@pytest.fixture
def serve(tmp_path: Path):
    started = []

    def serve(**overrides):
        settings = dict(host="127.0.0.1", port=0, metrics_port=-1, store=str(tmp_path / "store"))
        settings.update(overrides)
        started.append(create_server(ServerConfig(**settings)))
        return started[-1]

    yield serve
    for running in started:
        running.stop(0.5)


def test_the_package_bundles_shakespeare_in_half_precision_under_5_mb() -> None:
    assert "shakespeare" in bundled_models()
    weights = DEMO_DIR / "shakespeare" / "weights.safetensors"
    assert weights.stat().st_size <= 5 * 1000 * 1000
    metadata = json.loads((DEMO_DIR / "shakespeare" / "metadata.json").read_text())
    assert metadata["demo"]["storage_dtype"] == "float16"
    assert metadata["demo"]["val_loss_float16"] <= 1.5  # stated in the README


def test_predict_and_stream_on_shakespeare_right_after_start(serve) -> None:
    running = serve()
    with CharLstmClient(f"127.0.0.1:{running.port}") as client:
        result = client.predict("shakespeare", "ROMEO:", length=60, temperature=0.8, seed=1,
                                next_top_k=3)
        prediction = result.predictions[0]
        assert len(prediction.continuation) == 60
        assert prediction.next[0][0] == "\n"  # a speaker's name ends its line
        with client.stream("shakespeare", temperature=0.8, seed=2) as session:
            session.feed("JULIET:\n")
            assert len("".join(session.generate(40))) == 40
        model = client.get_model("shakespeare")
        assert model.latest_version == 1
    stored = LocalStore(Path(running.servicer.config.store)).load("shakespeare")
    assert {t.dtype for t in stored.tensors.values()} == {np.dtype(np.float16)}
    # The next start finds it in the store and leaves it alone.
    running.stop(0.5)
    again = serve()
    assert [v.version for v in again.servicer.store.list_versions("shakespeare")] == [1]


def test_a_users_model_of_that_name_is_never_replaced(tmp_path: Path, serve) -> None:
    store = LocalStore(tmp_path / "store")
    vocab = Vocab.from_text("abc")
    mine = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=1))
    store.save("Shakespeare", mine.state_dict(), {"model_config": mine.config.to_dict(), "vocab": vocab.chars})
    running = serve()
    assert running.servicer.store.list_models() == ["Shakespeare"]  # case variants are the same name
    assert running.servicer.store.load("Shakespeare").metadata["model_config"]["hidden_size"] == 8


def test_demo_models_off_imports_nothing(serve) -> None:
    parser = add_serve_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--demo-models", "off"]).demo_models is False
    assert parser.parse_args([]).demo_models is True
    assert add_serve_arguments(argparse.ArgumentParser(), {"CHARLSTM_DEMO_MODELS": "off"}).parse_args([]).demo_models is False
    running = serve(demo_models=False)
    assert running.servicer.store.list_models() == []


def test_float16_weights_are_stored_as_such_and_served_as_float32(tmp_path: Path) -> None:
    vocab = Vocab.from_text("to be or not to be")
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=2), seed=3)
    half = {k: v.astype(np.float16) for k, v in model.state_dict().items()}
    folder = tmp_path / "demo" / "tiny"
    folder.mkdir(parents=True)
    save_file(half, str(folder / "weights.safetensors"))
    (folder / "metadata.json").write_text(json.dumps({"model_config": model.config.to_dict(), "vocab": vocab.chars}))
    (tmp_path / "demo" / "incomplete").mkdir()  # no files: not a bundled model
    store = LocalStore(tmp_path / "store")
    assert install_demo_models(store, tmp_path / "demo") == ["tiny"]
    assert install_demo_models(store, tmp_path / "demo") == []  # already there
    loaded = store.load("tiny")
    assert loaded.tensors["lstm.weight_hh_l1"].dtype == np.float16
    served = CharLSTM.from_state_dict(ModelConfig.from_dict(loaded.metadata["model_config"]), loaded.tensors)
    assert served.params.flat.dtype == np.float32
    np.testing.assert_array_equal(served.state_dict()["decoder.weight"], half["decoder.weight"].astype(np.float32))
