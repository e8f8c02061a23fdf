"""The checkpoint store on S3-compatible object storage (``--store s3://BUCKET/PREFIX``).

The layout under ``PREFIX`` is the local one (see base.py) without the scratch and lock folders,
since object storage has neither rename nor locks. Instead every write is conditional:

- A save claims its version number by writing ``weights.safetensors`` create-only
  (``If-None-Match: *``): of two writers racing for one number exactly one succeeds; the other
  takes the next number. The version's other objects follow, create-only, and the manifest
  ``metadata.json`` last. A version without a manifest is invisible: a writer killed halfway
  leaves objects that no reader looks at, and the number is skipped.
- ``latest.json`` and the label pointers are moved by compare-and-swap (``If-Match`` on the
  pointer's ETag, retried when another writer moved it first).
- A deletion writes the version's tombstone ``deleted.json`` first (the moment of deletion), then
  removes the other objects; the highest number keeps its tombstone so it is never handed out
  again.

Readers resolve a reference to a manifest and verify every object against its size and sha256
with the same code as the local store (:mod:`.codec`). Opening the store probes whether the
server honours conditional writes; one that ignores them would let two writers silently
overwrite each other, so the store refuses to open unless told that it has a single writer.

Settings, locations and the boto3 client (an optional dependency) are in :mod:`.s3_settings`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import numpy as np

from . import codec
from .base import (
    CheckpointStore,
    Record,
    TrainingState,
    VersionInfo,
    check_version_argument,
)
from .codec import METADATA_FILE, WEIGHTS_FILE
from .errors import (
    CorruptCheckpoint,
    LabelInUse,
    LabelNotFound,
    ModelNotFound,
    RecordConflict,
    StoreError,
    StoreInputError,
    StoreWriteError,
    VersionNotFound,
)
from .names import (
    check_no_case_clash,
    validate_label,
    validate_name,
    validate_record_key,
    validate_record_prefix,
)
from .records import check_etag, checked_write
from .s3_settings import S3Settings, botocore_errors, make_client, parse_location

log = logging.getLogger(__name__)

TOMBSTONE_FILE = "deleted.json"
#: Version numbers tried by one save before giving up (each miss means another writer won).
MAX_COMMIT_ATTEMPTS = 1000
#: Compare-and-swap attempts on one pointer before giving up (each miss: another writer moved it).
MAX_POINTER_ATTEMPTS = 50
MAX_VERSION = 2**63 - 1
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class _Lost(Exception):
    """A conditional request failed its precondition (HTTP 412, or 409 for a concurrent one)."""


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Store(CheckpointStore):
    """Checkpoints in an S3-compatible bucket, shared safely by several processes and hosts."""

    def __init__(self, location: str, settings: S3Settings | None = None, *, client=None) -> None:
        """Open ``s3://BUCKET/PREFIX``. ``client`` (a boto3 S3 client) replaces the one built from
        ``settings`` (default: :meth:`S3Settings.from_env`). Raises StoreError if the bucket is
        unreachable, or if it ignores conditional writes and ``single_writer`` is not set."""
        self.location = location
        self.settings = settings if settings is not None else S3Settings.from_env()
        self.bucket, self.prefix = parse_location(location)
        if client is None:
            client = make_client(self.settings, os.environ.get("AWS_ENDPOINT_URL"))
        self._client = client
        self._botocore_errors = botocore_errors()
        self.conditional_writes = self._probe_conditional_writes()
        if not self.conditional_writes:
            if not self.settings.single_writer:
                raise StoreError(
                    f"the object store at {self._where()} ignores conditional writes "
                    "(If-None-Match / If-Match): two writers could overwrite each other's "
                    "versions and pointers. Use a store that supports them (AWS S3, SeaweedFS, "
                    "MinIO, ...), or promise that one process writes to it with "
                    "--s3-single-writer true")
            log.warning("the object store at %s ignores conditional writes; running as its "
                        "only writer (--s3-single-writer)", self._where())

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    def _where(self) -> str:
        endpoint = self.settings.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} ({endpoint})"

    # --- Requests ---------------------------------------------------------------------------------
    # Every request goes through these few methods, which turn boto3's exceptions into the store's.

    def _fail(self, what: str, exc: Exception, *, writing: bool) -> StoreError:
        kind = StoreWriteError if writing else StoreError
        return kind(f"{what} at {self._where()} failed: {exc}")

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(content, ETag) of an object, or None if it does not exist."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return response["Body"].read(), response["ETag"]
        except self._botocore_errors as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._fail(f"reading {key}", exc, writing=False) from exc

    def _put(self, key: str, data: bytes, *, create_only: bool = False,
             if_match: str | None = None) -> str:
        """Write an object and return its ETag; raises _Lost if the condition failed."""
        conditions = {}
        if create_only:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            response = self._client.put_object(Bucket=self.bucket, Key=self.prefix + key,
                                               Body=data, **conditions)
            return response["ETag"]
        except self._botocore_errors as exc:
            if conditions and _error_code(exc) in _PRECONDITION_CODES | _MISSING_CODES:
                raise _Lost(key) from exc
            raise self._fail(f"writing {key}", exc, writing=True) from exc

    def _delete(self, key: str, *, if_match: str | None = None) -> None:
        conditions = {"IfMatch": if_match} if if_match is not None else {}
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key, **conditions)
        except self._botocore_errors as exc:
            code = _error_code(exc)
            if if_match is not None and code in _PRECONDITION_CODES | _MISSING_CODES:
                raise _Lost(key) from exc
            if code not in _MISSING_CODES:
                raise self._fail(f"deleting {key}", exc, writing=True) from exc

    def _delete_all(self, keys: list[str]) -> None:
        for key in keys:
            self._delete(key)

    def _list(self, prefix: str, *, folders: bool = False) -> Iterator[tuple[str, int]]:
        """(key relative to ``prefix``, size) of every object under it; with ``folders``, the
        next path segments below ``prefix`` instead (size 0)."""
        extra = {"Delimiter": "/"} if folders else {}
        full = self.prefix + prefix
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full, **extra):
                if folders:
                    for entry in page.get("CommonPrefixes", []):
                        yield entry["Prefix"][len(full):].rstrip("/"), 0
                else:
                    for entry in page.get("Contents", []):
                        yield entry["Key"][len(full):], entry["Size"]
        except self._botocore_errors as exc:
            raise self._fail(f"listing {prefix}", exc, writing=False) from exc

    def _probe_conditional_writes(self) -> bool:
        """Write a probe object create-only twice, then over a wrong ETag: a store that honours
        If-None-Match and If-Match refuses the last two. Also checks that the bucket is
        reachable at all."""
        key = f".probe/{uuid.uuid4().hex}"
        try:
            self._put(key, b"1", create_only=True)
        except _Lost:
            return False  # a fresh random key cannot exist: the answer is nonsense
        except StoreError as exc:
            raise StoreError(f"cannot use the object store at {self._where()}: "
                             f"{exc.__cause__ or exc}") from exc
        honoured = 0
        try:
            for attempt in ({"create_only": True}, {"if_match": '"' + "0" * 32 + '"'}):
                try:
                    self._put(key, b"2", **attempt)
                except _Lost:
                    honoured += 1
        finally:
            self._delete(key)
        return honoured == 2

    # --- Keys -------------------------------------------------------------------------------------

    @staticmethod
    def _model_key(model: str) -> str:
        return f"models/{model}/"

    @staticmethod
    def _version_key(model: str, version: int) -> str:
        return f"models/{model}/versions/{version:08d}/"

    @staticmethod
    def _latest_key(model: str) -> str:
        return f"models/{model}/latest.json"

    @staticmethod
    def _label_key(model: str, label: str) -> str:
        return f"models/{model}/labels/{label}.json"

    # --- Reading ----------------------------------------------------------------------------------

    def _folders(self, model: str) -> dict[int, dict[str, int]]:
        """Every numbered folder of the model, complete or not: version -> {file: size}."""
        found: dict[int, dict[str, int]] = {}
        for name, size in self._list(f"models/{model}/versions/"):
            number, _, file = name.partition("/")
            if number.isascii() and number.isdigit() and number == f"{int(number):08d}" and file:
                found.setdefault(int(number), {})[file] = size
        return found

    def _parsed_manifest(self, model: str, version: int, *, strict: bool) -> dict | None:
        got = self._get(self._version_key(model, version) + METADATA_FILE)
        if got is None:
            return None
        try:
            return codec.parse_manifest(model, version, got[0])
        except CorruptCheckpoint as exc:
            if strict:
                raise
            log.warning("ignoring a damaged version: %s", exc)
            return None

    def _manifest(self, model: str, version: int, *, strict: bool = False) -> dict | None:
        """The intact manifest of a version, or None if the version does not exist (no manifest:
        a save in progress or one that was killed; or a tombstone). A damaged manifest is
        ignored when scanning and a CorruptCheckpoint when asked for by number (``strict``)."""
        if not 1 <= version <= MAX_VERSION:
            return None
        files = {name for name, _ in self._list(self._version_key(model, version))}
        if METADATA_FILE not in files or TOMBSTONE_FILE in files:
            return None
        return self._parsed_manifest(model, version, strict=strict)

    def _complete(self, model: str, folders: dict[int, dict[str, int]]) -> Iterator[tuple[int, dict]]:
        """(version, manifest) of the complete versions among ``folders``, newest first."""
        for version in sorted(folders, reverse=True):
            files = folders[version]
            if METADATA_FILE in files and TOMBSTONE_FILE not in files:
                manifest = self._parsed_manifest(model, version, strict=False)
                if manifest is not None:
                    yield version, manifest

    def _highest_complete(self, model: str) -> tuple[int, dict] | None:
        return next(self._complete(model, self._folders(model)), None)

    def _complete_versions(self, model: str) -> list[tuple[int, dict]]:
        return sorted(self._complete(model, self._folders(model)))

    def _read_pointer(self, model: str, key: str) -> tuple[int, str] | None:
        """(version, ETag) of a pointer object; None if it does not exist."""
        got = self._get(key)
        if got is None:
            return None
        try:
            return codec.parse_pointer(got[0]), got[1]
        except ValueError as exc:
            shown = key[len(self._model_key(model)):]
            raise CorruptCheckpoint(model, None, shown, f"not a valid pointer ({exc})") from None

    def _label_target(self, model: str, label: str) -> int | None:
        pointer = self._read_pointer(model, self._label_key(model, label))
        return None if pointer is None else pointer[0]

    def _labels(self, model: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for name, _ in sorted(self._list(f"models/{model}/labels/")):
            label = name[: -len(".json")]
            if not name.endswith(".json") or "/" in name:
                continue
            try:
                validate_name(label)
                pointer = self._read_pointer(model, self._label_key(model, label))
            except StoreError as exc:
                log.warning("ignoring label %r: %s", label, exc)
                continue
            if pointer is not None:
                found[label] = pointer[0]
        return found

    def _read_version_file(self, model: str, version: int, name: str, manifest: dict) -> bytes:
        got = self._get(self._version_key(model, version) + name)
        if got is None:
            if self._manifest(model, version) is None:  # deleted while we were reading it
                raise VersionNotFound(f"version {version} of model {model!r} was deleted")
            raise CorruptCheckpoint(model, version, name, "file is missing")
        codec.check_file(model, version, name, got[0], manifest)
        return got[0]

    def _model_names(self) -> list[str]:
        names = []
        for name, _ in self._list("models/", folders=True):
            try:
                names.append(validate_name(name))
            except StoreInputError:
                continue
        return names

    def list_models(self) -> list[str]:
        return sorted(m for m in self._model_names() if self._highest_complete(m))

    def list_versions(self, model: str) -> list[VersionInfo]:
        validate_name(model)
        folders = self._folders(model)
        complete = sorted(self._complete(model, folders))
        if not complete:
            raise ModelNotFound(f"no model named {model!r} in the store")
        labels_of: dict[int, list[str]] = {}
        for label, version in self._labels(model).items():
            labels_of.setdefault(version, []).append(label)
        return [VersionInfo(
            version=version,
            created=float(manifest.get("created", 0.0)),
            size_bytes=folders[version].get(METADATA_FILE, 0)
            + sum(e["size"] for e in manifest["files"].values()),
            metadata=manifest,
            labels=sorted(labels_of.get(version, [])),
            resumable=codec.is_resumable(manifest),
        ) for version, manifest in complete]

    # --- Writing ----------------------------------------------------------------------------------

    def save(self, model: str, tensors: dict[str, np.ndarray], metadata: dict,
             training_state: TrainingState | None = None) -> int:
        validate_name(model)
        encoded = codec.encode_version(model, tensors, metadata, training_state)
        folders = self._folders(model)
        if not folders:
            # A new model (a racing writer of a case variant is not excluded: there is no lock).
            # Some servers (SeaweedFS) list emptied folders: only names with objects count.
            variants = [m for m in self._model_names() if m.lower() == model.lower()]
            check_no_case_clash(model, [m for m in variants
                                        if next(self._list(self._model_key(m)), None)], "model")
        version = max(folders, default=0) + 1
        # The weights claim the number, so they go first; the manifest makes the version exist.
        order = [WEIGHTS_FILE] + [n for n in encoded.files if n != WEIGHTS_FILE]
        for _ in range(MAX_COMMIT_ATTEMPTS):
            folder = self._version_key(model, version)
            manifest = encoded.manifest_bytes(version)
            try:
                for name in order:
                    self._create(folder + name, encoded.files[name])
                self._create(folder + METADATA_FILE, manifest)
            except _Lost:
                # Another writer holds this number: take the next free one. Objects we wrote
                # here are left alone (without our manifest nobody reads them): deleting them
                # could pull identical objects from under a writer that adopted them.
                version = max(version, max(self._folders(model), default=0)) + 1
                continue
            except StoreError as exc:
                if self._holds(folder + METADATA_FILE, manifest):
                    break  # the manifest landed although its answer was lost: committed
                raise StoreWriteError(f"could not save a version of model {model!r}: {exc} "
                                      "(no version became visible)") from exc
            break
        else:
            raise StoreWriteError(f"could not save a version of model {model!r}: no free version "
                                  f"number after {MAX_COMMIT_ATTEMPTS} attempts (nothing was "
                                  "stored)")
        self._advance_latest(model, version)
        return version

    def _create(self, key: str, data: bytes) -> None:
        """Write an object create-only. If it exists with exactly ``data`` (our own write, whose
        answer was lost and which the client library retried), that counts as written; any
        other content raises _Lost."""
        try:
            self._put(key, data, create_only=True)
        except _Lost:
            if not self._holds(key, data):
                raise

    def _holds(self, key: str, data: bytes) -> bool:
        """Does the object exist with exactly ``data``? (False when it cannot be read.)"""
        try:
            got = self._get(key)
        except StoreError:
            return False
        return got is not None and got[0] == data

    def _delete_quietly(self, keys: list[str]) -> None:
        try:
            self._delete_all(keys)
        except StoreError as exc:  # invisible without a manifest; only space is lost
            log.warning("could not remove the objects of an unfinished save: %s", exc)

    def _move_pointer(self, model: str, key: str, version: int, *, forward_only: bool) -> None:
        """Point ``key`` at ``version`` by compare-and-swap; with ``forward_only``, never lower
        it. Retried while other writers move it first."""
        for _ in range(MAX_POINTER_ATTEMPTS):
            try:
                current = self._read_pointer(model, key)
            except CorruptCheckpoint:
                current = None
                got = self._get(key)
                etag = got[1] if got else None
            else:
                etag = current[1] if current else None
            if current is not None and (current[0] == version
                                        or (forward_only and current[0] > version)):
                return
            try:
                if etag is None:
                    self._put(key, codec.pointer_bytes(version), create_only=True)
                else:
                    self._put(key, codec.pointer_bytes(version), if_match=etag)
                return
            except _Lost:
                continue
        raise StoreWriteError(f"could not move {key}: it kept changing "
                              f"({MAX_POINTER_ATTEMPTS} attempts)")

    def _advance_latest(self, model: str, version: int) -> None:
        """Move ``latest`` forward to a committed version; a failure is only logged, because
        resolution uses the highest complete version and the next save moves it on."""
        try:
            self._move_pointer(model, self._latest_key(model), version, forward_only=True)
        except StoreError as exc:
            log.warning("model %r version %d is saved but latest.json was not moved: %s",
                        model, version, exc)

    def set_label(self, model: str, label: str, version: int) -> None:
        validate_name(model)
        validate_label(label)
        version = check_version_argument(version)
        self._resolve(model, "version", version)  # complete, or VersionNotFound
        existing = [name[: -len(".json")] for name, _ in self._list(f"models/{model}/labels/")]
        if label not in existing:
            check_no_case_clash(label, existing, "label")
        key = self._label_key(model, label)
        self._move_pointer(model, key, version, forward_only=False)
        if self._manifest(model, version) is None:
            # Deleted meanwhile (a deletion checks the labels after writing its tombstone, so one
            # of the two notices the other): do not leave a label on a deleted version.
            self._delete_quietly([key])
            raise VersionNotFound(f"version {version} of model {model!r} was deleted while "
                                  f"label {label!r} was being set")

    def remove_label(self, model: str, label: str) -> None:
        validate_name(model)
        validate_label(label)
        self._require_model(model)
        key = self._label_key(model, label)
        if self._get(key) is None:
            raise LabelNotFound(f"model {model!r} has no label {label!r}")
        self._delete(key)

    def delete(self, model: str, version: int | None = None) -> list[int]:
        validate_name(model)
        if version is not None:
            version = check_version_argument(version)
        folders = self._folders(model)
        # Damaged versions count as present (deleting them is how an operator gets rid of them);
        # folders without a manifest are saves in progress or killed ones, not versions.
        present = sorted(v for v, files in folders.items()
                         if METADATA_FILE in files and TOMBSTONE_FILE not in files)
        if not present:
            raise ModelNotFound(f"no model named {model!r} in the store")
        if version is not None:
            if version not in present:
                raise VersionNotFound(f"model {model!r} has no version {version}")
            self._check_unlabelled(model, version)
        if version is None or present == [version]:
            self._delete_all([self._model_key(model) + name
                              for name, _ in self._list(self._model_key(model))])
            return present
        folder = self._version_key(model, version)
        try:
            self._put(folder + TOMBSTONE_FILE, codec.pointer_bytes(version), create_only=True)
        except _Lost:
            raise VersionNotFound(f"model {model!r} has no version {version} "
                                  "(it was deleted meanwhile)") from None
        try:
            self._check_unlabelled(model, version)
        except LabelInUse:
            self._delete(folder + TOMBSTONE_FILE)  # a label arrived meanwhile: undo
            raise
        self._delete_all([folder + name for name in folders[version] if name != TOMBSTONE_FILE])
        self._purge_tombstones(model)
        highest = self._highest_complete(model)
        if highest is not None:
            self._move_pointer(model, self._latest_key(model), highest[0], forward_only=False)
        return [version]

    def _check_unlabelled(self, model: str, version: int) -> None:
        holders = sorted(l for l, v in self._labels(model).items() if v == version)
        if holders:
            raise LabelInUse(f"version {version} of model {model!r} carries the label(s) "
                             f"{', '.join(holders)}; move or remove them first")

    def _purge_tombstones(self, model: str) -> None:
        """Remove tombstones below the highest numbered folder: numbering continues above it.
        (Folders of killed saves are never removed, so the highest folder never goes away.)"""
        folders = self._folders(model)
        highest = max(folders, default=0)
        for version, files in folders.items():
            if version < highest and TOMBSTONE_FILE in files:
                folder = self._version_key(model, version)
                self._delete_all([folder + name for name in files if name != TOMBSTONE_FILE])
                self._delete(folder + TOMBSTONE_FILE)

    # --- Records ----------------------------------------------------------------------------------

    def get_record(self, key: str) -> Record | None:
        validate_record_key(key)
        got = self._get("records/" + key)
        return None if got is None else Record(data=got[0], etag=got[1])

    def put_record(self, key: str, data: bytes, *, if_match: str | None = None,
                   if_absent: bool = False) -> str:
        data = checked_write(key, data, if_match, if_absent)
        try:
            return self._put("records/" + key, data, create_only=if_absent, if_match=if_match)
        except _Lost:
            # Also when an automatic retry of a write whose first answer was lost finds it done:
            # identical content may equally come from another writer, so only the caller can tell.
            raise RecordConflict(_conflict_message(key, self.get_record(key), if_match)) from None

    def delete_record(self, key: str, *, if_match: str | None = None) -> None:
        validate_record_key(key)
        check_etag(if_match)
        try:
            self._delete("records/" + key, if_match=if_match)
        except _Lost:
            raise RecordConflict(_conflict_message(key, self.get_record(key), if_match)) from None

    def list_records(self, prefix: str) -> list[str]:
        validate_record_prefix(prefix)
        return sorted(prefix + name for name, _ in self._list("records/" + prefix))


def _conflict_message(key: str, current: Record | None, if_match: str | None) -> str:
    if if_match is None:
        return f"record {key!r} already exists"
    if current is None:
        return f"record {key!r} does not exist (expected etag {if_match})"
    return f"record {key!r} changed: its etag is {current.etag}, not {if_match}"
