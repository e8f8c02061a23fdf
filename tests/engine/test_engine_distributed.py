"""Data-parallel training: N ranks under a real ``mpirun`` train the model one process would
(float64, to 1e-10), and the communicator seam itself.

The mpirun tests need OpenMPI's ``mpirun`` and mpi4py (the ``mpi`` extra); without them they
skip, saying what is missing (see the ``mpirun`` fixture). ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charlstm.engine import ConfigError, Trainer
from charlstm.engine.distributed import LocalCommunicator, from_environment, launched_by_mpi

sys.path.insert(0, str(Path(__file__).parent))
from mpi_training_script import TEXT, setup  # noqa: E402

SCRIPT = Path(__file__).parent / "mpi_training_script.py"
STEPS = 20


def run_ranks(mpirun: list[str], tmp_path: Path, ranks: int, batch_size: int,
              *mode: str) -> dict:
    out = tmp_path / f"np{ranks}-b{batch_size}.pkl"
    args = list(mode) or [str(STEPS)]
    cmd = mpirun + [str(ranks), sys.executable, str(SCRIPT), str(out), str(batch_size), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.mark.mpi
@pytest.mark.parametrize("batch_size", [6, 5], ids=["even-split", "uneven-split"])
def test_two_ranks_train_the_single_process_model(mpirun, tmp_path, batch_size):
    got = run_ranks(mpirun, tmp_path, 2, batch_size)
    single = setup(batch_size, STEPS)
    reports = list(single.run())
    assert got["size"] == 2
    assert STEPS > single.windows_per_epoch  # the run crosses an epoch boundary
    # Every rank holds the same parameters, and they are the single process's.
    np.testing.assert_array_equal(got["params"][0], got["params"][1])
    np.testing.assert_allclose(got["params"][0], single.model.params.flat, rtol=0, atol=1e-10)
    assert not np.array_equal(got["params"][0], setup(batch_size, STEPS).model.params.flat)  # it trained
    # Loss, global norm (before clipping, which acted) and validation are the whole batch's.
    for (loss, norm, val, allreduce), p in zip(got["reports"][0], reports, strict=True):
        assert loss == pytest.approx(p.train_loss, rel=1e-10)
        assert norm == pytest.approx(p.grad_norm, rel=1e-10)
        assert (val is None) == (p.val_loss is None)
        if val is not None:
            assert val == pytest.approx(p.val_loss, rel=1e-10)
        assert allreduce > 0
    assert max(p.grad_norm for p in reports) > 0.5
    # The captured state holds the whole batch and continues in one process as if never split.
    state = got["state"]
    expected = single.capture()
    for name in ("carry.h", "carry.c", "optim.m", "optim.v"):
        np.testing.assert_allclose(state.tensors[name], expected.tensors[name], rtol=0, atol=1e-10)
    resumed = setup(batch_size, STEPS + 3)
    resumed.restore(state)
    single.total_steps = STEPS + 3
    for a, b in zip(resumed.run(), single.run(), strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-9)


@pytest.mark.mpi
def test_under_a_time_budget_every_rank_follows_rank_0s_clock(mpirun, tmp_path):
    # Rank 1 sleeps before each step, so its own clock runs ahead of rank 0's view of the
    # budget: were each rank to read its own clock, learning rates would differ and the ranks
    # would stop at different steps (a hang in the next Allreduce).
    got = run_ranks(mpirun, tmp_path, 2, 6, "budget", "1.5")
    rank0, rank1 = got["reports"]
    assert len(rank0) > 3
    assert rank0 == rank1  # the same steps, each with the same learning rate
    assert rank0[-1][1] < rank0[0][1]  # the cosine decayed over the budget
    np.testing.assert_array_equal(got["params"][0], got["params"][1])


def test_the_local_communicator_is_the_default_and_a_no_op():
    trainer = setup(4, 2)
    assert isinstance(trainer.comm, LocalCommunicator)
    comm = LocalCommunicator()
    a = np.arange(3.0)
    comm.allreduce_mean([a])
    comm.allreduce_sum([a])
    np.testing.assert_array_equal(a, [0.0, 1.0, 2.0])
    assert comm.bcast("x") == "x" and comm.allgather(7) == [7]
    assert all(p.allreduce_seconds == 0.0 for p in trainer.run())


def test_mpi_is_detected_from_the_launcher_environment(monkeypatch):
    assert not launched_by_mpi({})
    assert not launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "1"})
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert launched_by_mpi({"PMI_SIZE": "4"})
    for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(from_environment(), LocalCommunicator)


def test_without_mpi4py_a_rank_says_what_to_install():
    # A fresh interpreter that believes it is rank 1 of 2 and cannot import mpi4py.
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from charlstm.engine.distributed import from_environment\n"
            "from_environment()")
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "rank 1 of an MPI job, but mpi4py is not installed" in result.stderr
    assert "charlstm[mpi]" in result.stderr


class _FakeRanks(LocalCommunicator):
    """Rank ``rank`` of ``size`` for checks that run before any collective."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size


def test_each_rank_takes_its_slice_of_the_streams_and_needs_one():
    whole = setup(5, 1)
    parts = [setup(5, 1, _FakeRanks(r, 2)) for r in range(2)]
    assert [p._data.shape[1] for p in parts] == [2, 3]
    np.testing.assert_array_equal(np.concatenate([p._data for p in parts], axis=1), whole._data)
    with pytest.raises(ConfigError, match="at least the number of ranks") as info:
        Trainer(whole.model, whole.vocab, TEXT, whole.config, comm=_FakeRanks(0, 6))
    assert info.value.field == "batch_size"
