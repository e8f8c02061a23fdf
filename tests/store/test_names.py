"""Model and label names: anything that could escape the store, hide, or clash is refused."""

from __future__ import annotations

import pytest

from charlstm.service.store import CheckpointStore, InvalidName, validate_label, validate_name

from .sample_data import random_tensors

BAD_NAMES = [
    "",
    "..",
    "a..b",
    "../escape",
    "..\\escape",
    "a/b",
    "/abs",
    "a\\b",
    "a\x00b",
    ".hidden",
    ".",
    "-dash-first",
    "_underscore-first",
    "x" * 65,
    "with space",
    "colon:name",
    "caf\u00e9",          # non-ASCII letter
    "\uff41",            # fullwidth 'a'
    "name\n",
]
GOOD_NAMES = ["a", "Z", "0", "shakespeare", "Tiny-Shakespeare_v2.1", "x" * 64, "1.2.3", "a-"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert info.value.field == "model"
    assert "[A-Za-z0-9][A-Za-z0-9._-]{0,63}" in str(info.value)
    with pytest.raises(InvalidName) as info:
        validate_name(name, "label")
    assert info.value.field == "label"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name
    assert validate_label(name) == name


def test_over_64_characters_says_so() -> None:
    with pytest.raises(InvalidName, match="65 characters"):
        validate_name("x" * 65)


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_store_refuses_bad_names_without_touching_the_disk(backend, store: CheckpointStore,
                                                                name: str) -> None:
    before = backend.listing()
    for call in (lambda: store.save(name, random_tensors(0), {}),
                 lambda: store.load(name),
                 lambda: store.resolve(name),
                 lambda: store.list_versions(name),
                 lambda: store.labels(name),
                 lambda: store.delete(name),
                 lambda: store.set_label(name, "stable", 1),
                 lambda: store.apply_retention(name, 3)):
        with pytest.raises(InvalidName):
            call()
    assert backend.listing() == before


@pytest.mark.parametrize("label", BAD_NAMES + ["latest", "LATEST", "Latest"])
def test_bad_labels_are_refused(store: CheckpointStore, label: str) -> None:
    store.save("m", random_tensors(0), {})
    with pytest.raises(InvalidName) as info:
        store.set_label("m", label, 1)
    assert info.value.field == "label"
    assert store.labels("m") == {}


def test_latest_is_reserved(store: CheckpointStore) -> None:
    store.save("m", random_tensors(0), {})
    with pytest.raises(InvalidName, match="reserved"):
        store.set_label("m", "latest", 1)
    with pytest.raises(InvalidName, match="reserved"):
        store.remove_label("m", "latest")


def test_a_new_model_differing_only_in_case_is_refused(store: CheckpointStore) -> None:
    store.save("Shakespeare", random_tensors(0), {})
    for clash in ("shakespeare", "SHAKESPEARE", "shakeSpeare"):
        with pytest.raises(InvalidName, match="differs only in letter case") as info:
            store.save(clash, random_tensors(1), {})
        assert info.value.field == "model"
    assert store.list_models() == ["Shakespeare"]
    assert store.save("Shakespeare", random_tensors(1), {}) == 2  # the existing name is fine
    store.delete("Shakespeare")
    assert store.save("shakespeare", random_tensors(2), {}) == 1  # free again once deleted


def test_a_new_label_differing_only_in_case_is_refused(store: CheckpointStore) -> None:
    store.save("m", random_tensors(0), {})
    store.save("m", random_tensors(1), {})
    store.set_label("m", "Stable", 1)
    with pytest.raises(InvalidName, match="differs only in letter case"):
        store.set_label("m", "stable", 2)
    store.set_label("m", "Stable", 2)  # moving the existing label is fine
    assert store.labels("m") == {"Stable": 2}
