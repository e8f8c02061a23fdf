"""The PyTorch twin of the engine's model and training step: what a user would otherwise pick.

Embedding(V, E) -> nn.LSTM(H, L) (oneDNN kernel on the CPU) -> Linear(H, V), float32, Adam,
cross-entropy, gradient clipping at 5, with the state carried between windows.
"""

from __future__ import annotations

from typing import Any


def torch_or_none() -> Any:
    """The torch module, or None if the optional `interop` extra is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def build_net(torch: Any, vocab_size: int, embedding: int, hidden: int, layers: int) -> Any:
    """nn.Module mapping ids (T, B) and a state to logits (T, B, V) and the new state."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab_size, embedding)
            self.lstm = torch.nn.LSTM(embedding, hidden, layers)
            self.decoder = torch.nn.Linear(hidden, vocab_size)

        def forward(self, x, state):
            out, state = self.lstm(self.embedding(x), state)
            return self.decoder(out), state

    return Net()


class TorchTrainer:
    """B contiguous streams of ``ids``, a window of T per step, as the engine's Trainer reads
    them; ``train_step()`` is one forward, backward, clip and Adam update."""

    def __init__(self, torch: Any, ids: Any, vocab_size: int, embedding: int, hidden: int,
                 layers: int, batch: int, window: int, lr: float = 2e-3) -> None:
        self.torch = torch
        torch.manual_seed(0)
        self.net = build_net(torch, vocab_size, embedding, hidden, layers)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.ids = torch.from_numpy(ids)
        self.V, self.batch, self.window = vocab_size, batch, window
        self.stream_len = (len(ids) - 1) // batch
        self.starts = torch.arange(batch) * self.stream_len
        self.state = None
        self.steps = 0

    def train_step(self) -> float:
        torch, T = self.torch, self.window
        offset = (self.steps * T) % (self.stream_len - T - 1)
        self.steps += 1
        index = self.starts[None, :] + offset + torch.arange(T)[:, None]  # (T, B)
        x, y = self.ids[index], self.ids[index + 1]
        logits, state = self.net(x, self.state)
        self.state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.V), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.optimizer.step()
        return loss.item()
