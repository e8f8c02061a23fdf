"""Error conversion, retries with backoff, and deadlines of the client library, against a
scripted fake server (no engine needed)."""

from __future__ import annotations

import io
import os
import random
import time

import grpc
import pytest

from charlstm.client import (
    CharLstmClient,
    CharLstmError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)
from charlstm.client.errors import error_for_code
from client_fakes import FakeServer, elapsed

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def client_for(fake: FakeServer, **kwargs) -> CharLstmClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("timeout", 5.0)
    return CharLstmClient(fake.target, **kwargs)


# --- error conversion ----------------------------------------------------------------------


def test_bad_request_details_become_field_violations(fake: FakeServer) -> None:
    with client_for(fake) as client, pytest.raises(InvalidArgumentError) as caught:
        client.get_model("bad name!")
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "bad name!" in error.message
    assert [field for field, _ in error.field_violations] == ["name"]
    assert str(error).startswith("INVALID_ARGUMENT: ")
    assert fake.servicer.calls["GetModel"] == 1  # INVALID_ARGUMENT is never retried


def test_each_common_code_has_its_exception_class() -> None:
    for code in grpc.StatusCode:
        error = error_for_code(code, "why")
        assert isinstance(error, CharLstmError)
        assert error.code is code and error.message == "why"
    assert isinstance(error_for_code(grpc.StatusCode.NOT_FOUND, "x"), NotFoundError)
    assert isinstance(error_for_code(grpc.StatusCode.UNAVAILABLE, "x"), UnavailableError)
    # Rare codes fall back to the base class, still keeping the code.
    assert type(error_for_code(grpc.StatusCode.OUT_OF_RANGE, "x")) is CharLstmError


def test_unreachable_server_is_unavailable_not_a_grpc_error() -> None:
    with (
        CharLstmClient("127.0.0.1:1", retry=FAST, timeout=5) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.list_models()
    assert not isinstance(caught.value, grpc.RpcError)


# --- retries -------------------------------------------------------------------------------


def test_unavailable_twice_then_ok_is_retried(fake: FakeServer) -> None:
    fake.servicer.unavailable["Predict"] = 2
    with client_for(fake) as client:
        result = client.predict("m", ["ab", "c"], length=2)
    assert fake.servicer.calls["Predict"] == 3
    assert [p.input for p in result.predictions] == ["ab", "c"]
    assert result.predictions[0].next == [("a", 0.75)]
    assert result.predictions[0].continuation_probabilities == [0.5, 0.25]


def test_retries_stop_after_max_attempts(fake: FakeServer) -> None:
    fake.servicer.unavailable["ListModels"] = 100
    with client_for(fake) as client, pytest.raises(UnavailableError, match="warming up"):
        client.list_models()
    assert fake.servicer.calls["ListModels"] == FAST.max_attempts


def test_train_is_never_retried(fake: FakeServer) -> None:
    fake.servicer.unavailable["Train"] = 1
    with client_for(fake) as client, pytest.raises(UnavailableError):
        client.train("m", text="hello world", steps=3)
    assert fake.servicer.calls["Train"] == 1


def test_delete_is_never_retried(fake: FakeServer) -> None:
    fake.servicer.unavailable["DeleteModel"] = 1
    with client_for(fake) as client, pytest.raises(UnavailableError):
        client.delete_model("m")
    assert fake.servicer.calls["DeleteModel"] == 1


def test_upload_from_a_path_is_replayed_after_unavailable(fake: FakeServer, tmp_path) -> None:
    fake.servicer.unavailable["UploadCorpus"] = 1
    path = tmp_path / "corpus.txt"
    text = "héllo wörld\n" * 5000  # several small chunks below
    path.write_text(text, encoding="utf-8")
    with client_for(fake) as client:
        corpus = client.upload_corpus(path)
    assert fake.servicer.calls["UploadCorpus"] == 2
    assert fake.servicer.uploaded[-1] == text.encode("utf-8")  # the whole file, again
    assert corpus.characters == len(text)


def test_upload_from_a_pipe_is_not_replayed(fake: FakeServer) -> None:
    fake.servicer.unavailable["UploadCorpus"] = 1
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"one shot only")
    os.close(write_fd)
    with open(read_fd, "rb") as pipe, client_for(fake) as client, pytest.raises(UnavailableError):
        client.upload_corpus(pipe)
    assert fake.servicer.calls["UploadCorpus"] == 1


