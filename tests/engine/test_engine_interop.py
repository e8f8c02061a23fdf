"""PyTorch interoperability: the same weights give the same numbers in nn.Embedding/LSTM/Linear."""

from __future__ import annotations

import numpy as np
import pytest

from charlstm.engine import CharLSTM, LSTMState, ModelConfig

pytestmark = pytest.mark.interop
torch = pytest.importorskip("torch")

V, E, H, L = 13, 6, 10, 2


def torch_modules(model: CharLSTM, dtype):
    emb = torch.nn.Embedding(V, E, dtype=dtype)
    lstm = torch.nn.LSTM(E, H, L, dtype=dtype)
    dec = torch.nn.Linear(H, V, dtype=dtype)
    sd = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    emb.load_state_dict({"weight": sd["embedding.weight"]})
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in sd.items() if k.startswith("lstm.")})
    dec.load_state_dict({"weight": sd["decoder.weight"], "bias": sd["decoder.bias"]})
    return emb, lstm, dec


def test_step_probabilities_match_pytorch(rng):
    model = CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L), seed=4)
    emb, lstm, dec = torch_modules(model, torch.float32)
    B = 3
    state = LSTMState(rng.normal(0, 0.5, (L, B, H)).astype(np.float32), rng.normal(0, 0.5, (L, B, H)).astype(np.float32))
    hc = (torch.from_numpy(state.h.copy()), torch.from_numpy(state.c.copy()))
    with torch.no_grad():
        for _ in range(8):
            ids = rng.integers(0, V, B)
            probs, state = model.step(ids, state)
            out, hc = lstm(emb(torch.from_numpy(ids)[None]), hc)
            expected = torch.softmax(dec(out[0]).double(), dim=-1).numpy()
            np.testing.assert_allclose(probs, expected, atol=1e-5)
        np.testing.assert_allclose(state.h, hc[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(state.c, hc[1].numpy(), atol=1e-5)


def test_loss_and_gradients_match_pytorch_autograd(rng):
    model = CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L, dtype="float64"), seed=5)
    emb, lstm, dec = torch_modules(model, torch.float64)
    T, B = 7, 4
    inputs = rng.integers(0, V, (T, B))
    targets = rng.integers(0, V, (T, B))
    loss, grad, _ = model.loss_and_grad(inputs, targets)

    out, _ = lstm(emb(torch.from_numpy(inputs)))
    logits = dec(out)
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), abs=1e-12)

    # Our gradient, converted to PyTorch names through the same mapping as state_dict().
    from charlstm.engine.model import torch_tensors
    ours = torch_tensors(grad)
    theirs = {"embedding.weight": emb.weight.grad, "decoder.weight": dec.weight.grad, "decoder.bias": dec.bias.grad}
    theirs.update({f"lstm.{k}": p.grad for k, p in lstm.named_parameters()})
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        np.testing.assert_allclose(ours[name], g.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
