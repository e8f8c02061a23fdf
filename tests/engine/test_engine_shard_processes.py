"""Training shards in worker processes: the thread shards' results bit for bit, clear errors,
and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charlstm.engine import CharLSTM, ConfigError, ModelConfig, TrainConfig, Trainer, Vocab, lstm
from charlstm.engine.evaluate import mean_loss
from charlstm.engine.model import available_cores
from charlstm.engine.parallelism import default_parallelism
from charlstm.engine.shard_processes import ShardProcessError, ShardProcesses

V, E, H, L = 11, 5, 7, 2
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


def model(dtype: str = "float32") -> CharLSTM:
    return CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L,
                                dtype=dtype), seed=3)


def window(T: int = 6, B: int = 5):
    rng = np.random.default_rng(0)
    return rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B)), rng


def children() -> set[int]:
    """This process's live child processes (Linux)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


@pytest.fixture
def processes():
    made: list[ShardProcesses] = []

    def start(count: int, dtype: str = "float32") -> ShardProcesses:
        made.append(ShardProcesses(count, (V, E, H, L), np.dtype(dtype)))
        return made[-1]

    yield start
    for p in made:
        p.close()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [False, True])
def test_process_shards_give_the_thread_shards_results_bit_for_bit(processes, dtype, dropout):
    ids, targets, rng = window()
    threads, procs = model(dtype), model(dtype)
    masks = [lstm.dropout_mask(rng, (6, 5, H), 0.3, threads.dtype) for _ in range(L)] if dropout else None
    pool = processes(2, dtype)
    for _ in range(2):  # the second step reuses every buffer on both sides
        loss_t, grad_t, state_t = threads.loss_and_grad(ids, targets, None, masks, workers=3)
        loss_p, grad_p, state_p = procs.loss_and_grad(ids, targets, None, masks, workers=3,
                                                      processes=pool)
        assert loss_p == loss_t
        assert np.array_equal(grad_p.flat, grad_t.flat)
        assert np.array_equal(state_p.h, state_t.h) and np.array_equal(state_p.c, state_t.c)
        # the workers read the parameters as they are at each call
        threads.params.flat *= 0.9
        procs.params.flat *= 0.9


def test_loss_only_steps_leave_the_gradient_out(processes):
    ids, targets, _ = window()
    threads, procs = model(), model()
    loss_t, _, state_t = threads.loss_and_grad(ids, targets, need_grad=False, workers=2)
    loss_p, grad_p, state_p = procs.loss_and_grad(ids, targets, need_grad=False, workers=2,
                                                  processes=processes(1))
    assert loss_p == loss_t and grad_p is None and np.array_equal(state_p.h, state_t.h)


def test_the_number_of_worker_processes_must_match_the_shards(processes):
    ids, targets, _ = window()
    with pytest.raises(ConfigError, match="workers - 1 = 2"):
        model().loss_and_grad(ids, targets, workers=3, processes=processes(1))


def test_a_failing_shard_reports_the_workers_traceback(processes):
    pool = processes(1)
    ids, targets, _ = window()
    bad_masks = [np.ones((2, 2, 2), np.float32)] * L  # not (T, B, H): the worker's forward fails
    pool.submit(0, ids, targets, np.zeros((L, 5, H), np.float32), np.zeros((L, 5, H), np.float32),
                bad_masks, True)
    with pytest.raises(ShardProcessError, match="(?s)shard process 1 failed.*Traceback"):
        pool.result(0)
    # the worker survives its error and serves the next shard
    loss, h, c = (pool.submit(0, ids, targets, np.zeros((L, 5, H), np.float32),
                              np.zeros((L, 5, H), np.float32), None, True), pool.result(0))[1]
    assert np.isfinite(loss) and h.shape == (L, 5, H)


def test_a_dead_worker_is_a_clear_error(processes):
    pool = processes(1)
    os.kill(pool.pids[0], signal.SIGKILL)
    ids, targets, _ = window()
    with pytest.raises(ShardProcessError, match="exited unexpectedly"):
        model().loss_and_grad(ids, targets, workers=2, processes=pool)


def test_closing_ends_the_workers():
    pool = ShardProcesses(2, (V, E, H, L), np.float32)
    assert set(pool.pids) <= children()
    pool.close()
    pool.close()  # idempotent
    assert not set(pool.pids) & children()


