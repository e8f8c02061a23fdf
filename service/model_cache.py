"""A bounded least-recently-used cache of models loaded from the checkpoint store.

Requests name a model reference (``latest``, a label or a number); the cache is keyed by the
resolved ``(name, version)``, so versions in use stay loaded while ``latest`` moves on. Two
requests needing the same uncached version wait for one load, not two.

Resolving ``latest`` or a label reads the store (a directory listing locally, a few requests on
object storage), so a resolution is reused for ``refresh_seconds`` (``--refresh-seconds``) and
then read again: a version written by another replica on the same store becomes servable here
within that time. Changes made through this process (its own jobs' checkpoints, SetLabel,
DeleteModel) call :meth:`ModelCache.forget` and are seen by the next request. A reference
that does not resolve is never remembered; a remembered version deleted by another replica
serves from memory until the period ends if it is loaded, and is resolved again at once if it
is not. ``refresh_seconds`` 0 resolves on every request, except on a store that can tell
cheaply when a resolution may have changed (``ref_fingerprint``: a local directory), where a
resolution is reused while its fingerprint stays the same. Checking the fingerprint is four
``stat`` calls (about 36 us measured, a tenth of a Predict call's server time), so it is
looked at again only ``recheck_seconds`` (``--local-refresh-ms``) after the last look: a
version saved beside the server by another tool serves within that time, one saved through
the server at once (``forget``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from charlstm.engine import CharLSTM, ConfigError, ModelConfig, Vocab
from charlstm.service.errors import DataLoss
from charlstm.service.metrics import Metrics
from charlstm.service.store import CheckpointStore, ModelNotFound, VersionNotFound

__all__ = ["LoadedModel", "ModelCache"]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One stored version, ready to run. Immutable and shared by every request using it."""

    name: str
    version: int
    model: CharLSTM
    vocab: Vocab
    metadata: dict = field(repr=False)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        return self.vocab.size


