"""Helpers shared by the engine tests (imported by name; conftest.py holds only fixtures)."""

from __future__ import annotations

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab


def train(text: str, *, seq_len: int, steps: int, batch_size: int = 4, hidden_size: int = 64,
          embedding_size: int = 16, num_layers: int = 1, learning_rate: float = 1e-2, seed: int = 0,
          dtype: str = "float32", dropout: float = 0.0, **train_kw) -> tuple[CharLSTM, Vocab, Trainer, list]:
    """Train a small model on all of ``text`` (no validation slice unless asked) and return
    it with its vocabulary, trainer and progress reports."""
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=embedding_size, hidden_size=hidden_size,
                                 num_layers=num_layers, dropout=dropout, dtype=dtype), seed=seed)
    config = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=steps, learning_rate=learning_rate,
                         val_fraction=train_kw.pop("val_fraction", 0.0), seed=seed, **train_kw)
    trainer = Trainer(model, vocab, text, config)
    reports = list(trainer.run())
    return model, vocab, trainer, reports
