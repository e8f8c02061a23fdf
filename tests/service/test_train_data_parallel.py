"""``charlstm serve --train-ranks 2``: jobs train under a real ``mpirun -np 2`` through the real
client; cancelling and draining end every rank; a missing mpirun is a clear start-up error;
``mpirun -np 2 python -m charlstm.service.mpi_train`` writes versions the server serves.

The mpirun tests need OpenMPI and mpi4py (the ``mpi`` extra) and skip without them, saying so
(see the ``mpirun`` fixture); ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charlstm.client import CharLstmClient
from charlstm.service.config import ServerConfig
from charlstm.service.server import create_server

try:
    from .training_fixtures import CORPUS, wait_for
except ImportError:  # tests/service is not a package
    from training_fixtures import CORPUS, wait_for

TINY = dict(embedding_size=8, hidden_size=16, num_layers=1, seq_len=16, batch_size=4,
            learning_rate=0.01, eval_every=40, checkpoint_every=50)


def rank_processes() -> dict[int, int]:
    """{MPI rank: pid} of the training-worker ranks descended from this (the server's) process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    ranks = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if not ancestor:
            continue
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
            env = dict(v.split(b"=", 1) for v in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"charlstm.service.training_worker" in cmdline and b"OMPI_COMM_WORLD_RANK" in env:
            ranks[int(env[b"OMPI_COMM_WORLD_RANK"])] = pid
    return ranks


def first_progress(events):
    for event in events:
        if event.kind == "progress":
            return event
    raise AssertionError("the job ended before reporting progress")


@pytest.mark.mpi
def test_a_job_trains_on_two_ranks_and_its_model_serves(mpirun, start_server):
    running = start_server(train_ranks=2)
    with CharLstmClient(f"127.0.0.1:{running.port}") as client:
        events = client.train("parallel", CORPUS, steps=150, **TINY)
        first_progress(events)
        assert sorted(rank_processes()) == [0, 1]  # two ranks of one mpirun are training
        rest = list(events)
        assert rest[-1].kind == "succeeded", rest[-1]
        assert [e.checkpoint.step for e in rest if e.kind == "checkpoint"] == [50, 100, 150]
        result = client.predict("parallel", "the quick brown ", length=12, temperature=0)
        assert result.predictions[0].continuation == "fox jumps ov"  # it learnt the corpus
    wait_for(lambda: not rank_processes(), what="the ranks to exit")


@pytest.mark.mpi
def test_cancel_and_drain_end_every_rank_and_the_job_resumes(mpirun, start_server):
    running = start_server(train_ranks=2, grace_period=20.0)
    with CharLstmClient(f"127.0.0.1:{running.port}") as client:
        events = client.train("cancelled", CORPUS, steps=1_000_000, **TINY)
        first_progress(events)
        assert len(rank_processes()) == 2
        assert client.cancel_job(events.job_id).state == "cancelled"
        wait_for(lambda: not rank_processes(), what="every rank to exit after the cancel")

        events = client.train("drained", CORPUS, steps=1_000_000, **TINY)
        job_id = events.job_id
        wait_for(lambda: any(e.kind == "checkpoint" for e in events), what="a checkpoint")
        events.close()
        assert len(rank_processes()) == 2
    running.stop()  # SIGTERM's drain: every rank stops at one step, rank 0 saves
    assert not rank_processes()
    job = running.servicer.jobs.get(job_id)
    assert job.state.value == "interrupted" and job.last_version >= 2

    restarted = start_server(train_ranks=2)
    with CharLstmClient(f"127.0.0.1:{restarted.port}") as client:
        wait_for(lambda: client.get_job(job_id).state == "running" and rank_processes(),
                 what="the job to resume on two ranks")
        assert client.get_job(job_id).resumed_from_version == job.last_version
        assert client.cancel_job(job_id).state == "cancelled"
    wait_for(lambda: not rank_processes(), what="every rank to exit")


def test_train_ranks_without_mpirun_is_a_clear_start_up_error(monkeypatch, store_dir):
    monkeypatch.setenv("PATH", "/nonexistent")
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, store=str(store_dir), train_ranks=2)
    with pytest.raises(RuntimeError, match="mpirun is not on PATH; install OpenMPI"):
        create_server(config)
    with pytest.raises(ValueError, match="train_ranks must be >= 1"):
        ServerConfig(train_ranks=0)


@pytest.mark.mpi
def test_mpi_train_writes_versions_a_server_serves(mpirun, tmp_path, start_server, store_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    hp = json.dumps({**TINY, "steps": 100})
    cmd = mpirun + ["2", sys.executable, "-m", "charlstm.service.mpi_train", "--store", str(store_dir),
                    "--model", "standalone", "--corpus", str(corpus), "--hyperparameters", hp]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training on 2 ranks from step 0" in result.stdout
    assert "saved version 2 at step 100" in result.stdout
    running = start_server()
    with CharLstmClient(f"127.0.0.1:{running.port}") as client:
        model = client.get_model("standalone")
        assert [v.version for v in model.versions] == [1, 2]
        assert client.predict("standalone", "the quick ", length=5, temperature=0).predictions[0].continuation
    # Bad flags: the same check on one process (without mpirun) as on N.
    bad = subprocess.run(cmd[len(mpirun) + 1 : -1] + ['{"hidden_size": 0}'], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "error: hyperparameters.hidden_size must be an integer in [1, 4096] (got 0)" in bad.stderr
