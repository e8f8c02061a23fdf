"""A replica whose job lease is taken over (it was presumed dead: a long pause, a partition)
stops its worker and writes nothing more about the job, so the job never runs twice at once and
the new owner's account of it stands."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from charlstm.service.config import ServerConfig
from charlstm.service.server import create_server
from charlstm.service.store import LocalStore
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc
from replica_processes import CORPUS, tiny_hyperparameters, wait_for


def test_a_replica_that_loses_its_lease_stops_the_job_and_keeps_quiet(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    running = create_server(ServerConfig(
        host="127.0.0.1", port=0, metrics_port=-1, store=str(store_dir), shared_store=True,
        refresh_seconds=0.2, lease_seconds=1.5, replica_id="victim", grace_period=1.0))
    channel = grpc.insecure_channel(running.address)
    stub = charlstm_pb2_grpc.CharLstmStub(channel)
    try:
        call = stub.Train(pb.TrainRequest(
            model="stolen", text=CORPUS,
            hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=40)),
            timeout=60)
        job_id = next(call).accepted.job.id
        next(e for e in call if e.WhichOneof("event") == "checkpoint")
        store = LocalStore(store_dir)
        lease = json.loads(store.get_record(f"leases/{job_id}").data)
        assert lease["owner"] == "victim"

        # Another replica takes the lease over and reports the job failed, as after an expiry.
        store.put_record(f"leases/{job_id}", json.dumps({"owner": "thief", "job": job_id,
                                                          "renewals": 0}).encode())
        record = json.loads(store.get_record(f"jobs/{job_id}").data)
        worker_pid = record["worker_pid"]
        record.update(state="failed", error="taken over by thief", replica="thief")
        store.put_record(f"jobs/{job_id}", json.dumps(record).encode())

        wait_for(lambda: job_id not in running.servicer.jobs._runs, timeout=15,
                 what="the victim to stop its worker")
        assert not Path(f"/proc/{worker_pid}").exists() or \
            " Z " in Path(f"/proc/{worker_pid}/stat").read_text()
        # The victim wrote nothing over the new owner's record, and now reports it as well.
        final = json.loads(store.get_record(f"jobs/{job_id}").data)
        assert (final["state"], final["error"], final["replica"]) == \
            ("failed", "taken over by thief", "thief")
        job = wait_for(lambda: (j := stub.GetJob(pb.GetJobRequest(job_id=job_id))).state
                       == pb.JOB_STATE_FAILED and j, timeout=5, what="the victim's view")
        assert job.error == "taken over by thief"
        assert json.loads(store.get_record(f"leases/{job_id}").data)["owner"] == "thief"
    finally:
        channel.close()
        running.stop(1.0)
