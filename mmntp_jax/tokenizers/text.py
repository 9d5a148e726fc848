"""Text tokenizers over the unified vocabulary.

`ByteTokenizer` needs no training: one id per UTF-8 byte, placed in the text
range of the `Vocab`. `BPETokenizer` is a byte-level BPE trained with the
Hugging Face `tokenizers` library and saved as a standard `tokenizer.json`; its
ids 0 … n-1 are placed in the text range.

Special tokens are never produced from user text: the unified vocabulary's
specials (<bos>, <boi>, …) live outside the text range, and a BPE tokenizer is
trained with no special or added tokens (any found in a loaded tokenizer.json
are dropped), so a literal "<eos>" in the text is ordinary text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from mmntp_jax.data.vocab import Vocab


class ByteTokenizer:
    """UTF-8 bytes ↔ ids in `vocab`'s text range (which must hold 256 ids)."""

    kind = "bytes"
    size = 256

    def __init__(self, vocab: Vocab | None = None):
        self.vocab = vocab or Vocab.build(text=256)
        if self.vocab.range_size("text") != 256:
            raise ValueError(f"ByteTokenizer needs a text range of 256 ids, the vocab has {self.vocab.range_size('text')}")
        self.offset = self.vocab.offset("text")

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, np.uint8).astype(np.int32) + self.offset

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        keep = ids[(ids >= self.offset) & (ids < self.offset + 256)]
        return bytes((keep - self.offset).astype(np.uint8).tolist()).decode("utf-8", errors="replace")

    def with_vocab(self, vocab: Vocab) -> "ByteTokenizer":
        return ByteTokenizer(vocab)


def _strip_specials(tokenizer_json: str) -> str:
    """Drops added/special tokens and any post-processor from a tokenizer.json."""
    data = json.loads(tokenizer_json)
    data["added_tokens"] = []
    data["post_processor"] = None
    return json.dumps(data)


class BPETokenizer:
    """Byte-level BPE (HF `tokenizers`); ids shifted into `vocab`'s text range."""

    kind = "bpe"

    def __init__(self, hf_tokenizer, vocab: Vocab | None = None):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(_strip_specials(hf_tokenizer.to_str()))
        self.size = self._tok.get_vocab_size(with_added_tokens=False)
        self.vocab = vocab or Vocab.build(text=self.size)
        if self.vocab.range_size("text") != self.size:
            raise ValueError(f"BPETokenizer has {self.size} tokens but the vocab's text range holds {self.vocab.range_size('text')}")
        self.offset = self.vocab.offset("text")

    # -- training and persistence -------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> "BPETokenizer":
        """Trains on an iterable of strings; deterministic for the same texts."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise ValueError(f"byte-level BPE needs vocab_size ≥ 256 (the byte alphabet), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def train_from_files(cls, paths: Iterable[str | Path], vocab_size: int, **kwargs) -> "BPETokenizer":
        """Trains on plain-text files (one document per file)."""
        def texts():
            for path in paths:
                path = Path(path)
                if not path.is_file():
                    raise FileNotFoundError(f"text file {path}: not found")
                yield path.read_text(encoding="utf-8", errors="replace")

        return cls.train(texts(), vocab_size, **kwargs)

    @classmethod
    def load(cls, path: str | Path, vocab: Vocab | None = None) -> "BPETokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path}: not found")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception on bad JSON
            raise ValueError(f"tokenizer file {path}: not a Hugging Face tokenizer.json ({err})") from None
        return cls(tok, vocab)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path), pretty=False)

    def to_str(self) -> str:
        return self._tok.to_str()

    def with_vocab(self, vocab: Vocab) -> "BPETokenizer":
        return BPETokenizer(self._tok, vocab)

    # -- use -------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32) + self.offset

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) + self.offset for e in out]

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        keep = ids[(ids >= self.offset) & (ids < self.offset + self.size)] - self.offset
        return self._tok.decode(keep.tolist(), skip_special_tokens=False)


def load_text_tokenizer(spec: str, vocab: Vocab | None = None):
    """"bytes" → ByteTokenizer; a path to tokenizer.json → BPETokenizer."""
    if spec == "bytes":
        return ByteTokenizer(vocab)
    return BPETokenizer.load(spec, vocab)
