"""The checkpoint store's small interface and the plain types that cross it.

The interface is shaped so that a backend without rename (S3-compatible object storage) fits
behind it unchanged. The layout every backend uses, relative to its root::

    models/<name>/versions/<NNNNNNNN>/weights.safetensors      immutable once written
                                     /training_state.safetensors (optional)
                                     /training_state.json        (optional)
                                     /metadata.json              the manifest, written last
                                     /deleted.json               tombstone of a deleted version
    models/<name>/latest.json                                    {"version": N}, moved after a save
    models/<name>/labels/<label>.json                            {"version": N}
    records/<key>                                                small shared records (see below)

Rules every backend keeps:

- A version exists exactly when its folder holds an intact manifest and no tombstone. Readers
  never see a half-written version: locally the whole folder appears by one rename; on object
  storage every object is written create-only and the manifest last.
- Version numbers are claimed, never overwritten: locally by renaming onto the number (which
  fails when the folder exists), on object storage by a create-only write. A writer that loses the
  race takes the next number. A deleted version that is the highest number keeps a tombstone so
  its number is not handed out again while the model exists.
- Pointers (``latest``, labels) are small files replaced atomically, only after the version they
  name is complete; ``latest`` only moves forward on save (locally under a lock, on object storage
  by compare-and-swap). ``latest`` is a hint: resolution uses the highest complete version, so a
  pointer left behind by a crash is harmless.
"""

from __future__ import annotations

import abc
import numbers
from dataclasses import dataclass, field

import numpy as np

from . import codec, retention
from .codec import TRAINING_META_FILE, TRAINING_TENSORS_FILE, WEIGHTS_FILE
from .errors import LabelInUse, LabelNotFound, ModelNotFound, StoreInputError, VersionNotFound
from .names import LATEST, validate_label, validate_name


@dataclass(frozen=True)
class Record:
    """A record's content and the etag naming that content (for compare-and-swap)."""

    data: bytes
    etag: str                        # opaque; changes whenever the content changes


@dataclass
class TrainingState:
    """What a trainer needs to resume, stored next to a version's weights."""

    tensors: dict[str, np.ndarray]   # optimiser moments, best parameters, ... (safetensors-able)
    meta: dict                       # JSON-able: step, RNG state, data position, configs


@dataclass
class Checkpoint:
    """One loaded, verified version."""

    model: str
    version: int
    tensors: dict[str, np.ndarray]   # the weights, under the engine's PyTorch names
    metadata: dict                   # the caller's metadata plus the store's fields
    training_state: TrainingState | None = None


@dataclass
class VersionInfo:
    """A listed version, described by its manifest (nothing but the manifest is read to list)."""

    version: int
    created: float                   # unix seconds
    size_bytes: int                  # all of the version's files, manifest included
    metadata: dict
    labels: list[str] = field(default_factory=list)
    resumable: bool = False          # a training state was saved with it


#: What a ``ref`` argument resolves through: ("latest", None), ("version", n) or ("label", name).
Ref = tuple[str, "int | str | None"]


def parse_ref(ref: int | str | None) -> Ref:
    """Classify a version reference: None or "latest", a version number, or a label name."""
    if ref is None or ref == LATEST:
        return ("latest", None)
    if isinstance(ref, numbers.Integral) and not isinstance(ref, bool):
        return ("version", int(ref))
    if isinstance(ref, str):
        return ("label", validate_label(ref))
    raise StoreInputError("ref", "a version reference must be None, 'latest', a version number "
                          f"or a label name (got {type(ref).__name__})")


def check_version_argument(version: object) -> int:
    """A version number argument as an int, or StoreInputError if it is not an integer."""
    if not isinstance(version, numbers.Integral) or isinstance(version, bool):
        raise StoreInputError("version", "version must be an integer >= 1 "
                              f"(got {type(version).__name__})")
    return int(version)


def summarise_versions(versions: list[int]) -> str:
    """"1, 2, 3", or "1..40 (37 in all)" for long lists, for error messages."""
    if not versions:
        return "none"
    if len(versions) <= 6:
        return ", ".join(map(str, versions))
    return f"{versions[0]}..{versions[-1]} ({len(versions)} in all)"


