"""charlstm.engine: a character-level LSTM language model in NumPy.

Embedding -> stacked LSTM -> linear -> softmax, trained with truncated BPTT; PyTorch-compatible
weights; batched stepping and sampling for serving. NumPy is the only dependency.

    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size), seed=0)
    trainer = Trainer(model, vocab, text, TrainConfig(steps=2000))
    for progress in trainer.run():
        ...
    print("".join(ch for ch, _ in generate(model, vocab, "ROMEO:", 200, SamplingOptions(temperature=0.8))))
"""

from .config import ConfigError, ModelConfig, TrainConfig
from .evaluate import EvalResult, evaluate_text
from .model import CharLSTM
from .sampling import Sampler, SamplingOptions, generate, top_chars
from .state import LSTMState
from .trainer import Trainer, TrainerState, TrainProgress
from .vocab import Vocab

__all__ = [
    "CharLSTM",
    "ConfigError",
    "EvalResult",
    "LSTMState",
    "ModelConfig",
    "Sampler",
    "SamplingOptions",
    "TrainConfig",
    "TrainProgress",
    "Trainer",
    "TrainerState",
    "Vocab",
    "evaluate_text",
    "generate",
    "top_chars",
]
