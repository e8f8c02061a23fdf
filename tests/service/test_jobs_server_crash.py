"""``kill -9`` of the server during training, then a restart on the same store.

The server runs as a real process (``python -m charlstm.service.server``) so that it can be
killed. Expected: its orphaned worker stops by itself (no job trains twice), the store stays
consistent, and the restarted server reports the job FAILED with the reason and the version
to resume from -- and resuming from it works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

try:
    from .training_fixtures import CORPUS, tiny_hyperparameters, wait_for
except ImportError:  # tests/service is not a package
    from training_fixtures import CORPUS, tiny_hyperparameters, wait_for


class ServerProcess:
    """``charlstm serve`` in a child process on a free port."""

    def __init__(self, store: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charlstm.service.server", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "off", "--store", str(store), "--log-format", "json"],
            stderr=subprocess.PIPE, text=True,
        )
        self.port = self._read_port()
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = charlstm_pb2_grpc.CharLstmStub(self.channel)

    def _read_port(self) -> int:
        for line in self.process.stderr:
            if '"server_started"' in line:
                return int(json.loads(line)["port"])
        raise AssertionError(f"the server did not start (exit code {self.process.wait()})")

    def kill(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return re.search(r"\) (\S)", stat).group(1) not in "ZX"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_kill_9_of_the_server_during_training_then_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = ServerProcess(store)
    worker_pid = None
    try:
        call = server.stub.Train(pb.TrainRequest(
            model="crashed", text=CORPUS,
            hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=40)), timeout=60)
        job_id = None
        for event in call:
            job_id = job_id or event.job_id
            if event.HasField("checkpoint") and event.checkpoint.version == 2:
                break
        record = store / "jobs" / f"{job_id}.json"
        worker_pid = wait_for(lambda: json.loads(record.read_text()).get("worker_pid"), what="worker pid")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        # The orphan notices between two steps that its server has gone, and stops writing.
        wait_for(lambda: not alive(worker_pid), timeout=10, what="the orphaned worker to exit")
    finally:
        server.kill()
        if worker_pid and alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)

    versions = LocalStore(store).list_versions("crashed")
    last = versions[-1].version
    assert last >= 2 and all(v.resumable for v in versions)
    settled = len(versions)
    time.sleep(0.2)
    assert len(LocalStore(store).list_versions("crashed")) == settled  # nobody writes any more

    restarted = ServerProcess(store)
    try:
        job = restarted.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        assert job.state == pb.JOB_STATE_FAILED and job.last_version == last
        assert job.error == f"server stopped unexpectedly; resume from version {last}"
        events = list(restarted.stub.Train(pb.TrainRequest(
            model="crashed", resume_from_version=last,
            hyperparameters=pb.Hyperparameters(steps=last * 40 + 20)), timeout=60))
        assert events[0].accepted.job.resumed_from_version == last
        assert events[-1].HasField("succeeded") and events[-1].succeeded.version == last + 1
        progress = [e.progress.step for e in events if e.HasField("progress")]
        assert min(progress) > last * 40 and progress[-1] == last * 40 + 20
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.process.wait(timeout=30) == 0
        restarted.kill()
