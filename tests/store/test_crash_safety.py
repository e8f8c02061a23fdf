"""A saving process killed with SIGKILL at any moment leaves a store that opens, whose `latest`
loads and verifies, that lists no partial version and that has no partial writes left behind."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlstm.service.store import LabelNotFound, LocalStore

from .conftest import assert_same_tensors, scratch_entries
from .sample_data import random_tensors, random_training_tensors, sample_metadata

WORKER = Path(__file__).with_name("save_worker.py")
MODEL = "crashy"


def start_worker(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"worker ended without output: {proc.stderr.read()}")
    return line.strip()


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # reaped: its pid is gone, as after a real crash
    proc.stdin.close()
    proc.stdout.close()
    proc.stderr.close()


def count_calls(root: Path | str, seed: int, operation: str = "save",
                env: dict | None = None) -> int:
    """Run one operation to the end; return how many file-system calls (or S3 requests) it made."""
    command = [sys.executable, str(WORKER), "pause", str(root), MODEL, str(seed), "0", operation]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env=env).stdout.split("\n")
    assert out[1].startswith("DONE"), out
    return int(out[0].split()[1])


def check_store_after_crash(root: Path, before: list[int], seed: int) -> list[int]:
    """Open the store as the next process would and check everything after a killed save;
    return its versions."""
    store = LocalStore(root)
    assert scratch_entries(root) == [], "partial writes of the killed process were not removed"
    versions = [info.version for info in store.list_versions(MODEL)]
    # The killed save either completed (one new version, numbered next) or left no trace.
    assert versions in (before, before + [before[-1] + 1])
    numbered = sorted(int(p.name) for p in (root / "models" / MODEL / "versions").iterdir())
    assert numbered == versions, "a folder that is not a complete version is in the store"
    latest = store.load(MODEL, with_training_state=True)
    assert latest.version == versions[-1]
    if versions != before:  # the interrupted save landed: it must be exactly what was saved
        assert_same_tensors(latest.tensors, random_tensors(seed))
        assert_same_tensors(latest.training_state.tensors, random_training_tensors(seed))
        assert latest.metadata["seed"] == seed
    for version in versions:
        store.verify(MODEL, version)
    pointer = json.loads((root / "models" / MODEL / "latest.json").read_text())
    assert pointer["version"] == versions[-1]
    return versions


def pause_and_kill(root: Path | str, seed: int, pause_at: int, operation: str = "save",
                   env: dict | None = None) -> str | None:
    """Start ``operation`` in a worker, SIGKILL it just before its ``pause_at``-th file-system
    call (or S3 request); return the name of that call, or None if the operation made fewer
    calls and finished."""
    proc = start_worker("pause", root, MODEL, seed, pause_at, operation, env=env)
    line = read_line(proc)
    if line.startswith("CALLS"):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return None
    assert line.startswith("PAUSE"), line
    kill(proc)
    return line.split()[2]


def test_sigkill_before_every_file_system_call_of_a_save(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalStore(root).save(MODEL, random_tensors(0), sample_metadata())
    calls = count_calls(root, seed=1)  # a save of an existing model, run to the end
    assert calls >= 20

    root = tmp_path / "killed"
    LocalStore(root).save(MODEL, random_tensors(0), sample_metadata())
    versions = [1]
    killed_before = set()
    for pause_at in range(1, calls + 1):
        seed = 100 + pause_at
        killed_before.add(pause_and_kill(root, seed, pause_at))
        versions = check_store_after_crash(root, versions, seed)
    # The kills hit every phase: writing the files, committing them, moving `latest`.
    assert {"mkdir", "write", "fsync", "flock", "rename", "replace"} <= killed_before
    assert 1 < len(versions) < calls + 1  # some kills landed after the commit, most before


@pytest.mark.slow  # about 8 s: every call of a deletion and of a label move
def test_sigkill_during_deletion_and_labelling(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    for seed in range(3):
        store.save(MODEL, random_tensors(seed), sample_metadata())
    highest = 3
    for operation in ("delete", "label"):
        for pause_at in itertools.count(1):
            before = [i.version for i in LocalStore(root).list_versions(MODEL)]
            if pause_and_kill(root, 0, pause_at, operation) is None:
                break  # killed before each of its calls in turn; this run went to the end
            store = LocalStore(root)
            assert scratch_entries(root) == []
            versions = [i.version for i in store.list_versions(MODEL)]
            for version in versions:
                store.verify(MODEL, version)
            for folder in (root / "models" / MODEL / "versions").iterdir():
                if int(folder.name) not in versions:  # a deleted version: only its tombstone
                    assert [p.name for p in folder.iterdir()] == ["deleted.json"]
            assert store.resolve(MODEL) == versions[-1]
            pointer = json.loads((root / "models" / MODEL / "latest.json").read_text())
            assert pointer["version"] == versions[-1]
            if operation == "delete":
                assert versions in (before, before[:-1])  # deleted or intact, never half-deleted
                if versions != before:
                    # A deleted number is never handed out again.
                    highest += 1
                    assert store.save(MODEL, random_tensors(highest), sample_metadata()) == highest
            else:
                assert store.labels(MODEL) in ({}, {"stable": versions[-1]})
                with contextlib.suppress(LabelNotFound):
                    store.remove_label(MODEL, "stable")
        assert pause_at > 8


def test_sigkill_during_the_first_save_of_a_model_leaves_no_model(tmp_path: Path) -> None:
    root = tmp_path / "store"
    calls = count_calls(root, seed=1)  # creates the model
    LocalStore(root).delete(MODEL)
    for pause_at in (2, calls // 2, calls - 12):
        proc = start_worker("pause", root, MODEL, 7, pause_at)
        assert read_line(proc).startswith("PAUSE")
        kill(proc)
        store = LocalStore(root)
        assert scratch_entries(root) == []
        if MODEL in store.list_models():  # the save completed before the kill
            assert store.resolve(MODEL) == 1
            store.verify(MODEL)
            store.delete(MODEL)
        else:
            assert not (root / "models" / MODEL).exists()


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.slow)],
                         indirect=True)
def test_sigkill_after_random_delays_while_saving_in_a_loop(backend) -> None:
    rng = random.Random(1234)
    versions: list[int] = []
    for run in range(5):
        proc = start_worker("loop", backend.location, MODEL, 1000 * (run + 1), env=backend.env)
        assert read_line(proc) == "READY"
        time.sleep(rng.uniform(0.0, 0.15 if backend.name == "local" else 0.4))
        kill(proc)
        store = backend.open()
        if backend.name == "local":
            assert scratch_entries(backend.root) == []
        if not store.list_models():
            continue  # killed before the first save completed
        infos = store.list_versions(MODEL)
        assert [i.version for i in infos][: len(versions)] == versions  # nothing lost
        versions = [i.version for i in infos]
        if backend.name == "local":
            assert versions == list(range(1, len(versions) + 1))
        else:  # a killed save keeps the number it claimed: the next one skips it
            assert versions == sorted(set(versions))
            claimed = {int(f.rsplit("/", 1)[1]) for f in backend.leftovers()}
            assert not claimed & set(versions), "a save without its manifest became visible"
        for info in infos:
            seed = info.metadata["seed"]
            checkpoint = store.load(MODEL, info.version, with_training_state=True)
            assert_same_tensors(checkpoint.tensors, random_tensors(seed))
        assert store.resolve(MODEL) == versions[-1]


def test_opening_the_store_while_another_process_saves_does_not_disturb_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    calls = count_calls(root, seed=1)
    # Stop the writer in the middle of writing its files, open the store (which cleans up
    # after dead writers), then let the writer finish.
    proc = start_worker("pause", root, MODEL, 5, calls // 3)
    assert read_line(proc).startswith("PAUSE")
    partial = scratch_entries(root)
    assert partial, "the paused writer should have a partial write in progress"
    store = LocalStore(root)
    assert scratch_entries(root) == partial, "a live writer's partial write was removed"
    assert [i.version for i in store.list_versions(MODEL)] == [1]
    proc.stdin.write("continue\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split("\n")[1] == "DONE 2"
    assert_same_tensors(store.load(MODEL).tensors, random_tensors(5))
    assert scratch_entries(root) == []
