"""Labels, deletion and retention."""

from __future__ import annotations

import json
import math

import pytest

from charlstm.service.store import (
    CheckpointStore,
    LabelInUse,
    LabelNotFound,
    ModelNotFound,
    StoreInputError,
    VersionNotFound,
)

from .backends import version_file
from .conftest import assert_same_tensors
from .sample_data import random_tensors, sample_metadata

MODEL = "m"


def save_versions(store: CheckpointStore, count: int, val_losses: list | None = None) -> None:
    for i in range(count):
        loss = val_losses[i] if val_losses else None
        store.save(MODEL, random_tensors(i + 1), sample_metadata(step=i + 1, val_loss=loss))


def latest_pointer(backend) -> int | None:
    path = f"models/{MODEL}/latest.json"
    return json.loads(backend.read(path))["version"] if backend.exists(path) else None


def test_labels_point_only_at_complete_versions(store: CheckpointStore) -> None:
    save_versions(store, 2)
    with pytest.raises(VersionNotFound):
        store.set_label(MODEL, "stable", 3)
    with pytest.raises(ModelNotFound):
        store.set_label("other", "stable", 1)
    with pytest.raises(StoreInputError, match="version must be an integer"):
        store.set_label(MODEL, "stable", "1")  # type: ignore[arg-type]
    assert store.labels(MODEL) == {}


def test_labels_move_and_are_removed(store: CheckpointStore) -> None:
    save_versions(store, 3)
    store.set_label(MODEL, "stable", 1)
    store.set_label(MODEL, "canary", 3)
    assert store.labels(MODEL) == {"stable": 1, "canary": 3}
    store.set_label(MODEL, "stable", 2)
    assert store.resolve(MODEL, "stable") == 2
    assert_same_tensors(store.load(MODEL, "stable").tensors, random_tensors(2))
    store.remove_label(MODEL, "stable")
    assert store.labels(MODEL) == {"canary": 3}
    with pytest.raises(LabelNotFound):
        store.remove_label(MODEL, "stable")
    with pytest.raises(LabelNotFound):
        store.load(MODEL, "stable")


def test_a_labelled_version_cannot_be_deleted(store: CheckpointStore) -> None:
    save_versions(store, 2)
    store.set_label(MODEL, "stable", 1)
    with pytest.raises(LabelInUse, match="stable"):
        store.delete(MODEL, 1)
    assert_same_tensors(store.load(MODEL, 1).tensors, random_tensors(1))
    store.remove_label(MODEL, "stable")
    assert store.delete(MODEL, 1) == [1]


def test_deleting_a_middle_version(backend, store: CheckpointStore) -> None:
    save_versions(store, 3)
    assert store.delete(MODEL, 2) == [2]
    assert [i.version for i in store.list_versions(MODEL)] == [1, 3]
    with pytest.raises(VersionNotFound):
        store.load(MODEL, 2)
    with pytest.raises(VersionNotFound):
        store.delete(MODEL, 2)
    assert store.resolve(MODEL) == 3
    assert not backend.exists(f"models/{MODEL}/versions/00000002")
    assert backend.leftovers() == []


def test_deleting_the_latest_version_moves_latest_back_and_never_reuses_its_number(
        backend, store: CheckpointStore) -> None:
    save_versions(store, 3)
    assert store.delete(MODEL, 3) == [3]
    assert store.resolve(MODEL) == 2 and latest_pointer(backend) == 2
    assert_same_tensors(store.load(MODEL).tensors, random_tensors(2))
    # A client that remembers "version 3" must never get different weights under that number.
    assert store.save(MODEL, random_tensors(9), sample_metadata()) == 4
    assert backend.open().save(MODEL, random_tensors(10), sample_metadata()) == 5
    assert [i.version for i in store.list_versions(MODEL)] == [1, 2, 4, 5]