def test_upload_from_a_text_file_object(fake: FakeServer) -> None:
    with client_for(fake) as client:
        corpus = client.upload_corpus(io.StringIO("ünïcode"))
    assert fake.servicer.uploaded == ["ünïcode".encode()]
    assert corpus.size_bytes == len("ünïcode".encode())


def test_all_attempts_share_one_deadline(fake: FakeServer) -> None:
    fake.servicer.unavailable["ListModels"] = 10_000
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1)
    start = time.monotonic()
    with client_for(fake, retry=patient, timeout=0.6) as client, pytest.raises(UnavailableError):
        client.list_models()
    assert elapsed(start) < 2.0
    assert 2 < fake.servicer.calls["ListModels"] < 1000


def test_backoff_grows_exponentially_within_its_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0, jitter=0.2)
    rng = random.Random(0)
    for retry, base in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [policy.backoff(retry, rng) for _ in range(50)]
        assert all(base * 0.8 - 1e-12 <= d <= base * 1.2 + 1e-12 for d in delays)
        assert max(delays) - min(delays) > 0  # jittered, not lock-step
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# --- metadata and deadlines on streams -----------------------------------------------------


def test_token_is_sent_as_bearer_metadata(fake: FakeServer) -> None:
    with client_for(fake, token="s3cret") as client:
        client.list_models()
    assert ("authorization", "Bearer s3cret") in fake.servicer.metadata


def test_train_waits_for_its_first_event_only_until_the_timeout(fake: FakeServer) -> None:
    start = time.monotonic()
    with client_for(fake, timeout=0.5) as client, pytest.raises(DeadlineExceededError):
        client.train("silent", text="abc")
    assert 0.4 < elapsed(start) < 3.0


def test_stream_session_bounds_each_wait_for_a_reply(fake: FakeServer) -> None:
    with client_for(fake, timeout=0.5) as client:
        session = client.stream("m")
        assert session.info.session_id == "s1"
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            session.feed("no answer")
        assert 0.4 < elapsed(start) < 3.0
        with pytest.raises(CharLstmError):  # the session is unusable after the failure
            session.feed("again")
        session.close()


def test_argument_mistakes_fail_before_any_call(fake: FakeServer) -> None:
    with client_for(fake) as client:
        with pytest.raises(ValueError, match="version or a label"):
            client.predict("m", "x", version=1, label="stable")
        with pytest.raises(TypeError, match="hidden"):
            client.train("m", text="x", hidden=3)
        with pytest.raises(ValueError, match="steps or epochs"):
            client.train("m", text="x", steps=3, epochs=1.0)
        with pytest.raises(ValueError, match="optimizer"):
            client.train("m", text="x", optimizer="rmsprop")
    assert sum(fake.servicer.calls.values()) == 0


def test_round_robin_over_replicas_survives_one_going_away() -> None:
    replicas = [FakeServer(), FakeServer()]
    try:
        target = "ipv4:" + ",".join(r.target for r in replicas)
        options = [("grpc.lb_policy_name", "round_robin")]
        with CharLstmClient(target, options=options, retry=FAST, timeout=5) as client:
            for _ in range(10):
                client.list_models()
            assert all(r.servicer.calls["ListModels"] > 0 for r in replicas)  # spread over both
            replicas[0].stop()
            served_before = replicas[1].servicer.calls["ListModels"]
            for _ in range(10):
                client.list_models()  # idempotent: an UNAVAILABLE attempt is retried elsewhere
            assert replicas[1].servicer.calls["ListModels"] == served_before + 10
    finally:
        for replica in replicas:
            replica.stop()
