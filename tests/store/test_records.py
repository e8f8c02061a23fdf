"""The records API: small keyed blobs with conditional writes, shared by processes and replicas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from charlstm.service.store import (
    CheckpointStore,
    InvalidName,
    LocalStore,
    Record,
    RecordConflict,
    StoreInputError,
)

from .sample_data import random_tensors

WORKER = Path(__file__).with_name("record_worker.py")


def test_put_get_and_etags(store: CheckpointStore) -> None:
    assert store.get_record("jobs/job-1a2b.json") is None
    etag = store.put_record("jobs/job-1a2b.json", b'{"state": "queued"}')
    assert store.get_record("jobs/job-1a2b.json") == Record(b'{"state": "queued"}', etag)
    changed = store.put_record("jobs/job-1a2b.json", b'{"state": "running"}')
    assert changed != etag
    assert store.get_record("jobs/job-1a2b.json") == Record(b'{"state": "running"}', changed)
    assert store.put_record("empty", b"") and store.get_record("empty").data == b""


def test_create_only_writes(store: CheckpointStore) -> None:
    etag = store.put_record("leases/job-1", b"replica-a", if_absent=True)
    with pytest.raises(RecordConflict, match="leases/job-1"):
        store.put_record("leases/job-1", b"replica-b", if_absent=True)
    assert store.get_record("leases/job-1") == Record(b"replica-a", etag)


def test_compare_and_swap(store: CheckpointStore) -> None:
    first = store.put_record("leases/job-1", b"a@1")
    second = store.put_record("leases/job-1", b"a@2", if_match=first)
    with pytest.raises(RecordConflict):
        store.put_record("leases/job-1", b"b@1", if_match=first)  # stale: someone moved it
    assert store.get_record("leases/job-1") == Record(b"a@2", second)
    with pytest.raises(RecordConflict):
        store.put_record("leases/nobody", b"x", if_match=second)  # no record to match
    assert store.get_record("leases/nobody") is None
    with pytest.raises(StoreInputError, match="exclude each other"):
        store.put_record("leases/job-1", b"x", if_match=second, if_absent=True)
    with pytest.raises(StoreInputError, match="bytes"):
        store.put_record("leases/job-1", "text")  # type: ignore[arg-type]
    assert store.get_record("leases/job-1") == Record(b"a@2", second)


def test_conditional_delete(store: CheckpointStore) -> None:
    store.delete_record("never/written")  # nothing to delete is not an error
    etag = store.put_record("leases/job-1", b"a")
    newer = store.put_record("leases/job-1", b"b")
    with pytest.raises(RecordConflict):
        store.delete_record("leases/job-1", if_match=etag)
    assert store.get_record("leases/job-1").data == b"b"
    store.delete_record("leases/job-1", if_match=newer)
    assert store.get_record("leases/job-1") is None
    with pytest.raises(RecordConflict):
        store.delete_record("leases/job-1", if_match=newer)
    store.put_record("plain", b"x")
    store.delete_record("plain")
    assert store.get_record("plain") is None
    assert store.put_record("plain", b"y", if_absent=True)  # deleted means absent


def test_listing_by_prefix(store: CheckpointStore) -> None:
    keys = ["jobs/job-2.json", "jobs/job-1.json", "jobs/job-10.json", "leases/job-1",
            "corpora/" + "ab" * 32, "jobs", "jobs/archive/job-0.json", "jobsx"]
    for key in keys:
        store.put_record(key, key.encode())
    assert store.list_records("") == sorted(keys)
    assert store.list_records("jobs/") == ["jobs/archive/job-0.json", "jobs/job-1.json",
                                           "jobs/job-10.json", "jobs/job-2.json"]
    assert store.list_records("jobs/job-1") == ["jobs/job-1.json", "jobs/job-10.json"]
    assert store.list_records("jobs") == ["jobs", "jobs/archive/job-0.json", "jobs/job-1.json",
                                          "jobs/job-10.json", "jobs/job-2.json", "jobsx"]
    assert store.list_records("nothing/") == []
    # A key that is also a folder of other keys keeps both.
    assert store.get_record("jobs").data == b"jobs"
    store.delete_record("jobs/job-1.json")
    assert "jobs/job-1.json" not in store.list_records("jobs/")
    # Records are not models, and models are not records.
    store.save("m", random_tensors(0), {})
    assert store.list_models() == ["m"] and "m" not in store.list_records("")


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../x", "a/../b", "a/..", ".hidden",
                                 "a/.b", "-x", "a b", "a\\b", "caf\u00e9", "a\x00", "a:b",
                                 "x" * 129, "a/" * 300])
def test_bad_keys_are_refused(store: CheckpointStore, key: str) -> None:
    for call in (lambda: store.get_record(key), lambda: store.put_record(key, b"x"),
                 lambda: store.delete_record(key)):
        with pytest.raises(InvalidName, match="record key") as info:
            call()
        assert info.value.field == "key"
    assert store.list_records("") == []


@pytest.mark.parametrize("prefix", ["/", "a//", "../", "a/../", ".x", "a b"])
def test_bad_prefixes_are_refused(store: CheckpointStore, prefix: str) -> None:
    with pytest.raises(InvalidName, match="prefix"):
        store.list_records(prefix)


def test_tens_of_megabytes(store: CheckpointStore) -> None:
    data = os.urandom(1 << 20) * 24  # 24 MiB, a large corpus
    etag = store.put_record("corpora/big", data)
    record = store.get_record("corpora/big")
    assert record.etag == etag and record.data == data


def test_local_records_live_in_their_own_folder(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    assert not (root / "records").exists()  # created on the first write only
    store.put_record("jobs/job-1.json", b"{}")
    store.put_record("jobs", b"also a record")
    assert (root / "records" / "jobs" / "job-1.json@").read_bytes() == b"{}"
    assert (root / "records" / "jobs@").read_bytes() == b"also a record"
    assert sorted(p.name for p in (root / "records" / ".tmp").iterdir()) == []
    # A temporary file whose writer is dead is removed when the store is next opened.
    abandoned = root / "records" / ".tmp" / "999999999-0123-elsewhere"
    abandoned.write_bytes(b"half")
    os.utime(abandoned, (0, 0))  # and old: its writer cannot be asked
    LocalStore(root)
    assert not abandoned.exists()
    assert LocalStore(root).get_record("jobs/job-1.json").data == b"{}"


def test_two_processes_racing_on_one_key(backend, tmp_path: Path) -> None:
    """Two processes race create-only writes and compare-and-swap increments, round by round."""
    rounds = 100 if backend.name == "local" else 25
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(WORKER), backend.location, writer,
                                 str(rounds), str(go)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=backend.env)
               for writer in ("A", "B")]
    for proc in workers:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    go.touch()
    outcomes = {}
    for writer, proc in zip("AB", workers):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        *rounds_seen, last = out.split("\n")[:-1]
        assert last.startswith("CONFLICTS")
        outcomes[writer] = {int(line.split()[1]): line.split()[0] for line in rounds_seen}
    store = backend.open()
    for r in range(rounds):
        results = {outcomes["A"][r], outcomes["B"][r]}
        assert results == {"WON", "LOST"}, f"round {r}: {outcomes['A'][r]}, {outcomes['B'][r]}"
        winner = "A" if outcomes["A"][r] == "WON" else "B"
        assert store.get_record(f"race/{r:04d}").data == winner.encode()
    # Every increment of both writers landed: no compare-and-swap overwrote another's update.
    assert int(store.get_record("counter").data) == 2 * rounds

