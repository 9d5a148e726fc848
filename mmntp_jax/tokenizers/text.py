"""Text tokenizers over the unified vocabulary.

`ByteTokenizer` needs no training: one id per UTF-8 byte, placed in the text
range of the `Vocab`. Special tokens are never produced from user text: a
literal "<eos>" in the text is five bytes.
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.data.vocab import Vocab


class ByteTokenizer:
    """UTF-8 bytes ↔ ids in `vocab`'s text range (which must hold 256 ids)."""

    kind = "bytes"

    def __init__(self, vocab: Vocab | None = None):
        self.vocab = vocab or Vocab.build(text=256)
        if self.vocab.range_size("text") != 256:
            raise ValueError(f"ByteTokenizer needs a text range of 256 ids, the vocab has {self.vocab.range_size('text')}")
        self.offset = self.vocab.offset("text")

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, np.uint8).astype(np.int32) + self.offset

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        keep = ids[(ids >= self.offset) & (ids < self.offset + 256)]
        return bytes((keep - self.offset).astype(np.uint8).tolist()).decode("utf-8", errors="replace")
