"""Save, list, load and resolve: what goes in comes back, bit for bit, with its metadata."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from charlstm.service.store import (
    Checkpoint,
    CheckpointStore,
    LabelNotFound,
    LocalStore,
    ModelNotFound,
    StoreError,
    StoreInputError,
    TrainingState,
    VersionNotFound,
    open_store,
)

from .backends import version_file
from .conftest import assert_same_tensors, scratch_entries
from .sample_data import random_tensors, random_training_tensors, sample_metadata


def test_save_list_load_and_resolve(store: CheckpointStore) -> None:
    saved = {seed: random_tensors(seed) for seed in (1, 2, 3)}
    versions = [store.save("shakespeare", saved[seed], sample_metadata(step=100 * seed))
                for seed in (1, 2, 3)]
    assert versions == [1, 2, 3]
    assert store.list_models() == ["shakespeare"]

    infos = store.list_versions("shakespeare")
    assert [i.version for i in infos] == [1, 2, 3]  # oldest first
    assert [i.metadata["metrics"]["step"] for i in infos] == [100, 200, 300]
    assert infos[0].created <= infos[1].created <= infos[2].created
    assert all(not i.resumable and i.labels == [] for i in infos)

    latest = store.load("shakespeare")
    assert isinstance(latest, Checkpoint)
    assert (latest.model, latest.version) == ("shakespeare", 3)
    assert_same_tensors(latest.tensors, saved[3])
    assert latest.training_state is None
    assert store.resolve("shakespeare") == store.resolve("shakespeare", "latest") == 3

    store.set_label("shakespeare", "stable", 2)
    assert store.resolve("shakespeare", "stable") == 2
    assert_same_tensors(store.load("shakespeare", "stable").tensors, saved[2])
    assert_same_tensors(store.load("shakespeare", 1).tensors, saved[1])
    assert [i.labels for i in store.list_versions("shakespeare")] == [[], ["stable"], []]


def test_metadata_comes_back_with_the_store_fields(backend, store: CheckpointStore) -> None:
    metadata = sample_metadata(step=42, val_loss=0.875)
    metadata["val_curve"] = [[10, 2.5], [20, 1.25], [42, 0.875]]
    metadata["note"] = "ünïcödé ☃ and \"quotes\""
    tensors = random_tensors(7)
    version = store.save("m", tensors, metadata)
    loaded = store.load("m", version).metadata

    for key, value in metadata.items():
        assert loaded[key] == value, key
    assert loaded["model"] == "m"
    assert loaded["version"] == version
    assert isinstance(loaded["created"], float)
    assert isinstance(loaded["package_version"], str) and loaded["package_version"]
    assert loaded["tensors"] == {name: {"dtype": "float32", "shape": list(a.shape)}
                                 for name, a in tensors.items()}
    weights = backend.read(version_file("m", version, "weights.safetensors"))
    assert loaded["files"]["weights.safetensors"] == {
        "sha256": hashlib.sha256(weights).hexdigest(),
        "size": len(weights),
    }
    # The stored file is plain JSON a person can read.
    on_disk = json.loads(backend.read(version_file("m", version, "metadata.json")))
    assert on_disk["corpus"] == metadata["corpus"]


def test_callers_cannot_forge_the_store_fields(store: CheckpointStore) -> None:
    forged = dict(sample_metadata(), model="other", version=99, files={}, created=0.0)
    version = store.save("m", random_tensors(0), forged)
    loaded = store.load("m").metadata
    assert (loaded["model"], loaded["version"]) == ("m", version)
    assert "weights.safetensors" in loaded["files"] and loaded["created"] > 0


def test_a_loaded_checkpoint_saved_again_becomes_a_new_version(store: CheckpointStore) -> None:
    store.save("m", random_tensors(0), sample_metadata())
    first = store.load("m")
    assert store.save("m", first.tensors, first.metadata) == 2
    second = store.load("m")
    assert_same_tensors(second.tensors, first.tensors)
    assert second.metadata["version"] == 2


def test_training_state_round_trip(store: CheckpointStore) -> None:
    state = TrainingState(tensors=random_training_tensors(5),
                          meta={"step": 500, "rng": {"state": [1, 2, 3]}, "position": 12345,
                                "best_val_loss": 1.5})
    version = store.save("m", random_tensors(5), sample_metadata(), training_state=state)
    store.save("m", random_tensors(6), sample_metadata())  # a version without one

    assert store.load("m", version).training_state is None  # only read when asked for
    loaded = store.load("m", version, with_training_state=True).training_state
    assert_same_tensors(loaded.tensors, state.tensors)
    assert loaded.meta == state.meta
    assert store.load("m", with_training_state=True).training_state is None
    assert [i.resumable for i in store.list_versions("m")] == [True, False]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int32", "int64",
                                   "uint8", "uint32", "bool"])
def test_every_supported_dtype_round_trips(store: CheckpointStore, dtype: str) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "matrix": (rng.standard_normal((3, 5)) * 50).astype(dtype),
        "scalar": np.array(3, dtype=dtype),
        "empty": np.zeros((0, 4), dtype=dtype),
    }
    store.save("m", tensors, {})
    assert_same_tensors(store.load("m").tensors, tensors)


def test_non_contiguous_and_big_endian_arrays_are_stored_by_value(store: CheckpointStore) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {"strided": base[:, ::2], "transposed": base.T,
               "big_endian": base.astype(">f8")}
    store.save("m", tensors, {})
    loaded = store.load("m").tensors
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["transposed"], base.T)
    np.testing.assert_array_equal(loaded["big_endian"], base.astype(np.float64))
    assert loaded["big_endian"].dtype == np.float64


def test_loaded_arrays_are_independent_writable_copies(store: CheckpointStore) -> None:
    tensors = random_tensors(0)
    store.save("m", tensors, {})
    first = store.load("m").tensors["decoder.weight"]
    first[:] = 0
    assert_same_tensors(store.load("m").tensors, tensors)


def test_a_reopened_store_sees_everything(backend) -> None:
    store = backend.open()
    store.save("a", random_tensors(1), sample_metadata())
    store.save("b", random_tensors(2), sample_metadata())
    store.set_label("b", "canary", 1)
    again = backend.open()
    assert again.list_models() == ["a", "b"]
    assert again.labels("b") == {"canary": 1}
    assert_same_tensors(again.load("a").tensors, random_tensors(1))


def test_on_disk_layout(local_store: CheckpointStore, store_root: Path) -> None:
    store = local_store
    store.save("m", random_tensors(0), sample_metadata(),
               training_state=TrainingState(random_training_tensors(0), {"step": 1}))
    store.set_label("m", "stable", 1)
    folder = store_root / "models" / "m"
    assert sorted(p.name for p in (folder / "versions" / "00000001").iterdir()) == [
        "metadata.json", "training_state.json", "training_state.safetensors",
        "weights.safetensors"]
    assert json.loads((folder / "latest.json").read_text())["version"] == 1
    assert json.loads((folder / "labels" / "stable.json").read_text())["version"] == 1
    assert scratch_entries(store_root) == []
    # The store keeps to <root>/models: the rest of the directory belongs to others.
    assert [p.name for p in store_root.iterdir()] == ["models"]


def test_references_that_name_nothing(store: CheckpointStore) -> None:
    with pytest.raises(ModelNotFound, match="nope"):
        store.load("nope")
    with pytest.raises(ModelNotFound):
        store.list_versions("nope")
    with pytest.raises(ModelNotFound):
        store.labels("nope")
    store.save("m", random_tensors(0), {})
    for version in (0, -1, 2, 10**30):
        with pytest.raises(VersionNotFound, match=f"no version {version}"):
            store.load("m", version)
    with pytest.raises(LabelNotFound, match="stable"):
        store.resolve("m", "stable")
    with pytest.raises(StoreInputError) as info:
        store.resolve("m", 1.0)
    assert info.value.field == "ref"


@pytest.mark.parametrize("tensors, message", [
    ({}, "at least one tensor"),
    ([np.zeros(2)], "must be a dict"),
    ({"w": [1.0, 2.0]}, "numpy array"),
    ({"w": np.array(["text"])}, "dtype"),
    ({"w": np.array([object()])}, "dtype"),
    ({"w": np.zeros(2, dtype=np.complex128)}, "dtype"),
    ({"": np.zeros(2)}, "names"),
    ({"__metadata__": np.zeros(2)}, "names"),
])
def test_tensors_that_cannot_be_stored_are_refused(backend, store: CheckpointStore,
                                                   tensors: object, message: str) -> None:
    before = backend.listing()
    with pytest.raises(StoreInputError, match=message) as info:
        store.save("m", tensors, {})
    assert info.value.field == "tensors"
    assert store.list_models() == [] and backend.listing() == before


def test_metadata_that_is_not_json_is_refused(store: CheckpointStore) -> None:
    with pytest.raises(StoreInputError) as info:
        store.save("m", random_tensors(0), {"when": object()})
    assert info.value.field == "metadata"
    with pytest.raises(StoreInputError):
        store.save("m", random_tensors(0), ["not", "a", "dict"])
    with pytest.raises(StoreInputError) as info:
        store.save("m", random_tensors(0), {}, TrainingState({}, {"rng": np.zeros(2)}))
    assert info.value.field == "training_state.meta"
    assert store.list_models() == []


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a")), LocalStore)
    by_url = open_store(f"file://{tmp_path / 'b'}")
    assert isinstance(by_url, LocalStore) and by_url.root == tmp_path / "b"
    with pytest.raises(StoreError, match="unknown scheme 'ftp'"):
        open_store("ftp://host/path")
    with pytest.raises(StoreError, match="not a valid bucket name"):
        open_store("s3://Bad_Bucket/prefix")