def test_deleting_the_last_version_deletes_the_model(backend, store: CheckpointStore) -> None:
    save_versions(store, 1)
    assert store.delete(MODEL, 1) == [1]
    assert store.list_models() == []
    with pytest.raises(ModelNotFound):
        store.load(MODEL)
    assert not backend.exists(f"models/{MODEL}")


def test_deleting_a_whole_model(backend, store: CheckpointStore) -> None:
    save_versions(store, 3)
    store.save("other", random_tensors(0), {})
    store.set_label(MODEL, "stable", 2)
    assert store.delete(MODEL) == [1, 2, 3]
    assert store.list_models() == ["other"]
    for call in (lambda: store.load(MODEL), lambda: store.labels(MODEL),
                 lambda: store.delete(MODEL), lambda: store.list_versions(MODEL)):
        with pytest.raises(ModelNotFound):
            call()
    assert not backend.exists(f"models/{MODEL}")
    assert backend.leftovers() == []
    assert store.save(MODEL, random_tensors(5), {}) == 1  # a new model of the same name
    assert store.labels(MODEL) == {}
    assert_same_tensors(store.load("other").tensors, random_tensors(0))


def test_a_damaged_version_can_still_be_deleted(backend, store: CheckpointStore) -> None:
    save_versions(store, 2)
    backend.write(version_file(MODEL, 2, "metadata.json"), b"{}")
    assert store.delete(MODEL, 2) == [2]
    assert [i.version for i in store.list_versions(MODEL)] == [1]


def test_retention_keeps_last_n_labelled_and_best(store: CheckpointStore) -> None:
    #            v1   v2   v3   v4   v5   v6   v7   v8
    losses = [3.0, 2.0, 0.5, 0.9, 1.0, None, 1.2, 1.1]
    save_versions(store, 8, losses)
    store.set_label(MODEL, "stable", 2)
    deleted = store.apply_retention(MODEL, keep_last=2)
    assert deleted == [1, 4, 5, 6]
    # kept: 7 and 8 (newest two), 2 (labelled), 3 (lowest validation loss)
    assert [i.version for i in store.list_versions(MODEL)] == [2, 3, 7, 8]
    for version, seed in ((2, 2), (3, 3), (7, 7), (8, 8)):
        assert_same_tensors(store.load(MODEL, version).tensors, random_tensors(seed))
    assert store.apply_retention(MODEL, keep_last=2) == []  # idempotent


def test_retention_ignores_missing_and_non_finite_losses(store: CheckpointStore) -> None:
    save_versions(store, 5, [None, math.nan, 2.0, math.inf, 3.0])
    assert store.apply_retention(MODEL, keep_last=1) == [1, 2, 4]
    assert [i.version for i in store.list_versions(MODEL)] == [3, 5]


def test_retention_keeping_more_than_exist_deletes_nothing(store: CheckpointStore) -> None:
    save_versions(store, 3)
    assert store.apply_retention(MODEL, keep_last=10) == []
    assert len(store.list_versions(MODEL)) == 3


@pytest.mark.parametrize("keep_last", [0, -1, 1.5, True, "2"])
def test_retention_needs_at_least_one_version_kept(store: CheckpointStore, keep_last: object) -> None:
    save_versions(store, 2)
    with pytest.raises(StoreInputError, match="keep_last must be an integer >= 1") as info:
        store.apply_retention(MODEL, keep_last)  # type: ignore[arg-type]
    assert info.value.field == "keep_last"
    assert len(store.list_versions(MODEL)) == 2


def test_list_versions_reports_sizes_and_labels(backend, store: CheckpointStore) -> None:
    save_versions(store, 2)
    store.set_label(MODEL, "b", 2)
    store.set_label(MODEL, "a", 2)
    infos = store.list_versions(MODEL)
    assert infos[1].labels == ["a", "b"]
    folder = version_file(MODEL, 1, "")
    assert infos[0].size_bytes == sum(len(backend.read(path)) for path in backend.listing()
                                      if path.startswith(folder))
