"""TrainConfig.max_seconds: a wall-clock budget that ends training and drives the cosine."""

from __future__ import annotations

import math
import types

import pytest

from charlstm.engine import CharLSTM, ConfigError, ModelConfig, TrainConfig, Trainer, Vocab
from charlstm.engine import trainer as trainer_module
from charlstm.engine.optim import learning_rate

TEXT = ("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n") * 8
LR, MIN_RATIO = 4e-3, 0.1


class FakeClock:
    """Stands in for ``time`` in the trainer: only advances when a training step runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def make(clock: FakeClock, seconds_per_step: float = 1.0, **kw) -> Trainer:
    vocab = Vocab.from_text(TEXT)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=6, hidden_size=12, num_layers=1), seed=2)
    config = dict(seq_len=8, batch_size=4, learning_rate=LR, min_lr_ratio=MIN_RATIO, eval_every=4, seed=3)
    config.update(kw)
    trainer = Trainer(model, vocab, TEXT, TrainConfig(**config), workers=1)
    step = trainer.train_step

    def timed_step():
        out = step()
        clock.now += seconds_per_step
        return out

    trainer.train_step = timed_step  # each step "takes" seconds_per_step on the fake clock
    return trainer


def cosine(progress: float) -> float:
    return LR * MIN_RATIO + LR * (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def test_the_budget_alone_ends_training_and_the_cosine_follows_the_clock(clock):
    trainer = make(clock, max_seconds=10.0)
    progress = list(trainer.run())
    assert [p.step for p in progress] == list(range(1, 11))
    assert trainer.total_steps == 10 and progress[-1].total_steps == 10
    # Step j (0-based) starts after j seconds: its rate sits at j/10 of the way down the cosine.
    assert [p.learning_rate for p in progress] == pytest.approx([cosine(j / 10) for j in range(10)])
    # Before the end the total is an estimate from the step time; the end is validated.
    assert [p.total_steps for p in progress[:3]] == [10, 10, 10]
    assert [p.step for p in progress if p.val_loss is not None] == [4, 8, 10]
    assert progress[-1].eta_seconds == 0
    assert trainer.elapsed_seconds() == pytest.approx(10.0)


def test_a_step_limit_that_comes_first_ends_training_and_sets_the_pace(clock):
    trainer = make(clock, max_seconds=100.0, steps=5)
    progress = list(trainer.run())
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert [p.learning_rate for p in progress] == pytest.approx([cosine(j / 4) for j in range(5)])


def test_a_budget_that_comes_first_cuts_a_step_limit_short(clock):
    trainer = make(clock, seconds_per_step=2.0, max_seconds=7.0, steps=1000)
    progress = list(trainer.run())
    assert progress[-1].step == 4 == trainer.total_steps  # 8 s >= 7 s after the 4th step
    assert progress[-1].val_loss is not None


def test_the_budget_spans_capture_and_restore(clock):
    first = make(clock, max_seconds=6.0)
    list(first.run(should_stop=lambda: first.step >= 4))
    state = first.capture()
    second = make(clock, max_seconds=6.0)
    second.restore(state)
    assert second.elapsed_seconds() == pytest.approx(4.0)
    assert [p.step for p in second.run()] == [5, 6]
    # Restored with the budget already spent: nothing to do, and training counts as finished.
    third = make(clock, max_seconds=6.0)
    third.restore(second.capture())
    assert list(third.run()) == [] and third.total_steps == third.step == 6


def test_learning_rate_takes_an_explicit_progress():
    assert learning_rate(0, 10, 1.0, "cosine", 0, 0.0, progress=0.5) == pytest.approx(0.5)
    assert learning_rate(0, 10, 1.0, "cosine", 0, 0.0, progress=2.0) == pytest.approx(0.0)
    assert learning_rate(0, 10, 1.0, "cosine", 4, 0.0, progress=0.5) == pytest.approx(0.25)  # warm-up first
    assert learning_rate(5, 10, 1.0, "constant", 0, 0.0, progress=0.9) == 1.0


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "60"])
def test_a_bad_budget_is_refused(value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(max_seconds=value).validate()
    assert info.value.field == "max_seconds"


def test_the_budget_round_trips_through_the_dict():
    config = TrainConfig(max_seconds=90.5, steps=None)
    assert TrainConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["max_seconds"]  # configs saved before the field existed still load
    assert TrainConfig.from_dict(old).max_seconds is None
