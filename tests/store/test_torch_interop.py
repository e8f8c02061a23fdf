"""A model saved by the store loads into plain PyTorch modules with `safetensors.torch.load_file`
+ `load_state_dict`, no conversion, and predicts what the NumPy engine predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402  (needs torch)

from charlstm.engine import CharLSTM, ModelConfig, Vocab  # noqa: E402
from charlstm.service.store import LocalStore  # noqa: E402

pytestmark = pytest.mark.interop

TEXT_LENGTH = 500


class TorchCharLSTM(torch.nn.Module):
    """The engine's architecture in stock PyTorch layers, with the same attribute names."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embedding_size)
        self.lstm = torch.nn.LSTM(config.embedding_size, config.hidden_size, config.num_layers,
                                  batch_first=False)
        self.decoder = torch.nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (T, B) -> next-character probabilities (T, B, V)."""
        hidden, _ = self.lstm(self.embedding(ids))  # (T, B, H), from the zero state
        return torch.softmax(self.decoder(hidden), dim=-1)


def sample_text(length: int) -> str:
    rng = np.random.default_rng(11)
    words = "the quick brown fox jumps over a lazy dog ROMEO: JULIET! wherefore art thou?".split()
    text = ""
    while len(text) < length:
        text += str(rng.choice(words)) + ("\n" if rng.random() < 0.1 else " ")
    return text[:length]


def engine_probabilities(model: CharLSTM, ids: np.ndarray) -> np.ndarray:
    """Feed ids one step at a time, as serving does: (T,) -> (T, V)."""
    state = model.zero_state(1)
    rows = []
    for char_id in ids:
        probs, state = model.step(np.array([char_id]), state)  # (1, V)
        rows.append(probs[0])
    return np.stack(rows)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_saved_model_predicts_the_same_in_pytorch(tmp_path: Path, dtype: str) -> None:
    text = sample_text(TEXT_LENGTH)
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=16, hidden_size=32, num_layers=2,
                         dtype=dtype)
    model = CharLSTM(config, seed=3)
    store = LocalStore(tmp_path / "store")
    version = store.save("interop", model.state_dict(),
                         {"model_config": config.to_dict(), "vocab": vocab.chars})

    # PyTorch side: the stored file as it is, into stock modules, strictly (names and shapes).
    weights = load_file(store.version_path("interop", version) / "weights.safetensors")
    assert {t.dtype for t in weights.values()} == {getattr(torch, dtype)}
    torch_model = TorchCharLSTM(config).to(getattr(torch, dtype))
    torch_model.load_state_dict(weights, strict=True)
    torch_model.eval()
    ids = vocab.encode(text)  # (T,)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids).reshape(-1, 1))[:, 0].double().numpy()

    # Engine side: rebuilt from what the store gives back, stepped one character at a time.
    checkpoint = store.load("interop")
    rebuilt = CharLSTM.from_state_dict(ModelConfig.from_dict(checkpoint.metadata["model_config"]),
                                       checkpoint.tensors)
    assert Vocab(checkpoint.metadata["vocab"]).chars == vocab.chars
    actual = engine_probabilities(rebuilt, ids)

    assert actual.shape == expected.shape == (TEXT_LENGTH, vocab.size)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(actual, engine_probabilities(model, ids), rtol=0, atol=1e-12)
