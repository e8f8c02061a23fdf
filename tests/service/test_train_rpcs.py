"""The training RPCs against a real server on a free loopback port, through generated stubs.

Covers issue 4's items 1 (train from inline text, then serve), 2 (upload > 8 MiB in chunks,
train by id), 5 (disconnect, WatchJob, CancelJob) and 6 (graceful shutdown, resume after a
restart), plus a worker killed with SIGKILL, bad requests and the max-jobs queue.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from charlstm.engine import CharLSTM, Trainer, Vocab
from charlstm.service import hyperparameters
from charlstm.service.server import RunningServer
from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

try:
    from .training_fixtures import CORPUS, tiny_hyperparameters, wait_for
except ImportError:  # tests/service is not a package
    from training_fixtures import CORPUS, tiny_hyperparameters, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Connected:
    """A running server (from conftest's ``start_server``) and a raw stub to it."""

    running: RunningServer
    channel: grpc.Channel
    stub: charlstm_pb2_grpc.CharLstmStub

    @property
    def jobs(self):
        return self.running.servicer.jobs


@pytest.fixture
def connect(start_server) -> Iterator[Callable[..., Connected]]:
    """Start a server over the test's store (again, for a restart) and connect to it."""
    channels: list[grpc.Channel] = []

    def connect(**overrides) -> Connected:
        running = start_server(**{"grace_period": 10.0, **overrides})
        channels.append(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        return Connected(running, channels[-1], charlstm_pb2_grpc.CharLstmStub(channels[-1]))

    yield connect
    for channel in channels:
        channel.close()


@pytest.fixture
def server(connect) -> Connected:
    return connect()


def kinds(events: list[pb.TrainEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, list[str]]:
    """The status code and the BadRequest field violations of a failed call."""
    fields: list[str] = []
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return error.code(), fields


def until_progress(events: Iterator[pb.TrainEvent], min_step: int = 1) -> list[pb.TrainEvent]:
    """Read events until a progress event at ``min_step`` or later."""
    seen = []
    for event in events:
        seen.append(event)
        if event.HasField("progress") and event.progress.step >= min_step:
            return seen
        assert not event.WhichOneof("event") in TERMINAL, seen
    raise AssertionError(f"the stream ended early: {kinds(seen)}")


# -- 1: train from inline text, then serve ---------------------------------------------------


def test_train_from_inline_text_streams_ordered_events_then_the_model_serves(server: Connected) -> None:
    request = pb.TrainRequest(model="fox", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=150))
    events = list(server.stub.Train(request, timeout=60))

    names = kinds(events)
    assert names[0] == "accepted" and names[-1] == "succeeded"
    assert sum(n in TERMINAL for n in names) == 1
    job = events[0].accepted.job
    assert job.id.startswith("job-") and job.model == "fox"
    assert job.hyperparameters.hidden_size == 16 and job.hyperparameters.optimizer == pb.OPTIMIZER_ADAMW
    assert job.corpus_id == hashlib.sha256(CORPUS.encode()).hexdigest()
    assert all(e.job_id == job.id and e.time.seconds > 0 for e in events)
    times = [e.time.ToNanoseconds() for e in events]
    assert times == sorted(times)

    progress = [e.progress for e in events if e.HasField("progress")]
    steps = [p.step for p in progress]
    assert steps == sorted(steps) and steps[-1] == 150 and progress[-1].total_steps == 150
    evaluated = [p for p in progress if p.HasField("val_loss")]
    assert {40, 80, 120, 150} <= {p.step for p in progress}  # validation steps are never dropped
    assert evaluated[-1].val_loss < progress[0].train_loss - 0.5  # the loss falls
    checkpoints = [e.checkpoint for e in events if e.HasField("checkpoint")]
    assert [(c.version, c.step) for c in checkpoints] == [(1, 50), (2, 100), (3, 150)]
    done = events[-1].succeeded
    assert done.version == 3 and done.best_version in (1, 2, 3)
    assert done.best_val_loss == min(c.val_loss for c in checkpoints)

    final = server.stub.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.JOB_STATE_SUCCEEDED and final.last_version == 3
    assert final.progress.step == 150 and final.finished.seconds >= final.started.seconds > 0
    metrics = server.running.metrics
    assert metrics.value("charlstm_training_steps_total") == 150
    assert metrics.value("charlstm_jobs", {"state": "succeeded"}) == 1
    assert metrics.value("charlstm_jobs", {"state": "running"}) == 0

    # The new versions serve at once: Predict ...
    answer = server.stub.Predict(pb.PredictRequest(
        model=pb.ModelRef(name="fox"), inputs=["the quick brown ", "lazy "], length=12,
        sampling=pb.SamplingOptions(temperature=0, seed=1)))
    assert answer.version == 3 and len(answer.predictions) == 2
    assert len(answer.predictions[0].continuation) == 12
    assert len(answer.predictions[0].continuation_probabilities) == 12

    # ... and Stream.
    requests: queue.Queue = queue.Queue()
    requests.put(pb.StreamRequest(open=pb.StreamOpen(model=pb.ModelRef(name="fox", version=2),
                                                     prefix="the ")))
    requests.put(pb.StreamRequest(generate=pb.StreamGenerate(length=5)))
    replies = server.stub.Stream(iter(requests.get, None), timeout=30)
    opened = next(replies)
    assert opened.opened.version == 2
    chars = ""
    for reply in replies:
        if reply.HasField("chars"):
            chars += reply.chars.text
        if reply.HasField("end"):
            break
    requests.put(None)
    assert len(chars) == 5


# -- 2: a corpus over 8 MiB, uploaded in chunks ----------------------------------------------


def test_upload_a_corpus_over_8_mib_in_chunks_and_train_on_it_by_id(server: Connected) -> None:
    line = "Sœur, the quick brown fox — jumps over the lazy dog 🦊.\n"
    data = (line * (8 * 1024 * 1024 // len(line.encode()) + 2000)).encode()
    assert len(data) > 8 * 1024 * 1024
    step = 1_000_003  # chunk edges fall inside multi-byte characters
    chunks = (pb.CorpusChunk(data=data[i : i + step]) for i in range(0, len(data), step))
    corpus = server.stub.UploadCorpus(chunks, timeout=60)
    assert corpus.id == hashlib.sha256(data).hexdigest()
    assert corpus.size_bytes == len(data) and not corpus.already_existed
    assert corpus.characters == len(data.decode()) and corpus.distinct_characters == len(set(line))

    request = pb.TrainRequest(model="big", corpus_id=corpus.id, hyperparameters=tiny_hyperparameters(
        steps=10, val_fraction=0.0, checkpoint_every=0))
    events = list(server.stub.Train(request, timeout=60))
    assert kinds(events)[0] == "accepted" and kinds(events)[-1] == "succeeded"
    assert events[0].accepted.job.corpus_id == corpus.id
    model = server.stub.GetModel(pb.GetModelRequest(name="big"))
    assert model.latest_version == 1 and set(model.vocabulary) == set(line)


def test_uploading_the_same_text_again_is_deduplicated(server: Connected) -> None:
    first = server.stub.UploadCorpus(iter([pb.CorpusChunk(data=b"abc"), pb.CorpusChunk(data=b"def")]))
    again = server.stub.UploadCorpus(iter([pb.CorpusChunk(data=b"abcdef")]))
    assert again.id == first.id and again.already_existed and not first.already_existed


# -- 5: disconnect, WatchJob, CancelJob; and the queue -----------------------------------------


def test_a_job_outlives_its_train_call_and_watchjob_reattaches(server: Connected) -> None:
    call = server.stub.Train(pb.TrainRequest(
        model="detached", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=300)))
    seen = until_progress(call)
    job_id = seen[0].accepted.job.id
    call.cancel()  # the client goes away mid-training
    wait_for(lambda: server.jobs.subscriber_count() == 0, what="the Train subscription to close")

    events = list(server.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=60))
    names = kinds(events)
    assert names[0] == "accepted" and names[-1] == "succeeded" and names.count("succeeded") == 1
    assert events[0].accepted.job.id == job_id
    assert events[-1].succeeded.version == max(e.checkpoint.version for e in events if e.HasField("checkpoint"))
    assert server.stub.GetJob(pb.GetJobRequest(job_id=job_id)).state == pb.JOB_STATE_SUCCEEDED

    # A job that has ended replays its whole story and stops.
    replay = kinds(list(server.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=10)))
    assert replay[0] == "accepted" and replay[-1] == "succeeded"
    assert replay.count("checkpoint") == 6 and replay.count("progress") == 1
    assert server.jobs.subscriber_count() == 0


def test_cancel_job_stops_a_running_job_and_queued_jobs_wait_for_a_slot(server: Connected) -> None:
    long = server.stub.Train(pb.TrainRequest(
        model="long", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=30)))
    seen = until_progress(long, min_step=40)
    long_id = seen[0].accepted.job.id
    queued = server.stub.Train(pb.TrainRequest(
        model="next", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=20)))
    accepted = next(queued)
    assert accepted.accepted.job.state == pb.JOB_STATE_QUEUED  # max_jobs is 1
    listed = server.stub.ListJobs(pb.ListJobsRequest()).jobs
    assert [j.id for j in listed] == [accepted.accepted.job.id, long_id]  # newest first
    assert [j.id for j in server.stub.ListJobs(pb.ListJobsRequest(model="long")).jobs] == [long_id]

    cancelled = server.stub.CancelJob(pb.CancelJobRequest(job_id=long_id))
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.last_version >= 1
    rest = list(long)
    assert kinds(rest)[-1] == "cancelled" and rest[-1].cancelled.last_version == cancelled.last_version
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.CancelJob(pb.CancelJobRequest(job_id=long_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    after = list(queued)  # the queued job gets the slot and runs to the end
    assert kinds(after)[-1] == "succeeded"


# -- 6: graceful shutdown and resume on the next start -----------------------------------------

RESUMED_HYPERPARAMETERS = tiny_hyperparameters(steps=600, checkpoint_every=0, dropout=0.1)


def test_a_job_interrupted_by_shutdown_resumes_after_a_restart(connect) -> None:
    first = connect()
    call = first.stub.Train(pb.TrainRequest(
        model="resumed", text=CORPUS, hyperparameters=RESUMED_HYPERPARAMETERS))
    seen = until_progress(call, min_step=10)
    job_id = seen[0].accepted.job.id
    first.running.stop()  # what SIGTERM does: drain, checkpoint running jobs
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "resumes" in caught.value.details()

    second = connect()  # the same store: a restart
    job = second.stub.GetJob(pb.GetJobRequest(job_id=job_id))
    interrupted_at = job.resumed_from_version
    assert interrupted_at == 1 and job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING,
                                                 pb.JOB_STATE_SUCCEEDED)
    saved = second.stub.GetModel(pb.GetModelRequest(name="resumed")).versions[0]
    assert saved.resumable and 10 <= saved.step < 600 and saved.job_id == job_id
    # The interrupted version serves straight away.
    second.stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="resumed", version=1), inputs=["th"]))

    events = list(second.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=60))
    assert kinds(events)[-1] == "succeeded" and events[-1].succeeded.version == 2
    steps = [e.progress.step for e in events if e.HasField("progress")]
    assert steps[-1] == 600 and min(steps) >= saved.step  # it went on, not back to 0
    final = second.stub.GetModel(pb.GetModelRequest(name="resumed"))
    assert [v.step for v in final.versions] == [saved.step, 600]
    resumed_weights = second.running.servicer.store.load("resumed", 2).tensors
    # The resumed run ends exactly where an uninterrupted one does.
    resolved = hyperparameters.resolve(RESUMED_HYPERPARAMETERS)
    vocab = Vocab.from_text(CORPUS)
    model = CharLSTM(resolved.model_config(vocab.size), seed=resolved.train.seed)
    for _ in Trainer(model, vocab, CORPUS, resolved.train).run():
        pass
    for name, expected in model.state_dict().items():
        np.testing.assert_allclose(resumed_weights[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)


# -- faults ------------------------------------------------------------------------------------


def test_a_killed_worker_fails_its_job_and_the_server_keeps_serving(server: Connected) -> None:
    call = server.stub.Train(pb.TrainRequest(
        model="doomed", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=1_000_000, checkpoint_every=25)))
    seen = []
    for event in call:
        seen.append(event)
        if event.HasField("checkpoint"):
            break
    job_id = seen[0].accepted.job.id
    pid = wait_for(lambda: server.jobs.get(job_id).worker_pid, what="the worker's pid")
    os.kill(pid, signal.SIGKILL)

    rest = list(call)
    assert kinds(rest)[-1] == "failed"
    failed = rest[-1].failed
    assert "SIGKILL" in failed.reason and failed.resumable and failed.last_version >= 1
    job = server.stub.GetJob(pb.GetJobRequest(job_id=job_id))
    assert job.state == pb.JOB_STATE_FAILED and job.error == failed.reason and job.resumable
    answer = server.stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="doomed"), inputs=["the"]))
    assert answer.version == failed.last_version


