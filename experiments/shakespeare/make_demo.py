"""Turn a trained version into the bundled demo model: float16 weights plus metadata.

    python make_demo.py STORE_DIR MODEL [--version N] [--command "charlstm train ..."]

Writes service/demo/shakespeare/{weights.safetensors,metadata.json}. The metadata keeps the
trained version's (architecture, vocabulary, training config, curve) and adds a ``demo``
entry: the storage dtype and the validation loss measured on the standard split after the
float16 round trip (the engine casts to float32 on load), next to the float32 one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from charlstm.engine import CharLSTM, ModelConfig, Vocab
from charlstm.engine.evaluate import mean_loss
from charlstm.service.store import LocalStore
from charlstm.service.store.codec import STORE_FIELDS

from common import HERE, load_text, split

DEMO = HERE.parents[1] / "service" / "demo" / "shakespeare"


def val_loss(config: ModelConfig, tensors: dict, vocab: Vocab, text: str) -> float:
    model = CharLSTM.from_state_dict(config, tensors)
    return mean_loss(model, vocab.encode(text[split(text):]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("model")
    p.add_argument("--version", type=int)
    p.add_argument("--command", default="", help="the command that trained it, for the record")
    a = p.parse_args()
    checkpoint = LocalStore(Path(a.store)).load(a.model, a.version)
    meta = {k: v for k, v in checkpoint.metadata.items() if k not in STORE_FIELDS}
    config = ModelConfig.from_dict(meta["model_config"])
    vocab, text = Vocab(meta["vocab"]), load_text()
    half = {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in checkpoint.tensors.items()}
    full_loss = val_loss(config, checkpoint.tensors, vocab, text)
    half_loss = val_loss(config, half, vocab, text)
    meta["demo"] = {
        "source": f"{a.model} version {checkpoint.version}",
        "storage_dtype": "float16",
        "val_loss_float32": full_loss,
        "val_loss_float16": half_loss,
        "val_split": "tinyshakespeare.txt, last 10% (characters 1,003,854 onwards)",
        "trained_with": a.command,
    }
    DEMO.mkdir(parents=True, exist_ok=True)
    save_file(half, str(DEMO / "weights.safetensors"))
    (DEMO / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = (DEMO / "weights.safetensors").stat().st_size
    print(f"val loss float32 {full_loss:.4f}, float16 {half_loss:.4f}; weights {size / 1e6:.2f} MB -> {DEMO}")


if __name__ == "__main__":
    main()
