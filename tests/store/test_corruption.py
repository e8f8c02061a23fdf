"""Damaged or tampered files fail loudly, naming model, version and file; other versions load."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from charlstm.service.store import CorruptCheckpoint, LocalStore, TrainingState

from .conftest import assert_same_tensors
from .sample_data import random_tensors, random_training_tensors, sample_metadata

MODEL = "fragile"


@pytest.fixture
def three_versions(store: LocalStore) -> LocalStore:
    for seed in (1, 2, 3):
        state = TrainingState(random_training_tensors(seed), {"step": seed})
        store.save(MODEL, random_tensors(seed), sample_metadata(step=seed), training_state=state)
    return store


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def assert_others_still_load(store: LocalStore, broken: int) -> None:
    for seed in (1, 2, 3):
        if seed != broken:
            assert_same_tensors(store.load(MODEL, seed, with_training_state=True).tensors,
                                random_tensors(seed))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_in_the_weights(three_versions: LocalStore, where: str) -> None:
    store = three_versions
    weights = store.version_path(MODEL, 2) / "weights.safetensors"
    size = weights.stat().st_size
    flip_byte(weights, {"first": 0, "middle": size // 2, "last": size - 1}[where])

    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2)
    error = info.value
    assert (error.model, error.version, error.file) == (MODEL, 2, "weights.safetensors")
    message = str(error)
    assert MODEL in message and "version 2" in message and "weights.safetensors" in message
    assert "sha256" in message
    assert_others_still_load(store, broken=2)


def test_a_damaged_latest_version_fails_rather_than_silently_serving_an_older_one(
        three_versions: LocalStore) -> None:
    store = three_versions
    flip_byte(store.version_path(MODEL, 3) / "weights.safetensors", 100)
    assert store.resolve(MODEL) == 3
    with pytest.raises(CorruptCheckpoint, match="version 3"):
        store.load(MODEL)
    assert_others_still_load(store, broken=3)


@pytest.mark.parametrize("file", ["weights.safetensors", "training_state.safetensors",
                                  "training_state.json"])
def test_a_deleted_file(three_versions: LocalStore, file: str) -> None:
    store = three_versions
    (store.version_path(MODEL, 2) / file).unlink()
    with pytest.raises(CorruptCheckpoint, match="missing") as info:
        store.verify(MODEL, 2)
    assert (info.value.model, info.value.version, info.value.file) == (MODEL, 2, file)
    assert "version 2" in str(info.value) and file in str(info.value)
    if file != "weights.safetensors":  # serving (weights only) still works
        assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))
    assert_others_still_load(store, broken=2)


def test_a_truncated_file_reports_its_size(three_versions: LocalStore) -> None:
    store = three_versions
    weights = store.version_path(MODEL, 1) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpoint, match="size is .* metadata says"):
        store.load(MODEL, 1)
    assert_others_still_load(store, broken=1)


def test_a_damaged_training_state_is_caught_when_resuming(three_versions: LocalStore) -> None:
    store = three_versions
    flip_byte(store.version_path(MODEL, 2) / "training_state.safetensors", 200)
    assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))  # weights are fine
    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2, with_training_state=True)
    assert info.value.file == "training_state.safetensors"


def test_an_edited_metadata_file(three_versions: LocalStore) -> None:
    store = three_versions
    path = store.version_path(MODEL, 2) / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["vocab"] = "abc deg"  # a one-character change in what the weights mean
    path.write_text(json.dumps(metadata))
    with pytest.raises(CorruptCheckpoint) as info:
        store.load(MODEL, 2)
    assert (info.value.version, info.value.file) == (2, "metadata.json")
    # A version without an intact manifest is not listed (and is not `latest` if it is last).
    assert [i.version for i in store.list_versions(MODEL)] == [1, 3]
    assert_others_still_load(store, broken=2)


def test_a_reformatted_metadata_file_is_still_accepted(three_versions: LocalStore) -> None:
    store = three_versions
    path = store.version_path(MODEL, 2) / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=None, sort_keys=False))
    assert_same_tensors(store.load(MODEL, 2).tensors, random_tensors(2))


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", "\u00e9".encode("latin-1")])
def test_a_garbled_or_missing_metadata_file(three_versions: LocalStore, content: bytes) -> None:
    store = three_versions
    path = store.version_path(MODEL, 3) / "metadata.json"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpoint, match="metadata.json"):
        store.load(MODEL, 3)
    assert store.resolve(MODEL) == 2  # the highest complete version
    path.unlink()
    with pytest.raises(CorruptCheckpoint, match="metadata.json: file is missing"):
        store.load(MODEL, 3)


def rewrite_consistently(store: LocalStore, version: int, weights: bytes) -> None:
    """Replace a version's weights and fix up sha256, size and the manifest's own digest, as a
    deliberate tamperer would (everything except the tensor table)."""
    from charlstm.service.store.codec import metadata_digest

    folder = store.version_path(MODEL, version)
    (folder / "weights.safetensors").write_bytes(weights)
    manifest = json.loads((folder / "metadata.json").read_text())
    manifest["files"]["weights.safetensors"] = {"sha256": hashlib.sha256(weights).hexdigest(),
                                                "size": len(weights)}
    manifest["metadata_sha256"] = metadata_digest(manifest)
    (folder / "metadata.json").write_text(json.dumps(manifest))


def test_weights_of_the_wrong_shape_are_refused_even_with_matching_hashes(
        three_versions: LocalStore) -> None:
    store = three_versions
    tensors = random_tensors(2)
    tensors["decoder.weight"] = np.zeros((8, 4), np.float32)
    rewrite_consistently(store, 2, safetensors.numpy.save(tensors))
    with pytest.raises(CorruptCheckpoint, match="decoder.weight"):
        store.load(MODEL, 2)
    del tensors["decoder.weight"]
    rewrite_consistently(store, 2, safetensors.numpy.save(tensors))
    with pytest.raises(CorruptCheckpoint, match="missing \\['decoder.weight'\\]"):
        store.load(MODEL, 2)


class _Trap:
    """Unpickling this would create a file: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_nothing_is_ever_unpickled(three_versions: LocalStore, tmp_path: Path) -> None:
    store = three_versions
    sprung = tmp_path / "trap-sprung"
    rewrite_consistently(store, 2, pickle.dumps({"decoder.weight": _Trap(str(sprung))}))
    with pytest.raises(CorruptCheckpoint, match="not a valid safetensors file"):
        store.load(MODEL, 2)
    assert not sprung.exists()
