"""Three replicas on one store (issue 10, "what it must show" #2).

Replicas A, B and C run as real processes with ``--shared-store`` on one store. The test shows:

- a corpus uploaded to B trains through A, and B and C list and watch that job;
- a version landing on the store serves from B and C within the refresh bound (measured);
- SIGKILL of the replica running a job (normally A, which it was submitted to): the job ends
  reported FAILED (resumable) by a survivor once the lease expires, no replica starts it again
  on its own, the orphaned worker stops, and resuming it on a survivor works;
- a round_robin client calling idempotent RPCs over all three all along sees no error;
- a Stream session opened with ``reopen_streams`` survives the SIGKILL of its replica.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from charlstm.client import CharLstmClient, UnavailableError
from charlstm.client.retry import RetryPolicy
from charlstm.service.store import open_store
from charlstm.v1 import charlstm_pb2 as pb
from replica_processes import (
    CORPUS,
    LEASE_SECONDS,
    REFRESH_SECONDS,
    Replica,
    tiny_hyperparameters,
    wait_for,
)

# What the issue asks for: a new version serves from every replica within 2 s.
PROPAGATION_BOUND = 2.0


@dataclass
class Backend:
    """Where the replicas' store is, and how to reach it."""

    location: str
    env: dict | None = None  # the replicas' environment (object store credentials)
    settings: object = None  # S3Settings for open_store in the test itself

    def open(self):
        return open_store(self.location, self.settings)


