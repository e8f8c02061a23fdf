"""The records API of :class:`LocalStore`: small keyed blobs under ``<root>/records/``.

Layout::

    records/<segment>/.../<last segment>@   one file per record ('@' cannot occur in a key, so a
                                            key "a" and a key "a/b" never collide as file and
                                            folder)
    records/.tmp/<pid>-<random>-<host>      records being written (segments never start with '.')
    records/.locks/<NN>.lock                flock stripes, chosen by a hash of the key

A write puts the whole content in a fresh file under ``.tmp``, fsyncs it, then, holding the key's
stripe lock, checks the condition and renames the file over the record: readers (who take no
lock) see the old or the new content, and two conditional writers of one key are serialised by
the lock, so exactly one of them wins. The etag is the content's sha256, as an S3 ETag is its MD5.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from . import files
from .base import Record
from .errors import RecordConflict, StoreError, StoreWriteError
from .names import validate_record_key, validate_record_prefix
from .records import check_etag, checked_write

RECORD_SUFFIX = "@"
LOCK_STRIPES = 64
#: Temporary files whose writer cannot be proven dead are removed only after this long.
STALE_TEMP_SECONDS = 6 * 3600.0


class LocalRecords:
    """Records in a directory; created on the first write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._scratch = root / ".tmp"
        self._locks = root / ".locks"
        self._remove_abandoned_temporaries()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/")).with_name(key.rsplit("/", 1)[-1] + RECORD_SUFFIX)

    def _lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        stripe = int.from_bytes(hashlib.sha256(key.encode("ascii")).digest()[:4], "big") % LOCK_STRIPES
        return files.locked(self._locks / f"{stripe:02d}.lock")

    def _remove_abandoned_temporaries(self) -> None:
        now = time.time()
        try:
            entries = list(os.scandir(self._scratch))
        except OSError:
            return  # no records written yet
        for entry in entries:
            with contextlib.suppress(OSError):
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if files.temp_entry_is_abandoned(entry.name, age, STALE_TEMP_SECONDS):
                    os.unlink(entry.path)

    def _read(self, key: str) -> Record | None:
        try:
            data = files.read_file(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read record {key!r}: {exc}") from exc
        return Record(data=data, etag=hashlib.sha256(data).hexdigest())

    def get(self, key: str) -> Record | None:
        validate_record_key(key)
        return self._read(key)

    def put(self, key: str, data: bytes, *, if_match: str | None, if_absent: bool) -> str:
        data = checked_write(key, data, if_match, if_absent)
        path = self._path(key)
        temporary = self._scratch / files.temp_name()
        try:
            for folder in (self._scratch, self._locks, path.parent):
                folder.mkdir(parents=True, exist_ok=True)
            files.write_new_file(temporary, data)  # the bulk of the work, outside the lock
            with self._lock(key):
                current = self._read(key)
                _check_condition(key, current, if_match, if_absent)
                os.replace(temporary, path)
            files.fsync_dir(path.parent)
        except OSError as exc:
            raise StoreWriteError(f"could not write record {key!r}: {exc} (nothing was "
                                  "changed)") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return hashlib.sha256(data).hexdigest()

    def delete(self, key: str, *, if_match: str | None) -> None:
        validate_record_key(key)
        check_etag(if_match)
        path = self._path(key)
        if not self._locks.is_dir():
            if if_match is not None:
                raise RecordConflict(f"record {key!r} does not exist (expected etag {if_match})")
            return  # nothing was ever written
        try:
            with self._lock(key):
                if if_match is not None:
                    _check_condition(key, self._read(key), if_match, False)
                try:
                    os.unlink(path)
                except (FileNotFoundError, NotADirectoryError):
                    return
            files.fsync_dir(path.parent)
        except OSError as exc:
            raise StoreWriteError(f"could not delete record {key!r}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        validate_record_prefix(prefix)
        # Walk only the folder the prefix's complete segments name.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root.joinpath(*folder.split("/")) if folder else self.root
        keys = []
        for directory, subdirectories, names in os.walk(top):
            if directory == str(self.root):  # the store's own folders, not records
                subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            relative = Path(directory).relative_to(self.root).as_posix()
            for name in names:
                if name.endswith(RECORD_SUFFIX):
                    key = name[: -len(RECORD_SUFFIX)]
                    key = key if relative == "." else f"{relative}/{key}"
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)


def _check_condition(key: str, current: Record | None, if_match: str | None,
                     if_absent: bool) -> None:
    if if_absent and current is not None:
        raise RecordConflict(f"record {key!r} already exists")
    if if_match is not None:
        if current is None:
            raise RecordConflict(f"record {key!r} does not exist (expected etag {if_match})")
        if current.etag != if_match:
            raise RecordConflict(f"record {key!r} changed: its etag is {current.etag}, "
                                 f"not {if_match}")
