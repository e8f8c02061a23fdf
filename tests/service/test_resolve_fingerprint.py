"""ModelCache on a local store with refresh 0 (issue 7): `latest` and labels are resolved from
a cheap fingerprint while nothing changed, and every change made beside the server is seen."""

from __future__ import annotations

import time

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Vocab
from charlstm.service.model_cache import ModelCache
from charlstm.service.store import LocalStore

TEXT = "the quick brown fox\n"


def _save(store: LocalStore, seed: int) -> int:
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=4, hidden_size=8, num_layers=1)
    time.sleep(0.05)  # past the file-time tick of the previous change (the test's margin is 0)
    return store.save("m", CharLSTM(config, seed=seed).state_dict(), {
        "model_config": config.to_dict(), "vocab": vocab.chars,
        "train_config": TrainConfig().to_dict(),
        "metrics": {"step": 0, "train_loss": None, "val_loss": None, "best_val_loss": None},
        "val_curve": [], "corpus": {"sha256": "0" * 64, "characters": len(TEXT)}, "job_id": None,
    })


class CountingStore(LocalStore):
    resolves = 0

    def resolve(self, model, ref=None):
        self.resolves += 1
        return super().resolve(model, ref)


def test_latest_and_labels_follow_every_change_without_re_reading_the_store(tmp_path):
    store = CountingStore(tmp_path)
    store.FINGERPRINT_MARGIN_NS = 0  # trust file times at once (the sleeps keep them apart)
    cache = ModelCache(store, refresh_seconds=0)
    v1 = _save(store, 1)
    assert cache.get("m").version == v1
    before = store.resolves
    for _ in range(5):
        assert cache.get("m").version == v1
    assert store.resolves == before  # fingerprint hits: no listing, no manifest read

    v2 = _save(store, 2)  # written beside the cache, as a tool would
    assert cache.get("m").version == v2
    time.sleep(0.05)
    store.set_label("m", "stable", v1)
    assert cache.get("m", "stable").version == v1
    time.sleep(0.05)
    store.set_label("m", "stable", v2)
    assert cache.get("m", "stable").version == v2
    time.sleep(0.05)
    store.set_label("m", "stable", v1)
    time.sleep(0.05)
    store.delete("m", v2)
    assert cache.get("m").version == v1


def test_a_recent_change_is_not_trusted(tmp_path):
    store = CountingStore(tmp_path)  # the default margin: everything here is too recent
    cache = ModelCache(store, refresh_seconds=0)
    _save(store, 1)
    cache.get("m")
    before = store.resolves
    cache.get("m")
    assert store.resolves == before + 1


def test_recheck_period_bounds_how_long_an_outside_change_goes_unseen(tmp_path):
    store = CountingStore(tmp_path)
    store.FINGERPRINT_MARGIN_NS = 0
    cache = ModelCache(store, refresh_seconds=0, recheck_seconds=0.3)
    v1 = _save(store, 1)
    assert cache.get("m").version == v1
    looked = time.monotonic()
    v2 = _save(store, 2)  # beside the cache: unseen until the period since the last look ends
    while cache.get("m").version == v1:
        assert time.monotonic() - looked < 5, "the new version was never seen"
        time.sleep(0.01)
    assert time.monotonic() - looked >= 0.3
    assert cache.get("m").version == v2
    looks = store.resolves
    for _ in range(20):
        cache.get("m")
    assert store.resolves == looks  # within the period: the store is not read

    v3 = _save(store, 3)
    cache.forget("m")  # what the server does after a change made through it
    assert cache.get("m").version == v3
