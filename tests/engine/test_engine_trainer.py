"""Trainer: progress reports, validation, best parameters, epochs, stopping, capture/restore."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from charlstm.engine import (CharLSTM, ConfigError, ModelConfig, TrainConfig, Trainer, TrainerState,
                             Vocab, evaluate_text)
from charlstm.engine.parallelism import LayoutChooser, default_parallelism

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 6


def make(text: str = TEXT, *, dtype: str = "float64", dropout: float = 0.2, model_seed: int = 5, workers: int | None = None,
         **kw) -> Trainer:
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=16, num_layers=2,
                                 dropout=dropout, dtype=dtype), seed=model_seed)
    config = dict(seq_len=10, batch_size=4, steps=30, eval_every=7, learning_rate=5e-3, seed=11)
    config.update(kw)
    return Trainer(model, vocab, text, TrainConfig(**config), workers=workers)


def run_steps(trainer: Trainer, n: int) -> list:
    """Run until ``n`` more steps are done (should_stop checked between steps)."""
    target = trainer.step + n
    return list(trainer.run(should_stop=lambda: trainer.step >= target))


@pytest.mark.parametrize("optimizer, split", [("adamw", 13), ("sgd", 13), ("adamw", 23)])
def test_capture_then_restore_into_a_fresh_trainer_continues_exactly(optimizer, split):
    kw = dict(optimizer=optimizer, weight_decay=0.01, warmup_steps=3, steps=30)
    uninterrupted = make(**kw)
    assert uninterrupted.windows_per_epoch == 23  # the run crosses an epoch end; split=23 is on it
    full = list(uninterrupted.run())
    assert len(full) == 30

    first = make(**kw)
    part1 = run_steps(first, split)
    saved = first.capture()
    # Through JSON and fresh arrays, as a store would keep it.
    saved = TrainerState(tensors={k: np.array(v) for k, v in saved.tensors.items()},
                         meta=json.loads(json.dumps(saved.meta)))
    second = make(model_seed=99, **kw)  # different initial weights: restore must replace them
    second.restore(saved)
    part2 = list(second.run())

    assert [p.step for p in part1 + part2] == list(range(1, 31))
    for a, b in zip(full, part1 + part2):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-12)
        assert (a.val_loss is None) == (b.val_loss is None)
        if a.val_loss is not None:
            assert a.val_loss == pytest.approx(b.val_loss, abs=1e-12)
    for name, value in uninterrupted.model.state_dict().items():
        np.testing.assert_allclose(second.model.state_dict()[name], value, rtol=0, atol=1e-12, err_msg=name)
    for name, value in uninterrupted.best_state_dict().items():
        np.testing.assert_allclose(second.best_state_dict()[name], value, rtol=0, atol=1e-12, err_msg=name)
    assert second.best_val_loss == uninterrupted.best_val_loss


def test_trainer_state_is_json_and_safetensors_friendly():
    trainer = make(steps=10)
    run_steps(trainer, 8)
    state = trainer.capture()
    json.dumps(state.meta)  # JSON-able
    for name, t in state.tensors.items():
        assert isinstance(name, str) and isinstance(t, np.ndarray)
        assert t.flags.c_contiguous and t.dtype in (np.float32, np.float64), name
    assert state.meta["step"] == 8


def test_restore_refuses_a_state_from_another_architecture():
    trainer = make()
    run_steps(trainer, 3)
    state = trainer.capture()
    vocab = Vocab.from_text(TEXT)
    other = Trainer(CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=12, num_layers=2,
                                         dtype="float64")), vocab, TEXT,
                    TrainConfig(seq_len=10, batch_size=4, steps=30))
    with pytest.raises(ConfigError) as err:
        other.restore(state)
    assert err.value.field == "model_config"
    other_window = make(seq_len=12)
    with pytest.raises(ConfigError) as err:
        other_window.restore(state)
    assert err.value.field == "seq_len"
    broken = TrainerState(tensors={k: v for k, v in state.tensors.items() if k != "optim.v"}, meta=state.meta)
    fresh = make()
    before = fresh.model.state_dict()
    with pytest.raises(ConfigError):
        fresh.restore(broken)
    assert fresh.step == 0  # unchanged on error
    for name, value in fresh.model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_progress_reports_every_step_with_validation_at_interval_and_end():
    trainer = make(steps=30, eval_every=7)
    reports = list(trainer.run())
    assert [r.step for r in reports] == list(range(1, 31))
    assert all(r.total_steps == 30 for r in reports)
    with_val = [r.step for r in reports if r.val_loss is not None]
    assert with_val == [7, 14, 21, 28, 30]
    for r in reports:
        assert math.isfinite(r.train_loss) and r.train_loss > 0
        assert r.chars_per_second > 0 and r.learning_rate > 0 and r.grad_norm > 0
        assert r.elapsed_seconds >= 0 and r.eta_seconds >= 0
        assert r.epoch == pytest.approx(r.step / trainer.windows_per_epoch)
    assert reports[-1].eta_seconds == 0
    elapsed = [r.elapsed_seconds for r in reports]
    assert elapsed == sorted(elapsed)
    # is_best marks the improvements, and best_val_loss is their minimum.
    vals = [r.val_loss for r in reports if r.val_loss is not None]
    assert trainer.best_val_loss == min(vals)
    assert [r.is_best for r in reports if r.val_loss is not None] == [
        v < min(vals[:i], default=math.inf) for i, v in enumerate(vals)]
    # The learning rate follows the cosine schedule down to min_lr_ratio * lr.
    assert reports[0].learning_rate == pytest.approx(5e-3)
    assert reports[-1].learning_rate == pytest.approx(5e-4)
    lrs = [r.learning_rate for r in reports]
    assert lrs == sorted(lrs, reverse=True)


def test_validation_is_the_loss_on_the_held_out_tail():
    trainer = make(steps=5, val_fraction=0.25)
    list(trainer.run())
    n_train = int(len(TEXT) * 0.75)
    assert trainer.train_characters == n_train
    direct = evaluate_text(trainer.model, trainer.vocab, TEXT[n_train:]).loss
    assert trainer.evaluate() == pytest.approx(direct, abs=1e-12)
    assert trainer.last_val_loss == pytest.approx(direct, abs=1e-12)


def test_best_state_dict_holds_the_best_validation_parameters():
    trainer = make(steps=40, eval_every=5, learning_rate=0.05, dropout=0.0)
    reports = list(trainer.run())
    best_step = trainer.best_step
    assert best_step is not None
    model = CharLSTM.from_state_dict(trainer.model.config, trainer.best_state_dict())
    n_train = trainer.train_characters
    assert evaluate_text(model, trainer.vocab, TEXT[n_train:]).loss == pytest.approx(trainer.best_val_loss, abs=1e-10)
    # latest parameters are kept separately
    latest_val = [r.val_loss for r in reports if r.val_loss is not None][-1]
    assert trainer.evaluate() == pytest.approx(latest_val, abs=1e-12)


def test_without_a_validation_slice_best_is_latest():
    trainer = make(steps=5, val_fraction=0.0)
    reports = list(trainer.run())
    assert all(r.val_loss is None for r in reports)
    assert trainer.evaluate() is None and trainer.best_val_loss is None
    for name, value in trainer.model.state_dict().items():
        np.testing.assert_array_equal(trainer.best_state_dict()[name], value)


def test_should_stop_is_checked_between_steps():
    trainer = make(steps=30)
    calls = []

    def stop() -> bool:
        calls.append(trainer.step)
        return trainer.step >= 4

    reports = list(trainer.run(should_stop=stop))
    assert [r.step for r in reports] == [1, 2, 3, 4]
    assert calls == [0, 1, 2, 3, 4]
    assert trainer.step == 4
    # run() again continues where it stopped
    more = list(trainer.run(should_stop=lambda: trainer.step >= 6))
    assert [r.step for r in more] == [5, 6]


def test_streams_read_contiguous_slices_and_state_resets_at_epoch_end():
    text = "".join(chr(ord("A") + i % 26) for i in range(4 * 21))
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=1, dtype="float64"))
    trainer = Trainer(model, vocab, text, TrainConfig(seq_len=5, batch_size=4, epochs=2.0, val_fraction=0.0))
    assert trainer.windows_per_epoch == 4  # 21 chars per stream -> 4 windows of 5 (+1 target)
    assert trainer.total_steps == 8
    seen = []
    original = model.loss_and_grad

    def spy(inputs, targets, state=None, dropout_masks=None, **kw):
        seen.append((vocab.decode(inputs[:, 0]), vocab.decode(inputs[:, 1]), vocab.decode(targets[:, 0]),
                     float(np.abs(state.h).sum())))
        return original(inputs, targets, state, dropout_masks, **kw)

    model.loss_and_grad = spy
    list(trainer.run())
    stream0 = [s[0] for s in seen]
    assert stream0[:4] == ["ABCDE", "FGHIJ", "KLMNO", "PQRST"]
    assert stream0[4:] == stream0[:4]  # the second epoch starts over
    assert seen[0][1] == text[21:26]  # stream 1 starts where stream 0's slice ends
    assert seen[0][2] == "BCDEF"  # targets are the inputs shifted by one
    state_norms = [s[3] for s in seen]
    assert state_norms[0] == 0 and state_norms[4] == 0  # zero state at each epoch start
    assert all(n > 0 for i, n in enumerate(state_norms) if i not in (0, 4))  # carried otherwise


def test_epochs_and_steps_set_the_length():
    assert make(steps=17).total_steps == 17
    t = make(steps=None, epochs=1.5)
    assert t.total_steps == math.ceil(1.5 * t.windows_per_epoch)
    assert make(steps=None).total_steps == 1000


def test_same_seed_same_run_and_different_seed_different_dropout():
    a = [r.train_loss for r in make(steps=6).run()]
    b = [r.train_loss for r in make(steps=6).run()]
    c = [r.train_loss for r in make(steps=6, seed=12).run()]
    assert a == b
    assert a != c


def test_float32_training_reduces_the_loss():
    trainer = make(dtype="float32", steps=60, learning_rate=1e-2, dropout=0.0)
    reports = list(trainer.run())
    assert trainer.model.params.flat.dtype == np.float32
    assert np.mean([r.train_loss for r in reports[-5:]]) < np.mean([r.train_loss for r in reports[:5]]) - 0.5


@pytest.mark.parametrize(
    "text, kw, field",
    [
        ("short text", {}, "text"),
        (TEXT, {"seq_len": 0}, "seq_len"),
        (TEXT, {"batch_size": -1}, "batch_size"),
        (TEXT, {"learning_rate": 0.0}, "learning_rate"),
        (TEXT, {"steps": 5, "epochs": 1.0}, "steps"),
        (TEXT, {"steps": 0}, "steps"),
        (TEXT, {"optimizer": "adam"}, "optimizer"),
        (TEXT, {"val_fraction": 1.0}, "val_fraction"),
        (TEXT, {"seq_len": len(TEXT)}, "text"),
    ],
)
def test_bad_training_configuration_is_refused(text, kw, field):
    with pytest.raises(ConfigError) as err:
        make(text, **kw)
    assert err.value.field == field
    assert field in str(err.value)


def test_vocab_must_fit_the_model():
    vocab = Vocab.from_text(TEXT)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size + 1))
    with pytest.raises(ConfigError) as err:
        Trainer(model, vocab, TEXT, TrainConfig())
    assert err.value.field == "vocab"


def test_worker_threads_give_the_same_training_up_to_rounding():
    one = make(steps=8, batch_size=6, workers=1)
    three = make(steps=8, batch_size=6, workers=3)
    a = [r.train_loss for r in one.run()]
    b = [r.train_loss for r in three.run()]
    np.testing.assert_allclose(a, b, rtol=1e-10)
    for name, value in one.model.state_dict().items():
        np.testing.assert_allclose(three.model.state_dict()[name], value, rtol=1e-8, atol=1e-10, err_msg=name)
    again = make(steps=8, batch_size=6, workers=3)
    assert [r.train_loss for r in again.run()] == b  # deterministic for a given number of workers


@pytest.mark.parametrize("streams, hidden, cores, expected", [
    (32, 128, 2, [(2, 1), (1, 2)]),  # shards of 16 x 4·128² too small, the whole batch not: try both
    (32, 256, 2, [(2, 1)]),  # shards of 16 x 4·256² are big enough: one shard per core
    (64, 512, 2, [(2, 1)]),
    (64, 128, 2, [(2, 1)]),  # shards of 32 streams at H=128 are big enough
    (16, 128, 2, [(1, 1)]),  # too few streams to shard, and too small to thread
    (32, 16, 2, [(2, 1)]),  # too small to thread: sharded as before
    (32, 128, 1, [(1, 1)]),
])
def test_default_parallelism_times_threaded_blas_only_where_the_shards_would_be_too_small(streams, hidden, cores, expected):
    assert default_parallelism(streams, hidden, cores) == expected
    # shards in worker processes are the faster layout at every size measured
    assert default_parallelism(streams, hidden, cores, shard_processes=True) == expected[:1]


def test_layout_chooser_times_both_then_keeps_the_faster_and_follows_a_change_of_load():
    chooser = LayoutChooser([(2, 1), (1, 2)], samples=3, warmup=1, probe_every=10, max_probe_every=40)
    seconds = {(2, 1): 1.0, (1, 2): 0.5}
    ran = []

    def steps(n):
        for _ in range(n):
            layout = chooser.next()
            ran.append(layout)
            chooser.record(seconds[layout])

    steps(118)
    # warm-up of each, then three timed steps of each, round robin
    assert ran[:8] == [(2, 1), (1, 2)] * 4 and chooser.settling_steps == 8
    # then the faster, with a probe of the other 10 steps after the choice, and at doubling
    # intervals (up to 40) while the probes do not change it
    probes = [i for i, layout in enumerate(ran) if i >= 8 and layout == (2, 1)]
    assert probes == [18, 39, 80]
    seconds[(1, 2)] = 5.0  # the threaded layout slows down (a busy neighbour)
    before = len(ran)
    steps(3)
    assert ran[before:] == [(1, 2), (2, 1), (2, 1)]  # left after one slow step, and not retaken
    steps(20)
    later = ran[before + 1 :]
    assert later.count((1, 2)) == 1 and later[10] == (1, 2)  # probed again 10 steps after the change
    seconds[(1, 2)] = 0.5  # the neighbour has gone: the next probe finds it fast, the step after
    before = len(ran)  # confirms it, and it is used again
    steps(25)
    first = ran.index((1, 2), before)
    assert ran[first : first + 3] == [(1, 2), (1, 2), (1, 2)] and ran[-3:] == [(1, 2)] * 3


def test_a_single_layout_is_always_used():
    chooser = LayoutChooser([(3, 1)])
    for _ in range(5):
        assert chooser.next() == (3, 1)
        chooser.record(1.0)


def test_a_trainer_without_worker_processes_alternates_layouts_and_trains_like_a_sharded_one(monkeypatch):
    from charlstm.engine import trainer as trainer_module
    from charlstm.engine.blas import get_num_threads
    monkeypatch.setattr(trainer_module, "available_cores", lambda: 2)

    def no_processes(*args, **kwargs):
        raise OSError("process creation refused")

    # Where worker processes cannot start, the shards run in threads and the layouts of
    # threads apply: at H=128, B=32 both are timed.
    monkeypatch.setattr(trainer_module, "ShardProcesses", no_processes)
    text = TEXT * 3
    vocab = Vocab.from_text(text)

    def build(workers):
        model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=128, num_layers=1,
                                     dtype="float64"), seed=3)
        config = TrainConfig(seq_len=8, batch_size=32, steps=6, eval_every=100, val_fraction=0.05, seed=2)
        return Trainer(model, vocab, text, config, workers=workers)

    chosen, sharded = build(None), build(2)
    before = get_num_threads()
    a, layouts = [], set()
    with pytest.warns(RuntimeWarning, match="shards run in threads.*process creation refused"):
        a.append(chosen.train_step())
    layouts.add((chosen.workers, chosen.blas_threads))
    for _ in range(5):
        a.append(chosen.train_step())
        layouts.add((chosen.workers, chosen.blas_threads))
    assert layouts == {(2, 1), (1, 2)}  # both were timed
    assert get_num_threads() == before  # each step's BLAS thread count is restored afterwards
    b = [sharded.train_step() for _ in range(6)]
    assert {(sharded.workers, sharded.blas_threads)} == {(2, 1)}
    np.testing.assert_allclose(a, b, rtol=1e-10)
    np.testing.assert_allclose(chosen.model.params.flat, sharded.model.params.flat, rtol=1e-8, atol=1e-10)