# The issue asks for SeaweedFS; the same test on a shared directory runs with the slow tests.
@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.slow), "seaweedfs"])
def backend(request, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend(str(tmp_path / "store"))
    seaweedfs = request.getfixturevalue("seaweedfs")
    return Backend(seaweedfs.location(), seaweedfs.env(), seaweedfs.settings())


def _latest_version(replica: Replica, model: str) -> int:
    try:
        return replica.stub.Predict(pb.PredictRequest(model=pb.ModelRef(name=model), inputs=["t"]),
                                    timeout=5).version
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise


def _train_and_wait(replica: Replica, request: pb.TrainRequest) -> tuple[str, list]:
    events = list(replica.stub.Train(request, timeout=120))
    assert events[-1].WhichOneof("event") == "succeeded", events[-1]
    return events[0].accepted.job.id, events


class _Caller(threading.Thread):
    """Calls idempotent RPCs over every replica (round_robin) in a loop, counting errors."""

    def __init__(self, target: str, model: str, job_id: str):
        super().__init__(daemon=True)
        self.client = CharLstmClient(target, timeout=10,
                                     retry=RetryPolicy(max_attempts=5, initial_backoff=0.05))
        self.model, self.job_id = model, job_id
        self.calls = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        actions = (lambda: self.client.predict(self.model, "the q", length=4, seed=1),
                   lambda: self.client.get_model(self.model),
                   lambda: self.client.get_job(self.job_id),
                   lambda: self.client.list_jobs())
        while not self.stop.is_set():
            for action in actions:
                try:
                    action()
                except Exception as error:  # noqa: BLE001 - every error is a failure
                    self.errors.append(repr(error))
                self.calls += 1
            time.sleep(0.01)
        self.client.close()


def _active_streams(replica: Replica) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics",
                                timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("charlstm_active_streams "):
                return float(line.split()[1])
    raise AssertionError("no charlstm_active_streams metric")


def test_three_replicas_share_models_jobs_and_survive_a_sigkill(backend: Backend) -> None:
    names = ("a", "b", "c")
    replicas: dict[str, Replica] = {}
    try:
        for name in names:
            replicas[name] = Replica(backend.location, name, "--metrics-port", "0",
                                     env=backend.env)
        a, b, c = (replicas[n] for n in names)

        # A corpus uploaded to B trains through A; B and C list the job and watch it end.
        corpus = b.stub.UploadCorpus(iter([pb.CorpusChunk(data=CORPUS.encode())]), timeout=30)
        job_id, events = _train_and_wait(a, pb.TrainRequest(
            model="shared", corpus_id=corpus.id, hyperparameters=tiny_hyperparameters(steps=60)))
        first_version = events[-1].succeeded.version
        for other in (b, c):
            wait_for(lambda: other.stub.GetJob(pb.GetJobRequest(job_id=job_id)).state
                     == pb.JOB_STATE_SUCCEEDED, timeout=10, what="the job's record on B and C")
            watched = list(other.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=10))
            assert watched[-1].WhichOneof("event") == "succeeded"
            assert _latest_version(other, "shared") == first_version  # now cached as latest

        # A new version lands through A: B and C serve it within the bound.
        stream = a.stub.Train(pb.TrainRequest(
            model="shared", corpus_id=corpus.id, resume_from_version=first_version,
            hyperparameters=tiny_hyperparameters(steps=120)), timeout=120)
        landed = None
        for event in stream:
            if event.WhichOneof("event") == "checkpoint" and landed is None:
                landed, new_version = time.monotonic(), event.checkpoint.version
        assert landed is not None and new_version > first_version
        delays = []
        for other in (b, c):
            wait_for(lambda: _latest_version(other, "shared") >= new_version,
                     timeout=PROPAGATION_BOUND + 3, what="the new version on B and C")
            delays.append(time.monotonic() - landed)
        print(f"\nversion {new_version} served by B and C {max(delays):.2f} s after it landed "
              f"(refresh {REFRESH_SECONDS} s)")
        assert max(delays) < PROPAGATION_BOUND

        # A long job through A, then SIGKILL of the replica running it (A, unless A was still
        # reaping its previous worker and another replica claimed the job first) while a
        # round_robin client calls every replica.
        long_job = a.stub.Train(pb.TrainRequest(
            model="longrun", corpus_id=corpus.id,
            hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=40)),
            timeout=120)
        long_id = next(long_job).accepted.job.id
        checkpoint = next(e for e in long_job if e.WhichOneof("event") == "checkpoint")
        owners = [r for r in replicas.values()
                  if long_id in [e["job_id"] for e in r.events("job_claimed")]]
        assert len(owners) == 1, [r.name for r in owners]
        owner = owners[0]
        b, c = (r for r in replicas.values() if r is not owner)  # the survivors
        caller = _Caller(",".join(r.address for r in replicas.values()), "shared", job_id)
        caller.start()
        time.sleep(0.5)
        record = json.loads(backend.open().get_record(f"jobs/{long_id}").data)
        worker_pid = record["worker_pid"]
        killed = time.monotonic()
        owner.kill()

        # Reported by a survivor once the lease has expired: FAILED, resumable, never rerun.
        failed = wait_for(lambda: (j := b.stub.GetJob(pb.GetJobRequest(job_id=long_id)))
                          .state == pb.JOB_STATE_FAILED and j, timeout=LEASE_SECONDS + 10,
                          what="the job reported failed")
        reported_after = time.monotonic() - killed
        assert "stopped renewing its lease" in failed.error and failed.resumable
        assert failed.last_version >= checkpoint.checkpoint.version
        wait_for(lambda: c.stub.GetJob(pb.GetJobRequest(job_id=long_id)).state
                 == pb.JOB_STATE_FAILED, timeout=5, what="C to see the failure")
        for other in (b, c):
            assert long_id not in [e["job_id"] for e in other.events("job_started")]
        wait_for(lambda: not Path(f"/proc/{worker_pid}").exists()
                 or " Z " in Path(f"/proc/{worker_pid}/stat").read_text(),
                 timeout=10, what="the orphaned worker to stop")
        time.sleep(1.0)
        caller.stop.set()
        caller.join(30)
        print(f"job reported failed {reported_after:.1f} s after the SIGKILL "
              f"(lease {LEASE_SECONDS} s); {caller.calls} idempotent calls over the kill, "
              f"{len(caller.errors)} errors")
        assert caller.errors == []
        assert caller.calls > 20

        # Resuming it through a survivor continues from the last checkpoint.
        resumed_id, resumed = _train_and_wait(b, pb.TrainRequest(
            model="longrun", resume_from_version=failed.last_version,
            hyperparameters=tiny_hyperparameters(steps=failed.progress.step + 80,
                                                 checkpoint_every=40)))
        assert resumed[-1].succeeded.version > failed.last_version

        # A Stream session survives the SIGKILL of its replica when asked to.
        with CharLstmClient(f"{b.address},{c.address}", timeout=10,
                            reopen_streams=True) as client:
            session = client.stream("shared", version=new_version)
            session.feed("the quick brown")
            host = wait_for(lambda: next((r for r in (b, c) if _active_streams(r) == 1), None),
                            timeout=5, what="the replica holding the session")
            survivor = c if host is b else b
            plain = CharLstmClient(host.address, timeout=10).stream("shared", version=new_version)
            plain.feed("the")
            host.kill()
            with pytest.raises(UnavailableError):  # reopening is off by default
                plain.feed(" quick")
            after = session.feed(" fox")
            assert session.reopened == 1
            with CharLstmClient(survivor.address, timeout=10) as direct:
                fresh = direct.stream("shared", version=new_version, prefix="the quick brown fox")
                # The same characters; the probabilities to float32 rounding (a batched step
                # rounds a row differently when other rows share it).
                assert [c for c, _ in after] == [c for c, _ in fresh.next]
                assert [p for _, p in after] == pytest.approx([p for _, p in fresh.next],
                                                              rel=1e-5)
                fresh.close()
            assert len("".join(session.generate(10))) == 10
            session.close()
    finally:
        for replica in replicas.values():
            replica.kill()