class CheckpointStore(abc.ABC):
    """Versioned, verified, pickle-free storage of named models.

    ``ref`` arguments: None or ``"latest"`` -> the highest complete version; an int -> that
    version; any other string -> the version a label points at. Every method validates the model
    name first (:class:`InvalidName`) and raises :class:`ModelNotFound` for a model without
    complete versions.
    """

    @abc.abstractmethod
    def save(self, model: str, tensors: dict[str, np.ndarray], metadata: dict,
             training_state: TrainingState | None = None) -> int:
        """Store a new version of ``model`` (created on first save) and return its number.

        Either the version is complete, durable and visible when this returns, or
        :class:`StoreWriteError` is raised and nothing became visible. The store sets the fields
        listed in ``codec.STORE_FIELDS`` in the saved metadata, replacing any caller values.
        A new model whose name equals an existing one apart from letter case is refused.
        """

    # --- Reading, shared: each backend supplies the primitives below ---------------------------

    @abc.abstractmethod
    def _manifest(self, model: str, version: int, *, strict: bool = False) -> dict | None:
        """The intact manifest of a version, or None if the version does not exist. A damaged
        manifest is skipped (logged) when scanning, and a CorruptCheckpoint with ``strict``."""

    @abc.abstractmethod
    def _complete_versions(self, model: str) -> list[tuple[int, dict]]:
        """(version, manifest) of every complete version, oldest first."""

    @abc.abstractmethod
    def _highest_complete(self, model: str) -> tuple[int, dict] | None:
        """The newest complete version, without reading the manifests of the others."""

    @abc.abstractmethod
    def _label_target(self, model: str, label: str) -> int | None:
        """The version a label points at (CorruptCheckpoint if its pointer is damaged), or None."""

    @abc.abstractmethod
    def _labels(self, model: str) -> dict[str, int]:
        """Label -> version; damaged pointers are skipped with a warning."""

    @abc.abstractmethod
    def _read_version_file(self, model: str, version: int, name: str, manifest: dict) -> bytes:
        """A version's file, checked against the manifest's size and sha256 (``codec.check_file``);
        CorruptCheckpoint if it is missing, VersionNotFound if the version went meanwhile."""

    def _require_model(self, model: str) -> None:
        if self._highest_complete(model) is None:
            raise ModelNotFound(f"no model named {model!r} in the store")

    def _resolve(self, model: str, kind: str, value: int | str | None) -> tuple[int, dict]:
        """(version, intact manifest) for a parsed reference."""
        if kind == "latest":
            found = self._highest_complete(model)
            if found is None:
                raise ModelNotFound(f"no model named {model!r} in the store")
            return found
        if kind == "version":
            assert isinstance(value, int)
            if value >= 1:
                manifest = self._manifest(model, value, strict=True)
                if manifest is not None:
                    return value, manifest
            known = [v for v, _ in self._complete_versions(model)]
            if not known:
                raise ModelNotFound(f"no model named {model!r} in the store")
            raise VersionNotFound(f"model {model!r} has no version {value} "
                                  f"(it has versions {summarise_versions(known)})")
        assert isinstance(value, str)
        self._require_model(model)
        version = self._label_target(model, value)
        if version is None:
            raise LabelNotFound(f"model {model!r} has no label {value!r} "
                                f"(its labels: {sorted(self._labels(model)) or 'none'})")
        manifest = self._manifest(model, version, strict=True)
        if manifest is None:
            raise VersionNotFound(f"label {value!r} of model {model!r} points at version "
                                  f"{version}, which does not exist")
        return version, manifest

    def resolve(self, model: str, ref: int | str | None = None) -> int:
        """The version number ``ref`` designates (see the class docstring)."""
        validate_name(model)
        return self._resolve(model, *parse_ref(ref))[0]

    def load(self, model: str, ref: int | str | None = None, *,
             with_training_state: bool = False) -> Checkpoint:
        """Read and verify a version: every file read is checked against the manifest's size and
        sha256, and the weights' names, dtypes and shapes against its tensor table. A damaged or
        missing file raises :class:`CorruptCheckpoint`. The training state is read (and verified)
        only when asked for; it is None for a version saved without one."""
        validate_name(model)
        version, manifest = self._resolve(model, *parse_ref(ref))
        weights = self._read_version_file(model, version, WEIGHTS_FILE, manifest)
        tensors = codec.decode_tensors(model, version, WEIGHTS_FILE, weights, manifest["tensors"])
        training_state = None
        if with_training_state and codec.is_resumable(manifest):
            state_tensors = self._read_version_file(model, version, TRAINING_TENSORS_FILE, manifest)
            state_meta = self._read_version_file(model, version, TRAINING_META_FILE, manifest)
            training_state = TrainingState(
                tensors=codec.decode_tensors(model, version, TRAINING_TENSORS_FILE, state_tensors),
                meta=codec.decode_json(model, version, TRAINING_META_FILE, state_meta),
            )
        return Checkpoint(model=model, version=version, tensors=tensors, metadata=manifest,
                          training_state=training_state)

    def labels(self, model: str) -> dict[str, int]:
        """Label name -> version number."""
        validate_name(model)
        self._require_model(model)
        return self._labels(model)

    @abc.abstractmethod
    def list_models(self) -> list[str]:
        """Names of the models that have at least one complete version, sorted."""

    @abc.abstractmethod
    def list_versions(self, model: str) -> list[VersionInfo]:
        """The complete versions of ``model``, oldest first."""

    @abc.abstractmethod
    def set_label(self, model: str, label: str, version: int) -> None:
        """Point ``label`` at ``version`` (a complete version), creating or moving it atomically.
        ``latest`` is reserved; a new label equal to an existing one apart from case is refused."""

    @abc.abstractmethod
    def remove_label(self, model: str, label: str) -> None:
        """Remove a label (:class:`LabelNotFound` if it does not exist)."""

    @abc.abstractmethod
    def delete(self, model: str, version: int | None = None) -> list[int]:
        """Delete one version, or with ``version=None`` the whole model with its labels; return
        the deleted version numbers. A labelled version raises :class:`LabelInUse`. Deleting the
        last remaining version deletes the model."""

    # --- Records --------------------------------------------------------------------------------
    # Small keyed blobs the service shares between processes and replicas (job records, leases,
    # corpora), with conditional writes so that two writers cannot both win. Keys are
    # '/'-separated segments of [A-Za-z0-9._-] (``names.validate_record_key``); a record's etag
    # changes whenever its content does (writing identical bytes may keep it, as on S3).

    @abc.abstractmethod
    def get_record(self, key: str) -> Record | None:
        """The record under ``key``, or None if there is none."""

    @abc.abstractmethod
    def put_record(self, key: str, data: bytes, *, if_match: str | None = None,
                   if_absent: bool = False) -> str:
        """Store ``data`` under ``key`` atomically and return its new etag.

        ``if_match``: only if the record's current etag is this one; ``if_absent``: only if there
        is no record. When the condition fails, :class:`RecordConflict` is raised and nothing is
        written. Readers see the old or the new content, never a mix. (On object storage a write
        whose answer was lost and that the client library retried can report a conflict although
        it landed: after a conflict, read the record to see where things stand.)
        """

    @abc.abstractmethod
    def delete_record(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the record under ``key`` (nothing happens if there is none). With ``if_match``,
        only if its current etag is that one, else :class:`RecordConflict`."""

    @abc.abstractmethod
    def list_records(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (``""``: all), sorted."""

    def apply_retention(self, model: str, keep_last: int) -> list[int]:
        """Delete every version except the ``keep_last`` newest, the labelled ones and the one
        with the best ``metrics.val_loss``; return the deleted numbers, oldest first."""
        if (not isinstance(keep_last, numbers.Integral) or isinstance(keep_last, bool)
                or keep_last < 1):
            raise StoreInputError("keep_last", f"keep_last must be an integer >= 1 (got {keep_last!r})")
        deleted: list[int] = []
        for version in retention.versions_to_delete(self.list_versions(model), int(keep_last)):
            try:
                deleted += self.delete(model, version)
            except (LabelInUse, VersionNotFound):
                continue  # labelled or deleted by someone else since we listed: not ours to remove
        return deleted

    def verify(self, model: str, ref: int | str | None = None) -> int:
        """Check every file of a version, training state included; return its number."""
        return self.load(model, ref, with_training_state=True).version
