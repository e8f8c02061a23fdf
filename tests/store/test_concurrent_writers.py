"""Two processes saving versions of one model at the same time never collide."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from charlstm.service.store import LocalStore

from .conftest import scratch_entries

WORKER = Path(__file__).with_name("save_worker.py")
MODEL = "shared"
PER_WRITER = 20


def test_two_processes_saving_many_versions_each_get_distinct_versions(
        backend, tmp_path: Path) -> None:
    # 20 saves each locally; 12 on S3, where each save is several requests to a server that
    # shares the two cores.
    per_writer = PER_WRITER if backend.name == "local" else 12
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, str(WORKER), "writer", backend.location, MODEL,
                                 str(writer), str(per_writer), str(go)], env=backend.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for writer in (1, 2)]
    for proc in writers:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    go.touch()  # both start saving at once
    reported: dict[int, tuple[int, int]] = {}  # version -> (writer, index), as the writers saw it
    for writer, proc in zip((1, 2), writers):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines = out.split()
        returned = [int(v) for v in lines[1::3]]
        assert [int(i) for i in lines[2::3]] == list(range(per_writer))
        assert returned == sorted(returned), "a writer's versions must increase"
        for index, version in enumerate(returned):
            assert version not in reported, f"version {version} was handed to two saves"
            reported[version] = (writer, index)

    store = backend.open()
    infos = store.list_versions(MODEL)
    assert [i.version for i in infos] == list(range(1, 2 * per_writer + 1))
    assert sorted(reported) == [i.version for i in infos]
    for info in infos:
        checkpoint = store.load(MODEL, info.version)
        writer, index = reported[info.version]
        # What is stored under each number is what the save that got that number wrote.
        assert (checkpoint.metadata["writer"], checkpoint.metadata["index"]) == (writer, index)
        np.testing.assert_array_equal(checkpoint.tensors["who"], [writer, index])
        np.testing.assert_array_equal(checkpoint.tensors["weights"],
                                      np.full((8, 8), writer * 1000 + index, np.float32))
    assert store.resolve(MODEL) == 2 * per_writer
    assert backend.leftovers() == []
    if backend.name == "local":
        assert scratch_entries(backend.root) == []


def test_threads_of_one_process_with_separate_store_objects_do_not_collide(backend) -> None:
    stores = [backend.open(), backend.open()]

    def save_many(writer: int) -> list[int]:
        return [stores[writer].save(MODEL, {"who": np.array([writer, i])}, {"i": i})
                for i in range(10)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(save_many, (0, 1)))
    assert sorted(results[0] + results[1]) == list(range(1, 21))
    for writer, versions in enumerate(results):
        for index, version in enumerate(versions):
            np.testing.assert_array_equal(stores[1].load(MODEL, version).tensors["who"],
                                          [writer, index])


def test_a_writer_outside_the_lock_that_takes_the_number_first_is_not_overwritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer that does not share our lock (say, another host on a network filesystem) renames
    # its version 2 into place just before we do: we must take 3 and leave its 2 alone.
    root = tmp_path / "store"
    store = LocalStore(root)
    store.save(MODEL, {"w": np.zeros(2)}, {"by": "us"})
    other = LocalStore(tmp_path / "other")
    other.save(MODEL, {"w": np.zeros(2)}, {})
    other.save(MODEL, {"w": np.full(2, 7.0)}, {"by": "them"})
    theirs = root / "models" / MODEL / "versions" / "00000002"
    real_rename = os.rename

    def rename_after_the_other_writer(src, dst, *args, **kwargs):
        if Path(dst) == theirs and not theirs.exists():
            # Their complete version 2, with a manifest naming model MODEL version 2.
            shutil.copytree(other.version_path(MODEL, 2), theirs)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename_after_the_other_writer)
    assert store.save(MODEL, {"w": np.ones(2)}, {"by": "us"}) == 3
    monkeypatch.undo()
    assert store.load(MODEL, 2).metadata["by"] == "them"
    np.testing.assert_array_equal(store.load(MODEL, 2).tensors["w"], [7.0, 7.0])
    np.testing.assert_array_equal(store.load(MODEL, 3).tensors["w"], [1.0, 1.0])
    assert store.load(MODEL, 3).metadata["version"] == 3
    assert scratch_entries(root) == []