def _long_job(replica: Replica, model: str, steps: int):
    """Start a job through ``replica``; return its Train call and id after its first checkpoint."""
    call = replica.stub.Train(pb.TrainRequest(
        model=model, text=CORPUS,
        hyperparameters=tiny_hyperparameters(steps=steps, checkpoint_every=40)), timeout=120)
    job_id = next(call).accepted.job.id
    next(e for e in call if e.WhichOneof("event") == "checkpoint")
    return call, job_id


def test_cancel_through_a_replica_that_does_not_run_the_job(tmp_path: Path) -> None:
    """CancelJob on B stops the job where it runs (A), and A's Train stream ends cancelled."""
    location = str(tmp_path / "store")
    a, b = Replica(location, "a"), Replica(location, "b")
    try:
        call, job_id = _long_job(a, "cancelled", 1_000_000)
        wait_for(lambda: b.stub.GetJob(pb.GetJobRequest(job_id=job_id)).state
                 == pb.JOB_STATE_RUNNING, timeout=10, what="B to see the job running")
        cancelled = b.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        assert [e.WhichOneof("event") for e in call][-1] == "cancelled"
        assert job_id not in [e["job_id"] for e in b.events("job_started")]
    finally:
        a.kill()
        b.kill()


@pytest.mark.slow
def test_a_replica_stopped_with_sigterm_hands_its_job_over(tmp_path: Path) -> None:
    """A replica stopped with SIGTERM checkpoints its job and another continues it to the end."""
    location = str(tmp_path / "store")
    a, b = Replica(location, "a"), Replica(location, "b")
    try:
        # A job that outlives A's drain (its worker trains at most ~1000 steps/s).
        call, job_id = _long_job(a, "handed-over", 1_500)
        watch = b.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120)
        a.stop()
        with pytest.raises(grpc.RpcError) as stopped:  # A's own stream ends with A
            list(call)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "on another replica" in stopped.value.details()
        events = [e.WhichOneof("event") for e in watch]
        assert events[-1] == "succeeded", events  # followed on B to the end
        job = b.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        assert job.state == pb.JOB_STATE_SUCCEEDED and job.resumed_from_version > 0
        assert [e["job_id"] for e in b.events("job_claimed")] == [job_id]
        assert [e["job_id"] for e in a.events("job_claimed")].count(job_id) == 1
    finally:
        a.kill()
        b.kill()
