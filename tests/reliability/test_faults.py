"""Faults not covered elsewhere (issue 9, item 4).

Covered already, not repeated: ``kill -9`` of the server during training and a restart
(tests/service/test_jobs_server_crash.py), ``kill -9`` of a training worker
(tests/service/test_train_rpcs.py::test_a_killed_worker_fails_its_job_and_the_server_keeps_serving),
a checkpoint write that fails inside the job manager (tests/service/test_jobs_manager.py), every
failing call of a store save (tests/store/test_write_failures.py), corrupt files in the store
(tests/store/test_corruption.py) and a corrupt version over a raw Predict
(tests/service/test_errors.py).

Here: a *real* full disk (a 2 MiB tmpfs the test mounts) filling up during training, through
the server; and a corrupted checkpoint seen through the command line, the client library and
every RPC that reads versions.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from helpers import serve_copy
from training_fixtures import CORPUS, tiny_hyperparameters

from charlstm.client import CharLstmClient, DataLossError
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs mounted for this test (skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the filesystem is full; returns it."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def test_a_full_disk_during_a_checkpoint(model_template: Path, small_disk: Path) -> None:
    running = serve_copy(model_template, small_disk, max_jobs=1)
    store = small_disk / "store"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = charlstm_pb2_grpc.CharLstmStub(channel)
            events = []
            ballast = None
            for event in stub.Train(pb.TrainRequest(
                    model="filling", text=CORPUS,
                    hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=40)),
                    timeout=60):
                events.append(event)
                if event.HasField("checkpoint") and ballast is None:
                    assert event.checkpoint.version == 1
                    ballast = fill(small_disk)
            last = events[-1]
            assert last.HasField("failed"), last
            reason = last.failed.reason
            print(f"\nthe job's reason: {reason}")
            assert "checkpoint" in reason and "space" in reason.lower()
            assert last.failed.resumable and last.failed.last_version == 1
            # No partial version: only version 1 exists, and nothing is left staged.
            assert sorted(p.name for p in (store / "models" / "filling" / "versions").iterdir()) \
                == ["00000001"]
            assert list((store / "models" / ".tmp").iterdir()) == []
            # Earlier versions serve, with the disk still full.
            for name, version in (("filling", 1), ("tiny", 1), ("tiny", 2), ("other", 1)):
                reply = stub.Predict(pb.PredictRequest(
                    model=pb.ModelRef(name=name, version=version), inputs=["the"]), timeout=10)
                assert reply.version == version
            job = stub.GetJob(pb.GetJobRequest(job_id=last.job_id), timeout=10)
            assert job.state == pb.JOB_STATE_FAILED and job.error == reason
            # Space again: the job resumes from its last checkpoint.
            ballast.unlink()
            resumed = list(stub.Train(pb.TrainRequest(
                model="filling", resume_from_version=1,
                hyperparameters=pb.Hyperparameters(steps=60)), timeout=60))
            assert resumed[-1].HasField("succeeded") and resumed[-1].succeeded.version == 2
    finally:
        running.stop(1.0)


def corrupt(store_dir: Path, name: str, version: int, file: str = "weights.safetensors") -> Path:
    path = store_dir / "models" / name / "versions" / f"{version:08d}" / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def charlstm(target: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CHARLSTM_SERVER=target)
    env.pop("CHARLSTM_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "charlstm.client.cli", *args], input=input,
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_corrupted_checkpoint_through_the_cli_and_the_client(server, store_dir: Path) -> None:
    corrupt(store_dir, "tiny", 1)
    target = f"127.0.0.1:{server.port}"
    # `stable` points at version 1: the label path fails the same way.
    for selector in (["--version", "1"], ["--label", "stable"]):
        result = charlstm(target, "predict", "tiny", "the", *selector)
        assert result.returncode != 0
        line = result.stderr.strip()
        assert line.startswith("error: DATA_LOSS: ") and "\n" not in line, result.stderr
        assert "tiny" in line and "1" in line and "weights.safetensors" in line
    ok = charlstm(target, "predict", "tiny", "the", "--version", "2")
    assert ok.returncode == 0, ok.stderr
    evaluated = charlstm(target, "eval", "tiny", "-", "--version", "1", input="the quick brown")
    assert evaluated.stderr.startswith("error: DATA_LOSS: "), evaluated.stderr
    # Listing and describing still work: the damage is reported where the version is read.
    assert charlstm(target, "model", "tiny").returncode == 0
    assert charlstm(target, "models").returncode == 0

    with CharLstmClient(target) as client:
        with pytest.raises(DataLossError) as err:
            client.predict("tiny", "the", version=1)
        assert "weights.safetensors" in str(err.value)
        with pytest.raises(DataLossError):
            with client.stream("tiny", version=1) as session:
                session.feed("the")
        assert client.predict("tiny", "the", version=2).version == 2
        with client.stream("tiny", version=2) as session:
            assert session.feed("the")
