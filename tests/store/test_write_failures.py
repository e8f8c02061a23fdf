"""A save that fails (disk full, I/O error) raises StoreWriteError and leaves nothing visible;
cleanup on open removes only what dead writers left."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlstm.service.store import LocalStore, StoreWriteError, TrainingState
from charlstm.service.store.files import temp_name

from .conftest import assert_same_tensors, scratch_entries
from .sample_data import random_tensors, random_training_tensors, sample_metadata

WORKER = Path(__file__).with_name("save_worker.py")
MODEL = "m"
# The calls through which the store changes the file system.
WATCHED_CALLS = [(os, "mkdir"), (os, "open"), (os, "write"), (os, "fsync"), (os, "close"),
                 (os, "rename"), (os, "replace"), (os, "unlink"), (fcntl, "flock")]


@pytest.fixture
def store(local_store: LocalStore) -> LocalStore:
    """Disk-full failures are about the local backend's file-system calls."""
    return local_store


class DiskFullAt:
    """Make the ``fail_at``-th watched call fail with ENOSPC; count calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
        self.fail_at = fail_at
        self.calls = 0
        self.failed_call: str | None = None
        for module, name in WATCHED_CALLS:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))

    def _wrap(self, real, name):
        def watched(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                self.failed_call = name
                if name == "close":  # close reports deferred write errors after closing
                    real(*args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)
        return watched


def test_a_failure_at_any_call_of_a_save_is_all_or_nothing(
        store: LocalStore, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(MODEL, random_tensors(0), sample_metadata())
    outcomes = {"failed": 0, "saved": 0}
    for fail_at in range(1, 200):
        versions_before = [i.version for i in store.list_versions(MODEL)]
        seed = 100 + fail_at
        state = TrainingState(random_training_tensors(seed), {"seed": seed})
        with monkeypatch.context() as patch:
            disk = DiskFullAt(patch, fail_at)
            try:
                version = store.save(MODEL, random_tensors(seed), sample_metadata(),
                                     training_state=state)
            except StoreWriteError as exc:
                version = None
                assert "No space left on device" in str(exc) and "nothing was stored" in str(exc)
        if disk.failed_call is None:
            break  # the save made fewer calls than fail_at: every call has had its failure
        assert scratch_entries(store_root) == [], f"leftovers after failing {disk.failed_call}"
        versions = [i.version for i in store.list_versions(MODEL)]
        if version is None:
            outcomes["failed"] += 1
            assert versions == versions_before, f"a failed save ({disk.failed_call}) is visible"
        else:
            # Only failures after the commit (moving the `latest` hint) may let a save succeed.
            outcomes["saved"] += 1
            assert versions == versions_before + [version]
            assert store.resolve(MODEL) == version
            assert_same_tensors(store.load(MODEL, version).tensors, random_tensors(seed))
        for listed in versions:
            store.verify(MODEL, listed)
    assert outcomes["failed"] >= 20 and outcomes["saved"] >= 1
    # Whatever failed, the store repairs `latest` when next opened.
    LocalStore(store_root)
    latest = (store_root / "models" / MODEL / "latest.json").read_text()
    assert f'"version": {store.resolve(MODEL)}' in latest


def test_a_real_write_error_from_the_kernel(store_root: Path) -> None:
    LocalStore(store_root).save(MODEL, random_tensors(0), sample_metadata())
    # A file size limit makes write() fail with EFBIG: the kernel's refusal, as with a full disk.
    result = subprocess.run([sys.executable, str(WORKER), "fsize", str(store_root), MODEL, "8192"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ERROR StoreWriteError"), result.stdout
    assert "File too large" in result.stdout
    store = LocalStore(store_root)
    assert [i.version for i in store.list_versions(MODEL)] == [1]
    assert scratch_entries(store_root) == []
    assert_same_tensors(store.load(MODEL).tensors, random_tensors(0))


def test_opening_removes_partial_writes_of_dead_processes_only(store_root: Path) -> None:
    store = LocalStore(store_root)
    scratch = store_root / "models" / ".tmp"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    ours = temp_name()  # this process is alive: a save of ours may be in progress
    _, random_part, host = ours.split("-", 2)
    entries = {
        "ours": ours,
        "dead": f"{dead_pid}-{random_part}-{host}",
        "other_host": f"{dead_pid}-{random_part}-some-other-host",
        "old_other_host": f"{dead_pid}-{'0' * 32}-some-other-host",
        "unknown": "not-a-store-entry",
    }
    for name in entries.values():
        (scratch / name).mkdir()
        (scratch / name / "weights.safetensors").write_bytes(b"partial")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(scratch / entries["old_other_host"], (week_ago, week_ago))
    LocalStore(store_root)
    left = set(scratch_entries(store_root))
    assert entries["ours"] in left
    assert entries["dead"] not in left
    # Another host's processes cannot be checked from here: only age removes their entries.
    assert entries["other_host"] in left
    assert entries["old_other_host"] not in left
    assert entries["unknown"] in left


def test_an_unwritable_root_is_a_store_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreWriteError, match="cannot create"):
        LocalStore(blocker / "store")
