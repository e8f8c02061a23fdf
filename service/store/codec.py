"""What one stored version is made of, independent of where it is kept.

A version is a handful of files. Every backend writes the same bytes and checks them the same way:

- ``weights.safetensors``: the weights under the engine's PyTorch names (``safetensors.torch.
  load_file`` + ``load_state_dict`` work unchanged);
- ``training_state.safetensors`` and ``training_state.json`` (optional): what a trainer needs to
  resume;
- ``metadata.json``: the caller's metadata plus the store's fields. It is the version's manifest:
  it records the size and sha256 of every other file and the name, dtype and shape of every weight
  tensor, and carries ``metadata_sha256``, a digest of its own content, so that a damaged manifest
  is noticed as well. It is written last; a version without a valid manifest does not exist.

Only safetensors and JSON are ever parsed: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import safetensors.numpy

from .errors import CorruptCheckpoint, StoreInputError

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
TRAINING_TENSORS_FILE = "training_state.safetensors"
TRAINING_META_FILE = "training_state.json"
#: Every file a version may hold besides the manifest; nothing else is ever opened.
DATA_FILES = (WEIGHTS_FILE, TRAINING_TENSORS_FILE, TRAINING_META_FILE)
#: Keys the store sets in metadata.json; callers' values under these keys are replaced.
STORE_FIELDS = ("model", "version", "created", "package_version", "format_version", "files",
                "tensors", "metadata_sha256")
FORMAT_VERSION = 1

_SUPPORTED_KINDS = "biuf"  # bool, signed, unsigned, floating point


def package_version() -> str:
    """The installed charlstm version, recorded in every manifest."""
    try:
        return importlib.metadata.version("charlstm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


def _normalised_json(value: object, field: str) -> object:
    """``value`` after a JSON round trip (tuples become lists, keys strings), or StoreInputError."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise StoreInputError(field, f"{field} must be JSON-serialisable: {exc}") from exc


def metadata_digest(metadata: Mapping) -> str:
    """sha256 of the manifest's content without its ``metadata_sha256`` field.

    Computed over a canonical serialisation of the parsed content, so it survives reformatting
    (indentation, key order) but not a changed value.
    """
    content = {k: v for k, v in metadata.items() if k != "metadata_sha256"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=True)
    return sha256_hex(canonical.encode("ascii"))


