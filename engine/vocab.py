"""Character vocabulary: Unicode code points <-> integer ids.

Id 0 (``Vocab.UNK_ID``) is reserved for characters the corpus never had: ``encode`` maps any
such character to it (it never raises on text), and ``decode`` turns it into ``UNK_CHAR``
(U+FFFD). The known characters take ids 1..len(chars) in the order of ``chars``, which is the
serialised form of the vocabulary.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .config import ConfigError


def _code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as uint32 (N,), without a Python loop over characters."""
    # surrogatepass: a lone surrogate (possible in a Python str) is still one code point.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocab:
    """Maps characters to ids 1..len(chars); id 0 is the unknown character."""

    UNK_ID: int = 0
    UNK_CHAR: str = "\ufffd"

    def __init__(self, chars: str):
        if not isinstance(chars, str):
            raise ConfigError("chars", f"chars must be a str (got {type(chars).__name__})")
        if len(set(chars)) != len(chars):
            raise ConfigError("chars", "chars must not repeat a character")
        self.chars: str = chars
        self.size: int = len(chars) + 1
        cps = _code_points(chars)  # (n,)
        order = np.argsort(cps, kind="stable")
        self._sorted_cps = cps[order]  # (n,) ascending, for a searchsorted lookup
        self._sorted_ids = (order + 1).astype(np.int64)  # (n,) id of each sorted code point
        # decode table: id -> code point, so decoding is one gather plus one bytes.decode
        self._id_to_cp = np.concatenate([_code_points(self.UNK_CHAR), cps]).astype("<u4")

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """Every distinct code point of ``text``, sorted by code point."""
        if not isinstance(text, str):
            raise ConfigError("text", f"text must be a str (got {type(text).__name__})")
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, chars={self.chars[:40]!r}{'...' if len(self.chars) > 40 else ''})"

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` as int64 (N,); characters not in the vocabulary become UNK_ID."""
        if not isinstance(text, str):
            raise ConfigError("text", f"text must be a str (got {type(text).__name__})")
        cps = _code_points(text)  # (N,)
        if len(self._sorted_cps) == 0:
            return np.zeros(len(cps), dtype=np.int64)
        pos = np.searchsorted(self._sorted_cps, cps)  # (N,)
        np.minimum(pos, len(self._sorted_cps) - 1, out=pos)
        known = self._sorted_cps[pos] == cps
        return np.where(known, self._sorted_ids[pos], self.UNK_ID)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of ``ids`` (any integer sequence); UNK_ID decodes to UNK_CHAR."""
        ids = np.asarray(ids if not isinstance(ids, (int, np.integer)) else [ids])
        if ids.size == 0:
            return ""
        if ids.dtype.kind not in "iu":
            raise ConfigError("ids", f"ids must be integers (got dtype {ids.dtype})")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.size:
            raise ConfigError("ids", f"ids must be in [0, {self.size - 1}] (got {lo if lo < 0 else hi})")
        return self._id_to_cp[ids.ravel()].tobytes().decode("utf-32-le", "surrogatepass")

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` are not in the vocabulary."""
        return int(np.count_nonzero(self.encode(text) == self.UNK_ID))
