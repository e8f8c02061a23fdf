"""Training corpora stored by content: ``<root>/<sha256>.txt``.

A corpus is UTF-8 text named by the sha256 of its bytes, so uploading the same text twice
stores it once. Uploads arrive in chunks (``UploadCorpus``) or as one string (inline text of
``Train``); both go through :meth:`CorpusStore.put_chunks`, which validates UTF-8 incrementally
(a character split across two chunks is fine), enforces the size limit while reading, and
commits with temp file + fsync + rename so a crash never leaves a half-written corpus under
its final name. A small JSON sidecar (``<sha256>.json``) keeps the character counts so that
``info`` does not have to re-read a large corpus.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import errors
from .logs import log_event

log = logging.getLogger(__name__)

_CORPUS_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CorpusInfo:
    """What is known about a stored corpus (the ``Corpus`` message)."""

    id: str  # sha256 of the UTF-8 bytes, lower-case hex
    size_bytes: int
    characters: int  # Unicode code points
    distinct_characters: int
    already_existed: bool = False


def check_corpus_id(corpus_id: str, field: str = "corpus_id") -> str:
    """Return ``corpus_id`` if it has the form of a corpus id, else raise InvalidArgument.

    Checked before any path is built from it, so an id can never name a file elsewhere.
    """
    if not isinstance(corpus_id, str) or not _CORPUS_ID.fullmatch(corpus_id):
        raise errors.InvalidArgument(
            f"{field} must be 64 lower-case hex characters (the sha256 returned by "
            f"UploadCorpus) (got {str(corpus_id)[:80]!r})",
            field=field,
        )
    return corpus_id


class CorpusStore:
    """Content-addressed UTF-8 corpora in one directory, each at most ``max_bytes`` long."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_partial_uploads()

    # -- writing --------------------------------------------------------------------------

    def put_chunks(self, chunks: Iterable[bytes], *, field: str = "data") -> CorpusInfo:
        """Store the concatenation of ``chunks`` and describe it.

        Raises InvalidArgument (naming ``field``) for invalid UTF-8 or an empty corpus and
        ResourceExhausted once more than ``max_bytes`` have arrived (reading stops there).
        """
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        sha = hashlib.sha256()
        size = 0
        characters = 0
        distinct: set[str] = set()
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise errors.ResourceExhausted(
                            f"corpus is larger than the server's limit of {self.max_bytes} bytes"
                        )
                    text = self._decode(decoder, chunk, size - len(chunk), final=False, field=field)
                    characters += len(text)
                    distinct.update(text)
                    sha.update(chunk)
                    out.write(chunk)
                text = self._decode(decoder, b"", size, final=True, field=field)
                characters += len(text)
                distinct.update(text)
                if size == 0:
                    raise errors.InvalidArgument(f"{field} must not be empty (got an empty corpus)", field=field)
                out.flush()
                os.fsync(out.fileno())
            corpus_id = sha.hexdigest()
            info = CorpusInfo(corpus_id, size, characters, len(distinct))
            final = self._text_path(corpus_id)
            if final.exists():
                return CorpusInfo(**{**info.__dict__, "already_existed": True})
            os.replace(tmp, final)
            self._write_sidecar(info)
            _fsync_dir(self.root)
            log_event(log, "corpus_stored", corpus_id=corpus_id, size_bytes=size,
                      characters=characters)
            return info
        finally:
            tmp.unlink(missing_ok=True)

    def put_text(self, text: str, *, field: str = "text") -> CorpusInfo:
        """Store ``text`` (e.g. the inline corpus of a Train request) and describe it."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
            raise errors.InvalidArgument(
                f"{field} must be valid UTF-8 text (character {exc.start} is a lone surrogate)",
                field=field,
            ) from None
        # Chunked so that a large inline text is written without a second full copy.
        step = 1 << 20
        return self.put_chunks((data[i : i + step] for i in range(0, len(data), step)), field=field)

    # -- reading --------------------------------------------------------------------------

    def exists(self, corpus_id: str) -> bool:
        """True if a corpus with this id is stored (InvalidArgument for a malformed id)."""
        return self._text_path(check_corpus_id(corpus_id)).is_file()

    def path(self, corpus_id: str) -> Path:
        """The file holding the corpus; NotFound if there is none."""
        path = self._text_path(check_corpus_id(corpus_id))
        if not path.is_file():
            raise errors.NotFound(f"corpus {corpus_id} not found (upload it with UploadCorpus)", field="corpus_id")
        return path

    def get_text(self, corpus_id: str) -> str:
        """The corpus as a str; NotFound if it is not stored."""
        return self.path(corpus_id).read_text(encoding="utf-8")

    def info(self, corpus_id: str) -> CorpusInfo:
        """Describe a stored corpus (``already_existed`` is True); NotFound if it is not stored."""
        path = self.path(corpus_id)
        try:
            d = json.loads(self._sidecar_path(corpus_id).read_text())
            return CorpusInfo(corpus_id, int(d["size_bytes"]), int(d["characters"]),
                              int(d["distinct_characters"]), already_existed=True)
        except (OSError, ValueError, KeyError, TypeError):
            # No sidecar (crash between rename and sidecar) or an unreadable one: recount.
            text = path.read_text(encoding="utf-8")
            info = CorpusInfo(corpus_id, path.stat().st_size, len(text), len(set(text)))
            self._write_sidecar(info)
            return CorpusInfo(**{**info.__dict__, "already_existed": True})

    # -- internals ------------------------------------------------------------------------

    def _text_path(self, corpus_id: str) -> Path:
        return self.root / f"{corpus_id}.txt"

    def _sidecar_path(self, corpus_id: str) -> Path:
        return self.root / f"{corpus_id}.json"

    @staticmethod
    def _decode(decoder, chunk: bytes, offset: int, *, final: bool, field: str) -> str:
        """Decode the next chunk; ``offset`` is where it starts in the whole corpus."""
        pending = len(decoder.getstate()[0])  # bytes of a character left over from the last chunk
        try:
            return decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            # exc.start counts from the pending bytes, which precede `offset`.
            where = max(offset - pending + exc.start, 0)
            raise errors.InvalidArgument(
                f"{field} must be valid UTF-8 ({exc.reason} at byte {where})", field=field
            ) from None

    def _write_sidecar(self, info: CorpusInfo) -> None:
        doc = {"size_bytes": info.size_bytes, "characters": info.characters,
               "distinct_characters": info.distinct_characters}
        try:
            atomic_write_bytes(self._sidecar_path(info.id), json.dumps(doc).encode())
        except OSError:  # only a cache: the counts can be recomputed from the text
            log.warning("could not write corpus sidecar", exc_info=True)

    def _remove_partial_uploads(self) -> None:
        # Left by a crash mid-upload. Only old ones: another process may be uploading now.
        cutoff = time.time() - 3600
        for leftover in self.root.glob(".upload-*.tmp"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix:
    temp file in the same directory, fsync, rename, fsync the directory."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; harmless where directories cannot be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