class _Loading:
    """A load in progress that other threads can wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: LoadedModel | None = None
        self.error: BaseException | None = None


class ModelCache:
    """At most ``capacity`` loaded model versions, least recently used evicted first."""

    def __init__(self, store: CheckpointStore, capacity: int = 8, metrics: Metrics | None = None,
                 refresh_seconds: float = 0.0, recheck_seconds: float = 0.0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        self.store = store
        self.capacity = capacity
        self.refresh_seconds = float(refresh_seconds)
        self.recheck_seconds = float(recheck_seconds)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, int], _Loading] = {}
        # (name, ref) -> (version, monotonic time it was resolved); bounded by the refs in use.
        self._resolved: dict[tuple[str, int | str | None], tuple[int, float]] = {}
        # refresh_seconds 0 on a store with ``ref_fingerprint``:
        # (name, ref) -> (version, mark or None, monotonic time the store was last looked at)
        self._fingerprints: dict[tuple[str, int | str | None],
                                 tuple[int, tuple | None, float]] = {}
        self._forgets = 0  # calls of forget(), to tell a resolution that raced with one

    def get(self, name: str, ref: int | str | None = None) -> LoadedModel:
        """The model ``name`` at ``ref`` (None/``latest``: newest; int: version; str: label).

        Raises the store's ModelNotFound/VersionNotFound/LabelNotFound/InvalidName, and
        :class:`DataLoss` when the checkpoint cannot be turned into a model.
        """
        version, remembered = self._resolve(name, ref)
        try:
            return self.get_version(name, version)
        except (ModelNotFound, VersionNotFound):
            if not remembered:
                raise
            # Deleted (by another replica) since it was resolved: resolve afresh.
            self.forget(name)
            return self.get_version(name, self._resolve(name, ref)[0])

    def _resolve(self, name: str, ref: int | str | None) -> tuple[int, bool]:
        """The version ``ref`` names, and whether it came from a remembered resolution."""
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self.store.resolve(name, ref), False
        key = (name, ref)
        now = time.monotonic()
        fingerprint = getattr(self.store, "ref_fingerprint", None)
        if self.refresh_seconds <= 0 and fingerprint is not None:
            # A store with cheap change marks (a local directory): reuse the last resolution
            # while nothing that could change it has changed (a few stats, not a listing),
            # and for recheck_seconds after a check without looking again.
            with self._lock:
                seen = self._fingerprints.get(key)
                forgets = self._forgets
            if seen is not None:
                if now - seen[2] < self.recheck_seconds:
                    return seen[0], True
                if seen[1] is not None and fingerprint(name, seen[0]) == seen[1]:
                    with self._lock:
                        if self._fingerprints.get(key) is seen:  # not forgotten meanwhile
                            self._fingerprints[key] = (seen[0], seen[1], now)
                    return seen[0], True
            version = self.store.resolve(name, ref)
            mark = fingerprint(name, version)
            with self._lock:
                # A forget() since this resolution began: the store changed through this
                # process meanwhile, and what was read may predate it.
                if forgets == self._forgets:
                    # No mark (changed too recently to tell): reused for recheck_seconds only.
                    self._fingerprints[key] = (version, mark, now)
            return version, False
        if self.refresh_seconds > 0:
            with self._lock:
                hit = self._resolved.get(key)
            if hit is not None and now - hit[1] < self.refresh_seconds:
                return hit[0], True
        version = self.store.resolve(name, ref)
        if self.refresh_seconds > 0:
            with self._lock:
                self._resolved[key] = (version, now)
        return version, False

    def forget(self, name: str) -> None:
        """Drop the remembered resolutions of ``name``'s references (``latest``, labels): the
        next request reads them from the store. Call it after changing them in this process."""
        with self._lock:
            self._forgets += 1
            for key in [k for k in self._resolved if k[0] == name]:
                del self._resolved[key]
            for key in [k for k in self._fingerprints if k[0] == name]:
                del self._fingerprints[key]

    def get_version(self, name: str, version: int) -> LoadedModel:
        """The model ``name`` at exactly ``version``, loading it if needed."""
        key = (name, version)
        with self._lock:
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
                return cached
            loading = self._loading.get(key)
            owner = loading is None
            if owner:
                loading = self._loading[key] = _Loading()
        if not owner:
            loading.done.wait()
            if loading.error is not None:
                raise loading.error
            assert loading.result is not None
            return loading.result

        # This thread loads; the lock is not held while reading files and building the model.
        try:
            loaded = self._load(name, version)
        except BaseException as exc:
            loading.error = exc
            with self._lock:
                del self._loading[key]
            loading.done.set()
            raise
        loading.result = loaded
        with self._lock:
            del self._loading[key]
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            self._report_size()
        loading.done.set()
        return loaded

    def invalidate(self, name: str, version: int | None = None) -> None:
        """Forget ``name`` at ``version`` (or every version), e.g. after DeleteModel.
        Requests already holding the model keep using it."""
        with self._lock:
            for key in [k for k in self._models if k[0] == name and version in (None, k[1])]:
                del self._models[key]
            self._report_size()
        self.forget(name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def _report_size(self) -> None:
        if self._metrics is not None:
            self._metrics.model_cache_models.set(len(self._models))

    def _load(self, name: str, version: int) -> LoadedModel:
        checkpoint = self.store.load(name, version)
        meta = checkpoint.metadata
        try:
            config = ModelConfig.from_dict(meta["model_config"])
            vocab = Vocab(meta["vocab"])
            if vocab.size != config.vocab_size:
                raise ValueError(
                    f"the vocabulary has {vocab.size} ids but the model expects {config.vocab_size}"
                )
            model = CharLSTM.from_state_dict(config, checkpoint.tensors)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            # The files passed the store's checksums, so the metadata itself is unusable.
            raise DataLoss(
                f"model {name!r} version {version} cannot be loaded: {exc}"
            ) from exc
        if self._metrics is not None:
            self._metrics.model_loads_total.inc()
        return LoadedModel(name=name, version=version, model=model, vocab=vocab, metadata=meta)
