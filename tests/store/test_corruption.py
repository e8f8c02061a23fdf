"""Damaged or tampered files fail loudly, naming model, version and file; other versions load."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from charlstm.service.store import (
    CheckpointStore,
    CorruptCheckpoint,
    TrainingState,
    VersionNotFound,
)

from .backends import version_file
from .conftest import assert_same_tensors
from .sample_data import random_tensors, random_training_tensors, sample_metadata

MODEL = "fragile"


@pytest.fixture
def three_versions(store: CheckpointStore) -> CheckpointStore:
    for seed in (1, 2, 3):
        state = TrainingState(random_training_tensors(seed), {"step": seed})
        store.save(MODEL, random_tensors(seed), sample_metadata(step=seed), training_state=state)
    return store


def flip_byte(backend, path: str, offset: int) -> None:
    data = bytearray(backend.read(path))
    data[offset] ^= 0x01
    backend.write(path, bytes(data))


def assert_others_still_load(store: CheckpointStore, broken: int) -> None:
    for seed in (1, 2, 3):
        if seed != broken:
            assert_same_tensors(store.load(MODEL, seed, with_training_state=True).tensors,
                                random_tensors(seed))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_in_the_weights(backend, three_versions: CheckpointStore,
                                         where: str) -> None:
    store = three_versions
    weights = version_file(MODEL, 2, "weights.safetensors")
    size = len(backend.read(weights))
    flip_byte(backend, weights, {"first": 0, "middle": size // 2, "last": size - 1}[where])

    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2)
    error = info.value
    assert (error.model, error.version, error.file) == (MODEL, 2, "weights.safetensors")
    message = str(error)
    assert MODEL in message and "version 2" in message and "weights.safetensors" in message
    assert "sha256" in message
    assert_others_still_load(store, broken=2)


def test_a_damaged_latest_version_fails_rather_than_silently_serving_an_older_one(
        backend, three_versions: CheckpointStore) -> None:
    store = three_versions
    flip_byte(backend, version_file(MODEL, 3, "weights.safetensors"), 100)
    assert store.resolve(MODEL) == 3
    with pytest.raises(CorruptCheckpoint, match="version 3"):
        store.load(MODEL)
    assert_others_still_load(store, broken=3)


@pytest.mark.parametrize("file", ["weights.safetensors", "training_state.safetensors",
                                  "training_state.json"])
def test_a_deleted_file(backend, three_versions: CheckpointStore, file: str) -> None:
    store = three_versions
    backend.remove(version_file(MODEL, 2, file))
    with pytest.raises(CorruptCheckpoint, match="missing") as info:
        store.verify(MODEL, 2)
    assert (info.value.model, info.value.version, info.value.file) == (MODEL, 2, file)
    assert "version 2" in str(info.value) and file in str(info.value)
    if file != "weights.safetensors":  # serving (weights only) still works
        assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))
    assert_others_still_load(store, broken=2)


def test_a_truncated_file_reports_its_size(backend, three_versions: CheckpointStore) -> None:
    store = three_versions
    weights = version_file(MODEL, 1, "weights.safetensors")
    backend.write(weights, backend.read(weights)[:-10])
    with pytest.raises(CorruptCheckpoint, match="size is .* metadata says"):
        store.load(MODEL, 1)
    assert_others_still_load(store, broken=1)


def test_a_damaged_training_state_is_caught_when_resuming(backend,
                                                          three_versions: CheckpointStore) -> None:
    store = three_versions
    flip_byte(backend, version_file(MODEL, 2, "training_state.safetensors"), 200)
    assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))  # weights are fine
    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2, with_training_state=True)
    assert info.value.file == "training_state.safetensors"


def test_an_edited_metadata_file(backend, three_versions: CheckpointStore) -> None:
    store = three_versions
    path = version_file(MODEL, 2, "metadata.json")
    metadata = json.loads(backend.read(path))
    metadata["vocab"] = "abc deg"  # a one-character change in what the weights mean
    backend.write(path, json.dumps(metadata).encode())
    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2)
    assert (info.value.version, info.value.file) == (2, "metadata.json")
    # A version without an intact manifest is not listed (and is not `latest` if it is last).
    assert [i.version for i in store.list_versions(MODEL)] == [1, 3]
    assert_others_still_load(store, broken=2)


def test_a_reformatted_metadata_file_is_still_accepted(backend,
                                                       three_versions: CheckpointStore) -> None:
    store = three_versions
    path = version_file(MODEL, 2, "metadata.json")
    backend.write(path, json.dumps(json.loads(backend.read(path)), indent=None,
                                   sort_keys=False).encode())
    assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", "\u00e9".encode("latin-1")])
def test_a_garbled_or_missing_metadata_file(backend, three_versions: CheckpointStore,
                                            content: bytes) -> None:
    store = three_versions
    path = version_file(MODEL, 3, "metadata.json")
    backend.write(path, content)
    with pytest.raises(CorruptCheckpoint, match="metadata.json"):
        store.load(MODEL, 3)
    assert store.resolve(MODEL) == 2  # the highest complete version
    backend.remove(path)
    if backend.name == "local":  # a folder appears only by rename: it lost its manifest
        with pytest.raises(CorruptCheckpoint, match="metadata.json: file is missing"):
            store.load(MODEL, 3)
    else:  # objects without a manifest are what a save in progress looks like: not a version
        with pytest.raises(VersionNotFound):
            store.load(MODEL, 3)


def rewrite_consistently(backend, version: int, weights: bytes) -> None:
    """Replace a version's weights and fix up sha256, size and the manifest's own digest, as a
    deliberate tamperer would (everything except the tensor table)."""
    from charlstm.service.store.codec import metadata_digest

    backend.write(version_file(MODEL, version, "weights.safetensors"), weights)
    manifest = json.loads(backend.read(version_file(MODEL, version, "metadata.json")))
    manifest["files"]["weights.safetensors"] = {"sha256": hashlib.sha256(weights).hexdigest(),
                                                "size": len(weights)}
    manifest["metadata_sha256"] = metadata_digest(manifest)
    backend.write(version_file(MODEL, version, "metadata.json"), json.dumps(manifest).encode())


def test_weights_of_the_wrong_shape_are_refused_even_with_matching_hashes(
        backend, three_versions: CheckpointStore) -> None:
    store = three_versions
    tensors = random_tensors(2)
    tensors["decoder.weight"] = np.zeros((8, 4), np.float32)
    rewrite_consistently(backend, 2, safetensors.numpy.save(tensors))
    with pytest.raises(CorruptCheckpoint, match="decoder.weight"):
        store.load(MODEL, 2)
    del tensors["decoder.weight"]
    rewrite_consistently(backend, 2, safetensors.numpy.save(tensors))
    with pytest.raises(CorruptCheckpoint, match="missing \\['decoder.weight'\\]"):
        store.load(MODEL, 2)


class _Trap:
    """Unpickling this would create a file: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_nothing_is_ever_unpickled(backend, three_versions: CheckpointStore,
                                   tmp_path: Path) -> None:
    store = three_versions
    sprung = tmp_path / "trap-sprung"
    rewrite_consistently(backend, 2, pickle.dumps({"decoder.weight": _Trap(str(sprung))}))
    with pytest.raises(CorruptCheckpoint, match="not a valid safetensors file"):
        store.load(MODEL, 2)
    assert not sprung.exists()