def default_sharded_trainer(workers: int | None = None) -> Trainer:
    vocab = Vocab.from_text(TEXT)
    m = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=16,
                             num_layers=2, dropout=0.1), seed=5)
    # 32 streams: two shards of 16 by default on 2 or more cores
    return Trainer(m, vocab, TEXT, TrainConfig(seq_len=8, batch_size=32, steps=4, eval_every=2,
                                               seed=7), workers=workers)


needs_two_cores = pytest.mark.skipif(
    default_parallelism(32, 16, available_cores())[0][0] < 2,
    reason="the default layout shards only with 2 or more cores")


@needs_two_cores
def test_the_default_trainer_shards_in_processes_as_the_threads_would_and_ends_them():
    before = children()
    default = default_sharded_trainer()
    assert default.layouts.layouts[0][0] == 2
    runs = list(default.run())
    assert default.workers == 2
    threads = default_sharded_trainer(workers=2)
    assert [r.train_loss for r in threads.run()] == [r.train_loss for r in runs]
    assert np.array_equal(threads.model.params.flat, default.model.params.flat)
    assert children() == before  # run() ended its workers


@needs_two_cores
def test_a_trainer_whose_worker_died_fails_that_step_and_starts_new_workers():
    trainer = default_sharded_trainer()
    trainer.train_step()
    os.kill(trainer._processes.pids[0], signal.SIGKILL)
    with pytest.raises(ShardProcessError, match="exited unexpectedly"):
        trainer.train_step()
    loss, _, _ = trainer.train_step()
    assert np.isfinite(loss)
    trainer.close()


_TRAIN_FOREVER = """
import sys
sys.path.insert(0, {tests!r})
from test_engine_shard_processes import default_sharded_trainer
trainer = default_sharded_trainer()
trainer.train_step()
print(*trainer._processes.pids, flush=True)
while True:
    trainer.train_step()
"""


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@needs_two_cores
def test_the_workers_end_when_their_trainer_is_killed():
    code = _TRAIN_FOREVER.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers
        parent.kill()  # SIGKILL: no chance to close anything
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "a shard worker outlived its killed trainer"
            time.sleep(0.05)
    finally:
        parent.kill()


def spy_on_scores(pool: ShardProcesses) -> list[int]:
    """The workers ``pool.submit_score`` is called for, from now on."""
    calls: list[int] = []
    real = pool.submit_score

    def submit_score(i, *args):
        calls.append(i)
        real(i, *args)

    pool.submit_score = submit_score  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_validation_scored_in_the_workers_equals_the_threads_bit_for_bit(processes, dtype):
    ids = np.random.default_rng(1).integers(0, V, 4000)
    m = model(dtype)
    pool = processes(1, dtype)
    calls = spy_on_scores(pool)
    threads = mean_loss(m, ids, streams=32, workers=2)
    assert mean_loss(m, ids, streams=32, workers=2, processes=pool) == threads
    assert calls == [0]
    # Another split than the workers': threads, as without them.
    assert mean_loss(m, ids, streams=32, workers=3, processes=pool) == \
        mean_loss(m, ids, streams=32, workers=3)
    assert calls == [0]


def test_a_failing_score_reports_the_workers_traceback(processes):
    pool = processes(1)
    inputs = np.full((9, 4), V)  # an id past the vocabulary: the worker's embedding lookup fails
    scored = np.ones((9, 4), bool)
    pool.submit_score(0, inputs, inputs, scored, np.zeros(4, bool), 2)
    with pytest.raises(ShardProcessError, match="(?s)shard process 1 failed.*IndexError"):
        pool.result(0)
    pool.submit_score(0, inputs % V, inputs % V, scored, np.zeros(4, bool), 2)
    assert np.isfinite(pool.result(0))  # the worker serves the next job


@needs_two_cores
def test_a_trainers_validation_runs_in_its_shard_workers():
    vocab = Vocab.from_text(TEXT)
    m = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=16,
                             num_layers=2), seed=5)
    # 67,500 validation characters: 32 streams, two workers' worth
    trainer = Trainer(m, vocab, TEXT * 50, TrainConfig(seq_len=8, batch_size=32, steps=4,
                                                      val_fraction=0.5, seed=7))
    try:
        trainer.train_step()
        calls = spy_on_scores(trainer._processes)
        val = trainer.evaluate()
        assert calls == [0]
        assert val == mean_loss(m, trainer._val_ids, workers=2)  # the threads' number
    finally:
        trainer.close()
