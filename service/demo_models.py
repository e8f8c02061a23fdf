"""Models that ship inside the package and that ``charlstm serve`` offers out of the box.

Each bundled model is a folder under ``demo/`` holding ``weights.safetensors`` (PyTorch
names; float16 to keep the package small, cast to float32 when loaded) and ``metadata.json``
(architecture, vocabulary, training config and metrics, as a trained version's). On start the
server imports every bundled model whose name the store does not have yet, as version 1 of a
new model. A model of that name already in the store is never touched, whatever it holds: it
is the user's. ``--demo-models off`` skips the import.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.numpy import load_file

from .store import CheckpointStore, StoreError

DEMO_DIR = Path(__file__).resolve().parent / "demo"
WEIGHTS, METADATA = "weights.safetensors", "metadata.json"

log = logging.getLogger(__name__)


def bundled_models(root: Path = DEMO_DIR) -> list[str]:
    """Names of the bundled models (folders of ``root`` holding weights and metadata)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / WEIGHTS).is_file() and (p / METADATA).is_file())


def install_demo_models(store: CheckpointStore, root: Path = DEMO_DIR) -> list[str]:
    """Import each bundled model the store lacks (names compared ignoring case, as the store
    does); returns the names imported. A model that cannot be imported is logged and skipped:
    the server serves without it."""
    present = {name.lower() for name in store.list_models()}
    installed = []
    for name in bundled_models(root):
        if name.lower() in present:
            continue
        folder = root / name
        try:
            metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
            version = store.save(name, load_file(str(folder / WEIGHTS)), metadata)
        except (OSError, ValueError, StoreError) as exc:
            log.warning("demo model %r not imported: %s", name, exc)
            continue
        log.info("imported the demo model %r as version %d", name, version)
        installed.append(name)
    return installed
