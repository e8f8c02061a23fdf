"""CorpusStore on its own: content addressing, incremental UTF-8 checks, limits, atomicity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from charlstm.service import errors
from charlstm.service.corpora import CorpusStore


@pytest.fixture
def corpora(tmp_path: Path) -> CorpusStore:
    return CorpusStore(tmp_path / "corpora", max_bytes=1000)


def test_stores_by_sha256_and_deduplicates(corpora: CorpusStore) -> None:
    text = "héllo wörld\n"
    first = corpora.put_text(text)
    assert first.id == hashlib.sha256(text.encode()).hexdigest()
    assert (first.size_bytes, first.characters, first.distinct_characters) == (
        len(text.encode()), len(text), len(set(text)))
    assert not first.already_existed
    second = corpora.put_chunks([text.encode()[:3], text.encode()[3:]])
    assert second.id == first.id and second.already_existed
    assert corpora.get_text(first.id) == text
    assert corpora.info(first.id) == second
    assert sorted(p.name for p in corpora.root.iterdir()) == [f"{first.id}.json", f"{first.id}.txt"]


def test_a_character_split_across_chunks_is_fine(corpora: CorpusStore) -> None:
    data = "aé€😀b".encode()
    chunks = [data[i : i + 1] for i in range(len(data))]  # every multi-byte char split
    info = corpora.put_chunks(chunks)
    assert info.characters == 5 and corpora.get_text(info.id) == "aé€😀b"


@pytest.mark.parametrize("chunks", [[b"ok", b"\xff"], [b"ab\xc3"], [b"\xe2\x82", b"x"]])
def test_invalid_utf8_names_the_field_and_leaves_nothing(corpora: CorpusStore, chunks) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        corpora.put_chunks(chunks)
    assert caught.value.field == "data" and "UTF-8" in caught.value.message
    assert list(corpora.root.iterdir()) == []


def test_empty_and_oversized_corpora_are_refused(corpora: CorpusStore) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        corpora.put_chunks([b"", b""])
    assert caught.value.field == "data"
    pulled = []

    def chunks():
        for i in range(100):
            pulled.append(i)
            yield b"x" * 100

    with pytest.raises(errors.ResourceExhausted, match="1000 bytes"):
        corpora.put_chunks(chunks())
    assert len(pulled) == 11  # reading stopped at the limit
    assert list(corpora.root.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "A" * 64, "g" * 64, "a" * 63])
def test_malformed_ids_are_refused_before_the_filesystem(corpora: CorpusStore, bad: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        corpora.get_text(bad)


def test_unknown_id_is_not_found(corpora: CorpusStore) -> None:
    with pytest.raises(errors.NotFound):
        corpora.info("0" * 64)


def test_counts_survive_a_lost_sidecar(corpora: CorpusStore) -> None:
    info = corpora.put_text("abcabc")
    (corpora.root / f"{info.id}.json").unlink()
    again = corpora.info(info.id)
    assert (again.characters, again.distinct_characters) == (6, 3)
