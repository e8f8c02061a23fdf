"""JobManager without gRPC: queueing, crash recovery, store failures, subscriptions.

The behaviour clients see through the RPCs is tested in test_train_rpcs.py; here are the cases
that need a hand on the store or the records (a crash left behind, a full disk).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from charlstm.service import errors
from charlstm.service.jobs import JobState

try:
    from .training_fixtures import ManagerHarness, wait_for
except ImportError:  # tests/service is not a package
    from training_fixtures import ManagerHarness, wait_for


@pytest.fixture
def harness(tmp_path: Path):
    h = ManagerHarness(tmp_path / "store")
    yield h
    h.close()


def test_jobs_beyond_max_jobs_wait_queued_and_run_in_order(harness: ManagerHarness) -> None:
    manager = harness.manager()
    first = harness.submit(manager, model="first", steps=100_000, checkpoint_every=0)
    second = harness.submit(manager, model="second", steps=30)
    wait_for(lambda: manager.get(first.id).progress, what="the first job to make progress")
    assert manager.get(second.id).state == JobState.QUEUED
    assert manager.running_count() == 1
    manager.cancel(first.id)
    done = wait_for(lambda: (j := manager.get(second.id)).state.ended and j, what="the second job")
    assert done.state == JobState.SUCCEEDED and done.started >= manager.get(first.id).finished


def test_a_job_left_running_by_a_crashed_server_is_reported_resumable(harness: ManagerHarness) -> None:
    manager = harness.manager()
    job = harness.submit(manager, steps=100_000, checkpoint_every=30)
    wait_for(lambda: manager.get(job.id).last_version >= 1, what="a checkpoint")
    manager.shutdown(5.0)
    # What a kill -9 of the server leaves: the record still says RUNNING.
    record_path = harness.root / "jobs" / f"{job.id}.json"
    record = json.loads(record_path.read_text())
    version = record["last_version"]
    record["state"] = "running"
    record_path.write_text(json.dumps(record))

    restarted = harness.manager()
    failed = restarted.get(job.id)
    assert failed.state == JobState.FAILED and failed.resumable
    assert failed.error == f"server stopped unexpectedly; resume from version {version}"
    events = list(restarted.watch(job.id))
    assert events[0].kind == "accepted" and events[-1].kind == "failed"
    assert events[-1].data == {"reason": failed.error, "resumable": True, "last_version": version}
    assert harness.store.list_versions("tiny")[-1].resumable


def test_a_failing_checkpoint_write_fails_the_job_and_leaves_no_partial_version(
        harness: ManagerHarness) -> None:
    manager = harness.manager()
    job = harness.submit(manager, steps=100_000, checkpoint_every=300)
    wait_for(lambda: manager.get(job.id).last_version == 1, what="the first checkpoint")
    # Make every further write fail the way a full disk does: the store's scratch folder,
    # where each version is staged, can no longer take files.
    scratch = harness.root / "models" / ".tmp"
    shutil.rmtree(scratch)
    scratch.write_text("not a folder")
    try:
        failed = wait_for(lambda: (j := manager.get(job.id)).state.ended and j, what="the failure")
    finally:
        scratch.unlink()
        scratch.mkdir()
    assert failed.state == JobState.FAILED
    assert "checkpoint" in failed.error and failed.error.endswith("resume from version 1")
    assert [v.version for v in harness.store.list_versions("tiny")] == [1]
    assert harness.store.load("tiny", 1).version == 1  # the earlier version still loads


def test_watchers_that_go_away_leave_nothing_behind(harness: ManagerHarness) -> None:
    manager = harness.manager()
    job = harness.submit(manager, steps=100_000)
    subscriptions = [manager.subscribe(job.id) for _ in range(5)]
    assert manager.subscriber_count() == 5
    first_events = [next(iter(s)).kind for s in subscriptions]
    assert first_events == ["accepted"] * 5
    for s in subscriptions:
        s.close()
    assert manager.subscriber_count() == 0
    manager.cancel(job.id)
    with pytest.raises(errors.FailedPrecondition):
        manager.cancel(job.id)


def test_a_second_server_on_the_same_store_does_not_run_jobs(harness: ManagerHarness) -> None:
    manager = harness.manager()
    job = harness.submit(manager, steps=20)
    wait_for(lambda: manager.get(job.id).state.ended, what="the job")
    other = harness.manager()  # the first still holds the store's job lock
    assert other.get(job.id).state == JobState.SUCCEEDED  # records are readable
    with pytest.raises(errors.Unavailable, match="another server"):
        harness.submit(other)