# -- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_fields, code, field",
    [
        ({"hyperparameters": tiny_hyperparameters(hidden_size=0)}, grpc.StatusCode.INVALID_ARGUMENT,
         "hyperparameters.hidden_size"),
        ({"hyperparameters": tiny_hyperparameters(learning_rate=float("nan"))},
         grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.learning_rate"),
        ({"hyperparameters": tiny_hyperparameters(checkpoint_every=-2)}, grpc.StatusCode.INVALID_ARGUMENT,
         "hyperparameters.checkpoint_every"),
        ({"model": "../escape"}, grpc.StatusCode.INVALID_ARGUMENT, "model"),
        ({"text": None}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "too short"}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": None, "corpus_id": "not-an-id"}, grpc.StatusCode.INVALID_ARGUMENT, "corpus_id"),
        ({"text": None, "corpus_id": "0" * 64}, grpc.StatusCode.NOT_FOUND, "corpus_id"),
        ({"resume_from_version": -1}, grpc.StatusCode.INVALID_ARGUMENT, "resume_from_version"),
        ({"resume_from_version": 3}, grpc.StatusCode.NOT_FOUND, "resume_from_version"),
    ],
)
def test_bad_train_requests_fail_before_a_job_starts(server: Connected, request_fields: dict, code, field: str) -> None:
    fields = {"model": "bad", "text": CORPUS, "hyperparameters": tiny_hyperparameters()}
    fields.update(request_fields)
    request = pb.TrainRequest(**{k: v for k, v in fields.items() if v is not None})
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Train(request, timeout=10))
    assert status_of(caught.value) == (code, [field])
    if code == grpc.StatusCode.INVALID_ARGUMENT:  # the message names the field too
        assert field.split(".")[-1] in caught.value.details()
    assert server.stub.ListJobs(pb.ListJobsRequest()).jobs == []


