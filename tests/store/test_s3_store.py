"""What is particular to the S3 backend: its commit protocol under SIGKILL and racing writers,
the refusal of stores without conditional writes, and how it is configured.

The backend-neutral behaviour (round trip, corruption, labels, names, records, concurrent
writers) is tested on both backends by the other files of this folder.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys

import numpy as np
import pytest

from charlstm.service.config import ServerConfig, add_serve_arguments
from charlstm.service.store import (
    LabelNotFound,
    S3Settings,
    S3Store,
    StoreError,
    TrainingState,
    open_store,
)
from charlstm.service.store.s3_settings import parse_location

from .backends import S3Backend
from .conftest import assert_same_tensors
from .sample_data import random_tensors, random_training_tensors, sample_metadata
from .test_crash_safety import MODEL, count_calls, pause_and_kill


@pytest.fixture
def s3(seaweedfs) -> S3Backend:
    return S3Backend(seaweedfs, seaweedfs.location())


def latest_pointer(backend: S3Backend) -> int:
    return json.loads(backend.read(f"models/{MODEL}/latest.json"))["version"]


@pytest.mark.parametrize("exhaustive", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sigkill_before_requests_of_a_save(s3: S3Backend, exhaustive: bool) -> None:
    s3.open().save(MODEL, random_tensors(0), sample_metadata())
    calls = count_calls(s3.location, seed=1, env=s3.env)  # saves version 2
    # list, weights (the claim), 2 more data objects, manifest, pointer read and swap
    assert calls == 7
    versions = [1, 2]
    killed_before = set()
    # Quick: before the listing, after the claim, before the manifest, before the pointer moves.
    for pause_at in range(1, calls + 1) if exhaustive else (1, 3, 5, 6):
        seed = 100 + pause_at
        killed_before.add(pause_and_kill(s3.location, seed, pause_at, env=s3.env))
        store = s3.open()
        found = [info.version for info in store.list_versions(MODEL)]
        # Either the killed save is complete and visible, or it left nothing visible.
        assert found in (versions, versions + [found[-1]]), (pause_at, found)
        claimed = {int(folder.rsplit("/", 1)[1]) for folder in s3.leftovers()}
        assert not claimed & set(found), "objects without a manifest became a version"
        for version in found:
            store.verify(MODEL, version)
        latest = store.load(MODEL, with_training_state=True)
        assert latest.version == found[-1]
        if found != versions:  # the interrupted save landed: exactly what was saved
            assert found[-1] > max(versions + list(claimed))
            assert_same_tensors(latest.tensors, random_tensors(seed))
            assert_same_tensors(latest.training_state.tensors, random_training_tensors(seed))
        # `latest.json` is moved after the manifest: it may lag behind saves killed in between
        # (resolution does not use it), but it always names a complete version.
        assert latest_pointer(s3) in found
        versions = found
    # The kills hit every phase: listing, writing objects, reading and swapping the pointer.
    assert {"ListObjectsV2", "PutObject", "GetObject"} <= killed_before
    assert s3.leftovers(), "some kills should have left a save without its manifest"
    # The next save numbers above every claimed folder and moves `latest` to itself.
    store = s3.open()
    highest_folder = max(int(f.rsplit("/", 1)[1]) for f in s3.leftovers())
    new = store.save(MODEL, random_tensors(7), sample_metadata())
    assert new > max(highest_folder, versions[-1])
    assert latest_pointer(s3) == new == store.resolve(MODEL)


@pytest.mark.slow  # about 50 s: a worker process per request of a deletion and a label move
def test_sigkill_before_every_request_of_a_deletion_and_a_label_move(s3: S3Backend) -> None:
    store = s3.open()
    for seed in range(3):
        store.save(MODEL, random_tensors(seed), sample_metadata())
    highest = 3
    for operation in ("delete", "label"):
        for pause_at in itertools.count(1):
            before = [i.version for i in s3.open().list_versions(MODEL)]
            if pause_and_kill(s3.location, 0, pause_at, operation, env=s3.env) is None:
                break  # killed before each of its requests in turn; this run went to the end
            store = s3.open()
            versions = [i.version for i in store.list_versions(MODEL)]
            for version in versions:
                store.verify(MODEL, version)
            assert store.resolve(MODEL) == versions[-1]
            if operation == "delete":
                assert versions in (before, before[:-1])  # deleted or intact, never half-deleted
                if versions != before:  # a deleted number is never handed out again
                    highest += 1
                    assert store.save(MODEL, random_tensors(highest), sample_metadata()) == highest
            else:
                assert store.labels(MODEL) in ({}, {"stable": versions[-1]})
                with contextlib.suppress(LabelNotFound):
                    store.remove_label(MODEL, "stable")
        assert pause_at > 3


def test_a_writer_that_lost_the_race_for_a_number_takes_the_next(
        s3: S3Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = s3.open(), s3.open()
    ours.save(MODEL, {"w": np.zeros(2)}, {"by": "us"})
    real_folders = S3Store._folders
    raced = []

    def listing_before_the_other_writer(self, model):
        folders = real_folders(self, model)
        if self is ours and not raced:
            # The other writer commits version 2 right after we listed: our listing is stale.
            raced.append(theirs.save(MODEL, {"w": np.full(2, 7.0)}, {"by": "them"}))
        return folders

    monkeypatch.setattr(S3Store, "_folders", listing_before_the_other_writer)
    assert ours.save(MODEL, {"w": np.ones(2)}, {"by": "us"}) == 3
    monkeypatch.undo()
    assert raced == [2]
    assert ours.load(MODEL, 2).metadata["by"] == "them"  # not overwritten
    np.testing.assert_array_equal(ours.load(MODEL, 2).tensors["w"], [7.0, 7.0])
    np.testing.assert_array_equal(ours.load(MODEL, 3).tensors["w"], [1.0, 1.0])
    assert latest_pointer(s3) == 3
    assert s3.leftovers() == []


@pytest.mark.parametrize("lost_answer", ["retried", "failed"])
@pytest.mark.parametrize("file", ["weights.safetensors", "training_state.json", "metadata.json"])
def test_a_write_that_landed_but_whose_answer_was_lost(
        s3: S3Backend, monkeypatch: pytest.MonkeyPatch, file: str, lost_answer: str) -> None:
    # The connection drops after the server stored the object: the client library's retry then
    # finds it there (412), or the client gives up with an error. Either way the save must end
    # up with exactly one complete version, not a corrupt one and not a lost one.
    from charlstm.service.store import s3 as s3_module

    store = s3.open()
    store.save(MODEL, random_tensors(0), {})
    real_put = S3Store._put
    dropped = []

    def put_then_lose_the_answer(self, key, data, **conditions):
        etag = real_put(self, key, data, **conditions)
        if key.endswith(f"/{file}") and not dropped:
            dropped.append(key)
            if lost_answer == "retried":
                raise s3_module._Lost(key)
            raise StoreError("connection reset by peer")
        return etag

    monkeypatch.setattr(S3Store, "_put", put_then_lose_the_answer)
    state = TrainingState(random_training_tensors(1), {"step": 1})
    try:
        version = store.save(MODEL, random_tensors(1), {}, training_state=state)
    except StoreError:
        version = None  # a hard error before the manifest: reported, nothing visible
    monkeypatch.undo()
    assert dropped
    versions = [i.version for i in store.list_versions(MODEL)]
    if version is None:
        assert lost_answer == "failed" and file != "metadata.json" and versions == [1]
    else:
        assert versions == [1, version] and version == 2
        assert_same_tensors(store.load(MODEL, with_training_state=True).training_state.tensors,
                            random_training_tensors(1))
    for v in versions:
        store.verify(MODEL, v)


def test_pointers_move_by_compare_and_swap(s3: S3Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3.open()
    store.save(MODEL, random_tensors(1), {})
    store.save(MODEL, random_tensors(2), {})
    other = s3.open()
    real_get = S3Store._get
    moved = []

    def get_then_someone_moves_it(self, key):
        got = real_get(self, key)
        if self is store and key.endswith("labels/stable.json") and not moved:
            moved.append(other.set_label(MODEL, "stable", 1))  # lands between read and swap
        return got

    monkeypatch.setattr(S3Store, "_get", get_then_someone_moves_it)
    store.set_label(MODEL, "stable", 2)  # its first swap fails; it reads again and retries
    monkeypatch.undo()
    assert moved and store.labels(MODEL) == {"stable": 2}


@pytest.mark.parametrize("ignored", [("If-None-Match", "If-Match"), ("If-None-Match",),
                                     ("If-Match",)])
def test_a_store_that_ignores_conditional_writes_is_refused(seaweedfs, ignored) -> None:
    # A client that drops the headers behaves as a server that ignores them would.
    def without_conditional_headers(request, **kwargs) -> None:
        for header in ignored:
            if header in request.headers:
                del request.headers[header]

    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=seaweedfs.endpoint_url, region_name="us-east-1",
        aws_access_key_id=seaweedfs.settings().access_key_id,
        aws_secret_access_key=seaweedfs.settings().secret_access_key,
        config=Config(s3={"addressing_style": "path"}))
    client.meta.events.register("before-sign.s3", without_conditional_headers)
    location = seaweedfs.location()
    with pytest.raises(StoreError, match="ignores conditional writes") as info:
        S3Store(location, seaweedfs.settings(), client=client)
    assert "--s3-single-writer" in str(info.value)
    alone = S3Store(location, seaweedfs.settings(single_writer=True), client=client)
    assert alone.conditional_writes is False
    assert alone.save(MODEL, random_tensors(0), {}) == 1
    assert S3Store(location, seaweedfs.settings()).conditional_writes is True


def test_unreachable_or_misnamed_stores_fail_clearly(seaweedfs) -> None:
    with pytest.raises(StoreError, match="cannot use the object store at s3://charlstm-tests/x/"):
        S3Store("s3://charlstm-tests/x", S3Settings(endpoint_url="http://127.0.0.1:1",
                                                    access_key_id="a", secret_access_key="b",
                                                    region="us-east-1"))
    with pytest.raises(StoreError, match="cannot use|Access|Signature|Forbidden"):
        S3Store(seaweedfs.location(), seaweedfs.settings(secret_access_key="wrong"))


@pytest.mark.parametrize("location, expected", [
    ("s3://bucket", ("bucket", "")),
    ("s3://bucket/", ("bucket", "")),
    ("s3://my.bucket-1/team/charlstm/", ("my.bucket-1", "team/charlstm/")),
])
def test_locations(location: str, expected: tuple[str, str]) -> None:
    assert parse_location(location) == expected


@pytest.mark.parametrize("location", ["s3://", "s3://B", "s3://ab", "s3://bucket/../x",
                                      "s3://bucket/a b", "s3://bucket/x/.y"])
def test_bad_locations(location: str) -> None:
    with pytest.raises(StoreError, match="store location"):
        parse_location(location)


def test_settings_come_from_flags_or_the_environment(seaweedfs, s3: S3Backend,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CHARLSTM_S3_ENDPOINT_URL": seaweedfs.endpoint_url, "CHARLSTM_S3_REGION": "us-east-1",
           "CHARLSTM_S3_ACCESS_KEY_ID": seaweedfs.settings().access_key_id,
           "CHARLSTM_S3_SECRET_ACCESS_KEY": seaweedfs.settings().secret_access_key}
    parser = add_serve_arguments(argparse.ArgumentParser(), env)
    config = ServerConfig.from_args(parser.parse_args(["--store", s3.location,
                                                       "--s3-single-writer", "yes"]))
    assert config.s3_settings() == seaweedfs.settings(single_writer=True)
    flagged = ServerConfig.from_args(parser.parse_args(["--s3-endpoint-url", "http://h:1"]))
    assert flagged.s3_settings().endpoint_url == "http://h:1"  # a flag beats the environment
    assert "wrong" not in parser.format_help() and seaweedfs.settings().secret_access_key \
        not in parser.format_help()
    with pytest.raises(ValueError, match="http"):
        ServerConfig(s3_endpoint_url="127.0.0.1:8333")
    # A process given only the environment (a training worker, a tool) reaches the same store.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = open_store(s3.location)
    assert isinstance(store, S3Store)
    store.save(MODEL, random_tensors(3), {})
    assert_same_tensors(open_store(s3.location, config.s3_settings()).load(MODEL).tensors,
                        random_tensors(3))


def test_boto3_is_only_needed_for_s3(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if it were not installed
    open_store(str(tmp_path / "store")).save(MODEL, random_tensors(0), {})
    with pytest.raises(StoreError, match=r"pip install 'charlstm\[s3\]'"):
        open_store("s3://some-bucket/x", S3Settings(endpoint_url="http://127.0.0.1:9",
                                                   region="nowhere-1"))


def test_training_state_and_listing_sizes(s3: S3Backend) -> None:
    store = s3.open()
    state = TrainingState(random_training_tensors(4), {"step": 4})
    store.save(MODEL, random_tensors(4), sample_metadata(), training_state=state)
    info = store.list_versions(MODEL)[0]
    stored = [k for k in s3.listing() if k.startswith(f"models/{MODEL}/versions/00000001/")]
    assert info.resumable and info.size_bytes == sum(len(s3.read(k)) for k in stored)
    assert sorted(k.rsplit("/", 1)[1] for k in stored) == [
        "metadata.json", "training_state.json", "training_state.safetensors",
        "weights.safetensors"]
