"""The checkpoint store on a local directory (the server's ``--store DIR``).

Layout under the root (the store owns ``<root>/models/`` and nothing else in ``<root>``)::

    models/.tmp/<pid>-<random>-<host>      versions being written, pointer files being replaced
    models/.locks/<name in lower case>.lock  flock per model (shared by names differing in case)
    models/<name>/versions/<NNNNNNNN>/...  see base.py
    models/<name>/latest.json
    models/<name>/labels/<label>.json
    records/...                            the records API (see local_records.py); created on
                                           the first write

A save writes and fsyncs every file of the version into a fresh folder under ``.tmp``, then,
holding the model's lock, writes the manifest and renames the folder onto the next number; a
rename onto an existing folder fails, so a writer that does not share the lock (another host on a
network filesystem) cannot overwrite a version either: it takes the next number. ``latest`` moves
after the rename, under the same lock, and only forward. Opening a store removes what crashed
writers left in ``.tmp`` (only entries whose process is gone, or very old ones), finishes
interrupted deletions and repairs ``latest``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import codec, files
from .base import (
    CheckpointStore,
    Record,
    TrainingState,
    VersionInfo,
    check_version_argument,
)
from .codec import METADATA_FILE
from .errors import (
    CorruptCheckpoint,
    InvalidName,
    LabelInUse,
    LabelNotFound,
    ModelNotFound,
    StoreError,
    StoreWriteError,
    VersionNotFound,
)
from .local_records import LocalRecords
from .names import check_no_case_clash, validate_label, validate_name

log = logging.getLogger(__name__)

TOMBSTONE_FILE = "deleted.json"
#: Temporary entries whose writer cannot be proven dead are removed only after this long.
STALE_TEMP_SECONDS = 6 * 3600.0
#: Version numbers tried by one save before giving up (each miss means another writer won).
MAX_COMMIT_ATTEMPTS = 1000
#: Version numbers are int64 on the wire; anything larger cannot name a version.
MAX_VERSION = 2**63 - 1


def _is_valid_name(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidName:
        return False
    return True


class LocalStore(CheckpointStore):
    """Checkpoints in a directory on a local (POSIX) filesystem."""

    def __init__(self, root: str | os.PathLike) -> None:
        """Open the store at ``root``, creating it if needed, and clean up after crashed writers."""
        self.root = Path(os.fspath(root)).expanduser().absolute()
        self._models = self.root / "models"
        self._models_str = str(self._models)
        self._scratch = self._models / ".tmp"
        self._locks = self._models / ".locks"
        try:
            for folder in (self._models, self._scratch, self._locks):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(f"cannot create the checkpoint store at {self.root}: {exc}") from exc
        self._recover()
        self._records = LocalRecords(self.root / "records")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # --- Paths ------------------------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        return self._models / model

    def _versions_dir(self, model: str) -> Path:
        return self._models / model / "versions"

    def _version_dir(self, model: str, version: int) -> Path:
        return self._versions_dir(model) / f"{version:08d}"

    def _latest_file(self, model: str) -> Path:
        return self._models / model / "latest.json"

    def _labels_dir(self, model: str) -> Path:
        return self._models / model / "labels"

    def _lock(self, model: str) -> contextlib.AbstractContextManager[None]:
        # Lower case: "Foo" and "foo" share one lock, which makes the case-clash check race-free.
        return files.locked(self._locks / f"{model.lower()}.lock")

    def version_path(self, model: str, ref: int | str | None = None) -> Path:
        """The folder holding a complete version (local backend only; for tools and tests)."""
        return self._version_dir(model, self.resolve(model, ref))

    #: A folder changed more recently than this is not trusted by :meth:`ref_fingerprint`:
    #: file times are kept at a coarse clock tick, so two changes close together can leave
    #: the same time, and only a change older than the margin is sure to be told apart.
    FINGERPRINT_MARGIN_NS = 2_000_000_000

    def ref_fingerprint(self, model: str, version: int) -> tuple | None:
        """What changes whenever ``latest`` or a label of ``model`` may resolve differently
        than to ``version``: the identity and modification time of the model's folder (a new
        latest.json), its versions and labels folders (a version added or removed, a label
        set) and ``version``'s folder (a tombstone written). A few ``stat`` calls, against a
        listing and a manifest read for a resolution. None when a folder is missing or changed
        too recently to be told apart from the next change (see FINGERPRINT_MARGIN_NS)."""
        # Plain strings, not Paths (this runs for Predict calls, and pathlib's joins showed in
        # their profile): the same folders as _model_dir, _versions_dir, _labels_dir and
        # _version_dir.
        base = os.path.join(self._models_str, model)
        folders = (base, os.path.join(base, "versions"), os.path.join(base, "labels"),
                   os.path.join(base, "versions", f"{version:08d}"))
        marks: list[tuple[int, int] | None] = []
        for i, folder in enumerate(folders):
            try:
                st = os.stat(folder)
            except FileNotFoundError:
                if i == 2:  # a model without labels has no labels folder
                    marks.append(None)
                    continue
                return None
            except OSError:
                return None
            marks.append((st.st_ino, st.st_mtime_ns))
        newest = max(m[1] for m in marks if m is not None)  # type: ignore[index]
        if time.time_ns() - newest < self.FINGERPRINT_MARGIN_NS:
            return None
        return tuple(marks)

    # --- Reading ----------------------------------------------------------------------------------

    def _model_names_on_disk(self) -> list[str]:
        try:
            return [e for e in os.listdir(self._models) if _is_valid_name(e)]
        except FileNotFoundError:
            return []

    def _version_numbers(self, model: str) -> list[int]:
        """Every numbered folder of the model, complete or not, ascending."""
        try:
            entries = os.listdir(self._versions_dir(model))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(e) for e in entries
                      if e.isascii() and e.isdigit() and e == f"{int(e):08d}")

    def _is_tombstone(self, model: str, version: int) -> bool:
        return os.path.lexists(self._version_dir(model, version) / TOMBSTONE_FILE)

    def _manifest(self, model: str, version: int, *, strict: bool = False) -> dict | None:
        """The intact manifest of a version, or None if the version does not exist.

        A folder that exists without an intact manifest is not a version: ignored (with a warning)
        when scanning, but a CorruptCheckpoint when asked for by number (``strict``).
        """
        if not 1 <= version <= MAX_VERSION:
            return None
        folder = self._version_dir(model, version)
        try:
            if not folder.is_dir() or self._is_tombstone(model, version):
                return None
            raw = files.read_file(folder / METADATA_FILE)
        except FileNotFoundError:
            if strict and folder.is_dir() and not self._is_tombstone(model, version):
                raise CorruptCheckpoint(model, version, METADATA_FILE, "file is missing") from None
            return None
        except OSError as exc:
            if strict:
                raise StoreError(f"cannot read {METADATA_FILE} of model {model!r} version "
                                 f"{version}: {exc}") from exc
            return None
        try:
            return codec.parse_manifest(model, version, raw)
        except CorruptCheckpoint as exc:
            if strict:
                raise
            log.warning("ignoring a damaged version: %s", exc)
            return None

    def _complete_versions(self, model: str) -> list[tuple[int, dict]]:
        found = ((v, self._manifest(model, v)) for v in self._version_numbers(model))
        return [(v, m) for v, m in found if m is not None]

    def _highest_complete(self, model: str) -> tuple[int, dict] | None:
        for version in reversed(self._version_numbers(model)):
            manifest = self._manifest(model, version)
            if manifest is not None:
                return version, manifest
        return None

    def _read_pointer(self, model: str, path: Path) -> int | None:
        """The version a pointer file names; None if it does not exist."""
        try:
            raw = files.read_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path.name} of model {model!r}: {exc}") from exc
        try:
            return codec.parse_pointer(raw)
        except ValueError as exc:
            shown = path.relative_to(self._model_dir(model)).as_posix()
            raise CorruptCheckpoint(model, None, shown, f"not a valid pointer ({exc})") from None

    def _label_target(self, model: str, label: str) -> int | None:
        return self._read_pointer(model, self._labels_dir(model) / f"{label}.json")

    def _labels(self, model: str) -> dict[str, int]:
        try:
            entries = sorted(os.listdir(self._labels_dir(model)))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found: dict[str, int] = {}
        for entry in entries:
            label = entry[: -len(".json")]
            if not entry.endswith(".json") or not _is_valid_name(label):
                continue
            try:
                version = self._read_pointer(model, self._labels_dir(model) / entry)
            except StoreError as exc:
                log.warning("ignoring label %r: %s", label, exc)
                continue
            if version is not None:
                found[label] = version
        return found

    def _read_version_file(self, model: str, version: int, name: str, manifest: dict) -> bytes:
        """A version's file, checked against the manifest's size and sha256."""
        try:
            data = files.read_file(self._version_dir(model, version) / name)
        except FileNotFoundError:
            if self._manifest(model, version) is None:  # deleted while we were reading it
                raise VersionNotFound(f"version {version} of model {model!r} was deleted") from None
            raise CorruptCheckpoint(model, version, name, "file is missing") from None
        except OSError as exc:
            raise StoreError(f"cannot read {name} of model {model!r} version {version}: {exc}") from exc
        codec.check_file(model, version, name, data, manifest)
        return data

    def list_models(self) -> list[str]:
        return sorted(m for m in self._model_names_on_disk() if self._highest_complete(m))

    def list_versions(self, model: str) -> list[VersionInfo]:
        validate_name(model)
        complete = self._complete_versions(model)
        if not complete:
            raise ModelNotFound(f"no model named {model!r} in the store")
        labels_of: dict[int, list[str]] = {}
        for label, version in self._labels(model).items():
            labels_of.setdefault(version, []).append(label)
        infos = []
        for version, manifest in complete:
            try:
                manifest_size = os.stat(self._version_dir(model, version) / METADATA_FILE).st_size
            except OSError:
                manifest_size = 0
            infos.append(VersionInfo(
                version=version,
                created=float(manifest.get("created", 0.0)),
                size_bytes=manifest_size + sum(e["size"] for e in manifest["files"].values()),
                metadata=manifest,
                labels=sorted(labels_of.get(version, [])),
                resumable=codec.is_resumable(manifest),
            ))
        return infos

    # --- Writing ----------------------------------------------------------------------------------

    def save(self, model: str, tensors: dict[str, np.ndarray], metadata: dict,
             training_state: TrainingState | None = None) -> int:
        validate_name(model)
        encoded = codec.encode_version(model, tensors, metadata, training_state)
        staging = self._scratch / files.temp_name()
        committed = False
        try:
            os.mkdir(staging)
            for name, data in encoded.files.items():  # the bulk of the work, outside the lock
                files.write_new_file(staging / name, data)
            with self._lock(model):
                self._create_model_if_new(model)
                version = self._commit(model, staging, encoded)
                committed = True
                self._advance_latest(model, version)
            return version
        except OSError as exc:
            if committed:  # the version is complete and durable; only tidying up failed
                log.warning("model %r version %d is saved; a later step failed: %s",
                            model, version, exc)
                return version
            raise StoreWriteError(f"could not save a version of model {model!r}: {exc} "
                                  "(nothing was stored)") from exc
        finally:
            if not committed:
                files.remove_tree(staging)

    def _create_model_if_new(self, model: str) -> None:
        """Create the model's folders; refuses a name that case-folds onto an existing model.
        Called under the model's lock, which all case variants of the name share."""
        entries = os.listdir(self._models)
        if model not in entries:
            check_no_case_clash(model, (e for e in entries if not e.startswith(".")), "model")
            os.mkdir(self._model_dir(model))
            files.fsync_dir(self._models)
        if not self._versions_dir(model).is_dir():
            os.mkdir(self._versions_dir(model))
            files.fsync_dir(self._model_dir(model))

    def _commit(self, model: str, staging: Path, encoded: codec.EncodedVersion) -> int:
        """Write the manifest into ``staging`` and rename it onto the next free version number."""
        version = max(self._version_numbers(model), default=0) + 1
        for _ in range(MAX_COMMIT_ATTEMPTS):
            # The manifest names its own version, so it is (re)written for each number tried.
            files.replace_file(staging / METADATA_FILE, encoded.manifest_bytes(version), self._scratch)
            target = self._version_dir(model, version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if not files.is_collision(exc):
                    raise
                # A writer outside our lock took this number: take the next free one.
                version = max(max(self._version_numbers(model), default=0), version) + 1
                continue
            try:
                files.fsync_dir(self._versions_dir(model))
            except OSError:
                # Not known to be durable: take it back rather than report a version that a crash
                # could lose.
                with contextlib.suppress(OSError):
                    os.rename(target, staging)
                raise
            with contextlib.suppress(OSError):
                files.fsync_dir(self._scratch)
            return version
        raise OSError(f"no free version number after {MAX_COMMIT_ATTEMPTS} attempts")

    def _advance_latest(self, model: str, version: int) -> None:
        """Move ``latest`` forward to ``version`` (never back). Called under the model's lock.

        The version is already committed, so a failure here is only logged: resolution uses the
        highest complete version, and the next open repairs the pointer.
        """
        try:
            try:
                current = self._read_pointer(model, self._latest_file(model))
            except CorruptCheckpoint:
                current = None
            if current is None or current < version:
                files.replace_file(self._latest_file(model), codec.pointer_bytes(version),
                                   self._scratch)
        except (OSError, StoreError) as exc:
            log.warning("model %r version %d is saved but latest.json was not moved: %s",
                        model, version, exc)

    def _point_latest_at_highest(self, model: str) -> None:
        """After a deletion: ``latest`` names the highest complete version (or is removed)."""
        highest = self._highest_complete(model)
        if highest is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._latest_file(model))
            return
        try:
            current = self._read_pointer(model, self._latest_file(model))
        except CorruptCheckpoint:
            current = None
        if current != highest[0]:
            files.replace_file(self._latest_file(model), codec.pointer_bytes(highest[0]),
                               self._scratch)

    def set_label(self, model: str, label: str, version: int) -> None:
        validate_name(model)
        validate_label(label)
        version = check_version_argument(version)
        try:
            with self._lock(model):
                self._resolve(model, "version", version)  # complete, or VersionNotFound
                labels_dir = self._labels_dir(model)
                try:
                    existing = [e[: -len(".json")] for e in os.listdir(labels_dir)
                                if e.endswith(".json")]
                except FileNotFoundError:
                    os.mkdir(labels_dir)
                    files.fsync_dir(self._model_dir(model))
                    existing = []
                if label not in existing:
                    check_no_case_clash(label, existing, "label")
                files.replace_file(labels_dir / f"{label}.json", codec.pointer_bytes(version),
                                   self._scratch)
        except OSError as exc:
            raise StoreWriteError(f"could not set label {label!r} of model {model!r}: {exc}") from exc

    def remove_label(self, model: str, label: str) -> None:
        validate_name(model)
        validate_label(label)
        try:
            with self._lock(model):
                self._require_model(model)
                try:
                    os.unlink(self._labels_dir(model) / f"{label}.json")
                except FileNotFoundError:
                    raise LabelNotFound(f"model {model!r} has no label {label!r}") from None
                files.fsync_dir(self._labels_dir(model))
        except OSError as exc:
            raise StoreWriteError(f"could not remove label {label!r} of model {model!r}: {exc}") from exc

    def delete(self, model: str, version: int | None = None) -> list[int]:
        validate_name(model)
        if version is not None:
            version = check_version_argument(version)
        try:
            with self._lock(model):
                # Damaged versions count as present: deleting them is how an operator gets rid
                # of them.
                present = [v for v in self._version_numbers(model) if not self._is_tombstone(model, v)]
                if not present:
                    raise ModelNotFound(f"no model named {model!r} in the store")
                if version is not None:
                    if version not in present:
                        raise VersionNotFound(f"model {model!r} has no version {version}")
                    holders = sorted(l for l, v in self._labels(model).items() if v == version)
                    if holders:
                        raise LabelInUse(f"version {version} of model {model!r} carries the "
                                         f"label(s) {', '.join(holders)}; move or remove them first")
                if version is None or present == [version]:
                    self._remove_model(model)
                    return present
                self._bury(model, version)
                self._purge_tombstones(model)
                self._point_latest_at_highest(model)
                return [version]
        except OSError as exc:
            raise StoreWriteError(f"could not delete from model {model!r}: {exc}") from exc

    def _remove_model(self, model: str) -> None:
        # One rename makes the whole model disappear at once; the removal itself can then fail
        # or be interrupted without leaving a half-deleted model behind (.tmp is cleaned later).
        trash = self._scratch / files.temp_name()
        os.rename(self._model_dir(model), trash)
        files.fsync_dir(self._models)
        files.remove_tree(trash)

    def _bury(self, model: str, version: int) -> None:
        """Delete a version but keep its folder with a tombstone, so its number stays taken.

        Writing the tombstone is the moment of deletion; the files go afterwards (an interrupted
        removal is finished when the store is next opened).
        """
        folder = self._version_dir(model, version)
        files.replace_file(folder / TOMBSTONE_FILE,
                           codec.pointer_bytes(version), self._scratch)
        self._empty_tombstone(folder)

    @staticmethod
    def _empty_tombstone(folder: Path) -> None:
        for entry in os.listdir(folder):
            if entry != TOMBSTONE_FILE:
                files.remove_tree(folder / entry)
        files.fsync_dir(folder)

    def _purge_tombstones(self, model: str) -> None:
        """Remove tombstones below the highest numbered folder: numbering continues above it."""
        numbers = self._version_numbers(model)
        purged = False
        for version in numbers[:-1]:
            if self._is_tombstone(model, version):
                trash = self._scratch / files.temp_name()
                os.rename(self._version_dir(model, version), trash)
                files.remove_tree(trash)
                purged = True
        if purged:
            files.fsync_dir(self._versions_dir(model))

    # --- Records ----------------------------------------------------------------------------------

    def get_record(self, key: str) -> Record | None:
        return self._records.get(key)

    def put_record(self, key: str, data: bytes, *, if_match: str | None = None,
                   if_absent: bool = False) -> str:
        return self._records.put(key, data, if_match=if_match, if_absent=if_absent)

    def delete_record(self, key: str, *, if_match: str | None = None) -> None:
        self._records.delete(key, if_match=if_match)

    def list_records(self, prefix: str) -> list[str]:
        return self._records.list(prefix)

    # --- Recovery ---------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Clean up after writers that crashed; never fails the opening of the store."""
        now = time.time()
        try:
            entries = list(os.scandir(self._scratch))
        except OSError as exc:
            log.warning("cannot list %s: %s", self._scratch, exc)
            entries = []
        for entry in entries:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed meanwhile by its writer or another opener
            if files.temp_entry_is_abandoned(entry.name, age, STALE_TEMP_SECONDS):
                log.info("removing an abandoned partial write: %s", entry.path)
                files.remove_tree(Path(entry.path))
        for model in self._model_names_on_disk():
            try:
                with self._lock(model):
                    self._repair_model(model)
            except (OSError, StoreError) as exc:
                log.warning("could not tidy model %r: %s", model, exc)

    def _repair_model(self, model: str) -> None:
        numbers = self._version_numbers(model)
        buried = [v for v in numbers if self._is_tombstone(model, v)]
        for version in buried:  # finish deletions that were interrupted
            self._empty_tombstone(self._version_dir(model, version))
        self._purge_tombstones(model)
        if len(buried) == len(numbers) and not self._labels(model):
            # Nothing was ever committed (a first save crashed) or only tombstones remain.
            if self._model_dir(model).is_dir():
                self._remove_model(model)
            return
        highest = self._highest_complete(model)
        if highest is not None:
            try:
                current = self._read_pointer(model, self._latest_file(model))
            except CorruptCheckpoint:
                current = None
            if current != highest[0]:
                files.replace_file(self._latest_file(model), codec.pointer_bytes(highest[0]),
                                   self._scratch)