def _checked_tensors(tensors: object, field: str, *, allow_empty: bool) -> dict[str, np.ndarray]:
    """Contiguous little-endian copies-if-needed of ``tensors``, or StoreInputError naming the
    offending tensor."""
    if not isinstance(tensors, Mapping):
        raise StoreInputError(field, f"{field} must be a dict of name -> numpy array "
                              f"(got {type(tensors).__name__})")
    if not tensors and not allow_empty:
        raise StoreInputError(field, f"{field} must hold at least one tensor")
    checked: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise StoreInputError(field, f"{field}: tensor names must be non-empty strings other "
                                  f"than '__metadata__' (got {name!r})")
        if not isinstance(array, np.ndarray):
            raise StoreInputError(field, f"{field}[{name!r}] must be a numpy array "
                                  f"(got {type(array).__name__})")
        if array.dtype.kind not in _SUPPORTED_KINDS:
            raise StoreInputError(field, f"{field}[{name!r}] has dtype {array.dtype}; allowed: "
                                  "bool, signed/unsigned integers and floats")
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        # (not np.ascontiguousarray: it turns 0-d arrays into 1-d ones)
        checked[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return checked


def _safetensors_bytes(tensors: dict[str, np.ndarray], field: str,
                       header: dict[str, str] | None = None) -> bytes:
    try:
        return safetensors.numpy.save(tensors, metadata=header)
    except Exception as exc:  # safetensors raises its own error type for dtypes it lacks
        raise StoreInputError(field, f"{field} cannot be stored as safetensors: {exc}") from exc


def tensor_specs(tensors: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """{name: {"dtype": "float32", "shape": [4, 3]}} as recorded in the manifest."""
    return {name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in tensors.items()}


@dataclass
class EncodedVersion:
    """The bytes of a version about to be written, before it has a number."""

    files: dict[str, bytes]   # data file name -> content (the manifest is not among them)
    manifest: dict            # everything except "version" and "metadata_sha256"

    def manifest_bytes(self, version: int) -> bytes:
        """metadata.json for this content stored as ``version``."""
        manifest = dict(self.manifest, version=version)
        manifest["metadata_sha256"] = metadata_digest(manifest)
        return _json_bytes(manifest)


def encode_version(model: str, tensors: object, metadata: object,
                   training_state: object | None) -> EncodedVersion:
    """Serialise a version; raises :class:`StoreInputError` for anything that cannot be stored.

    ``training_state`` is duck-typed (``.tensors``, ``.meta``) so this module does not depend on
    the public dataclasses.
    """
    if not isinstance(metadata, Mapping):
        raise StoreInputError("metadata", f"metadata must be a dict (got {type(metadata).__name__})")
    manifest = _normalised_json(dict(metadata), "metadata")
    weights = _checked_tensors(tensors, "tensors", allow_empty=False)
    # "format": "pt" tells PyTorch-side tooling the names follow torch's state_dict convention.
    files = {WEIGHTS_FILE: _safetensors_bytes(weights, "tensors", {"format": "pt"})}
    if training_state is not None:
        state_tensors = _checked_tensors(getattr(training_state, "tensors", None),
                                         "training_state.tensors", allow_empty=True)
        state_meta = getattr(training_state, "meta", None)
        if not isinstance(state_meta, Mapping):
            raise StoreInputError("training_state.meta", "training_state.meta must be a dict "
                                  f"(got {type(state_meta).__name__})")
        files[TRAINING_TENSORS_FILE] = _safetensors_bytes(state_tensors, "training_state.tensors")
        files[TRAINING_META_FILE] = _json_bytes(
            _normalised_json(dict(state_meta), "training_state.meta"))
    manifest.update(
        model=model,
        created=time.time(),
        package_version=package_version(),
        format_version=FORMAT_VERSION,
        files={name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in files.items()},
        tensors=tensor_specs(weights),
    )
    return EncodedVersion(files=files, manifest=manifest)


def parse_manifest(model: str, version: int, raw: bytes) -> dict:
    """The manifest of ``model`` ``version`` if ``raw`` is an intact one, else CorruptCheckpoint."""

    def corrupt(reason: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(model, version, METADATA_FILE, reason)

    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise corrupt(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise corrupt("not a JSON object")
    if manifest.get("metadata_sha256") != metadata_digest(manifest):
        raise corrupt("content does not match its metadata_sha256 (altered or damaged)")
    if manifest.get("version") != version or manifest.get("model") != model:
        raise corrupt(f"describes model {manifest.get('model')!r} version "
                      f"{manifest.get('version')!r}, not this one")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise corrupt(f"'files' does not list {WEIGHTS_FILE}")
    for name, entry in files.items():
        if (name not in DATA_FILES or not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int)):
            raise corrupt(f"'files' entry {name!r} is malformed")
    if not isinstance(manifest.get("tensors"), dict):
        raise corrupt("'tensors' is missing")
    return manifest


def is_resumable(manifest: Mapping) -> bool:
    files = manifest.get("files", {})
    return TRAINING_TENSORS_FILE in files and TRAINING_META_FILE in files


def check_file(model: str, version: int, name: str, data: bytes, manifest: Mapping) -> None:
    """Raise CorruptCheckpoint unless ``data`` has the size and sha256 the manifest records."""
    expected = manifest["files"][name]
    if len(data) != expected["size"]:
        raise CorruptCheckpoint(model, version, name,
                                f"size is {len(data)} bytes, metadata says {expected['size']}")
    actual = sha256_hex(data)
    if actual != expected["sha256"]:
        raise CorruptCheckpoint(model, version, name, f"sha256 is {actual}, metadata says "
                                f"{expected['sha256']} (the file was altered or damaged)")


def decode_tensors(model: str, version: int, name: str, data: bytes,
                   expected: Mapping | None = None) -> dict[str, np.ndarray]:
    """Parse a safetensors file; with ``expected`` specs, names, dtypes and shapes must agree."""
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # SafetensorError for a malformed header or buffer
        raise CorruptCheckpoint(model, version, name, f"not a valid safetensors file ({exc})") from None
    if expected is not None:
        found = tensor_specs(tensors)
        if set(found) != set(expected):
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            raise CorruptCheckpoint(model, version, name, f"tensor names disagree with metadata "
                                    f"(missing {missing}, unexpected {extra})")
        for tensor, spec in found.items():
            if spec != expected[tensor]:
                raise CorruptCheckpoint(model, version, name, f"tensor {tensor!r} is "
                                        f"{spec['dtype']}{spec['shape']}, metadata says "
                                        f"{expected[tensor]}")
    return tensors


def decode_json(model: str, version: int, name: str, data: bytes) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(model, version, name, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CorruptCheckpoint(model, version, name, "not a JSON object")
    return value


def validation_loss(manifest: Mapping) -> float | None:
    """``metrics.val_loss`` if it is a finite number, else None (used by retention)."""
    metrics = manifest.get("metrics")
    value = metrics.get("val_loss") if isinstance(metrics, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def pointer_bytes(version: int) -> bytes:
    """Content of a pointer file (``latest.json``, ``labels/<label>.json``)."""
    return _json_bytes({"version": version, "updated": time.time()})


def parse_pointer(raw: bytes) -> int:
    """The version a pointer file names; ValueError if it is not a valid pointer."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None
    version = value.get("version") if isinstance(value, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"no positive integer 'version' in {raw[:80]!r}")
    return version