def test_bad_uploads_and_unknown_jobs(connect) -> None:
    server = connect(max_corpus_bytes=1000)
    stub = server.stub
    for chunks, code, field in [
        ([b"caf\xc3", b"\xa9 ok", b"\xff"], grpc.StatusCode.INVALID_ARGUMENT, ["data"]),
        ([], grpc.StatusCode.INVALID_ARGUMENT, ["data"]),
        ([b"x" * 600, b"y" * 600], grpc.StatusCode.RESOURCE_EXHAUSTED, []),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.UploadCorpus(iter([pb.CorpusChunk(data=c) for c in chunks]))
        assert status_of(caught.value) == (code, field)
    unknown = "job-000000000000"
    for call, request in ((stub.GetJob, pb.GetJobRequest(job_id=unknown)),
                          (stub.CancelJob, pb.CancelJobRequest(job_id=unknown))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert status_of(caught.value) == (grpc.StatusCode.NOT_FOUND, ["job_id"])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.WatchJob(pb.WatchJobRequest(job_id="")))
    assert status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["job_id"])


def test_resuming_a_version_without_training_state_is_refused(server: Connected) -> None:
    events = list(server.stub.Train(pb.TrainRequest(
        model="plain", text=CORPUS, hyperparameters=tiny_hyperparameters(steps=10)), timeout=60))
    assert kinds(events)[-1] == "succeeded"
    store = server.running.servicer.store
    checkpoint = store.load("plain", 1)
    weights_only = store.save("plain", checkpoint.tensors, checkpoint.metadata)  # no training state
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Train(pb.TrainRequest(model="plain", resume_from_version=weights_only)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Train(pb.TrainRequest(model="plain", resume_from_version=1,
                                               hyperparameters=pb.Hyperparameters(hidden_size=32))))
    assert status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["hyperparameters.hidden_size"])
