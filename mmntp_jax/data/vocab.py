"""The unified vocabulary: specials, modality markers, one id range per modality.

Layout (ids ascending):
    0 <pad>  1 <bos>  2 <eos>  3 <boi>  4 <eoi>  5 <boa>  6 <eoa>  7 <bov>  8 <eov>
    9 … n_specials-1   reserved specials (<reserved_k>)
    then one contiguous range per modality, in the order given: text, image, …

`to_global(modality, codes)` maps tokenizer-local codes into the range of that
modality; `to_local(ids)` maps back and tells the modality of every id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITIES = ("text", "image", "audio", "video")
MODALITY_ID = {name: i for i, name in enumerate(MODALITIES)}
SPECIAL_ID = -1  # modality reported by to_local for special tokens
NAMED_SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<bov>", "<eov>")
BLOCK_MARKERS = {"image": ("<boi>", "<eoi>"), "audio": ("<boa>", "<eoa>"), "video": ("<bov>", "<eov>")}
DEFAULT_N_SPECIALS = 16


@dataclass(frozen=True)
class Vocab:
    """Id ranges per modality. `ranges` is ((modality, size), …) in id order."""

    ranges: tuple[tuple[str, int], ...] = (("text", 256),)
    n_specials: int = DEFAULT_N_SPECIALS

    def __post_init__(self):
        if self.n_specials < len(NAMED_SPECIALS):
            raise ValueError(f"Vocab.n_specials: need ≥ {len(NAMED_SPECIALS)}, got {self.n_specials}")
        seen = set()
        for name, size in self.ranges:
            if name not in MODALITIES:
                raise ValueError(f"Vocab.ranges: unknown modality {name!r}; expected one of {', '.join(MODALITIES)}")
            if name in seen:
                raise ValueError(f"Vocab.ranges: modality {name!r} appears twice")
            if int(size) <= 0:
                raise ValueError(f"Vocab.ranges: modality {name!r} has size {size}; expected > 0")
            seen.add(name)

    @classmethod
    def build(cls, text: int = 256, image: int = 0, audio: int = 0, video: int = 0, n_specials: int = DEFAULT_N_SPECIALS):
        sizes = {"text": text, "image": image, "audio": audio, "video": video}
        return cls(tuple((m, s) for m, s in sizes.items() if s), n_specials)

    # -- sizes and offsets -------------------------------------------------
    @property
    def size(self) -> int:
        return self.n_specials + sum(size for _, size in self.ranges)

    def offset(self, modality: str) -> int:
        start = self.n_specials
        for name, size in self.ranges:
            if name == modality:
                return start
            start += size
        raise KeyError(f"vocab has no {modality!r} range; it has {', '.join(n for n, _ in self.ranges)}")

    def range_size(self, modality: str) -> int:
        return dict(self.ranges)[modality] if modality in dict(self.ranges) else 0

    def special(self, name: str) -> int:
        if name in NAMED_SPECIALS:
            return NAMED_SPECIALS.index(name)
        if name.startswith("<reserved_") and name.endswith(">"):
            k = int(name[len("<reserved_"):-1])
            if 0 <= k < self.n_specials - len(NAMED_SPECIALS):
                return len(NAMED_SPECIALS) + k
        raise KeyError(f"unknown special token {name!r}; named specials: {', '.join(NAMED_SPECIALS)}")

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def special_names(self) -> list[str]:
        reserved = [f"<reserved_{k}>" for k in range(self.n_specials - len(NAMED_SPECIALS))]
        return list(NAMED_SPECIALS) + reserved

    # -- mapping -----------------------------------------------------------
    def to_global(self, modality: str, codes) -> np.ndarray:
        codes = np.asarray(codes)
        size = self.range_size(modality)
        if size == 0:
            self.offset(modality)  # raises the descriptive KeyError
        if codes.size and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"{modality} codes must lie in [0, {size}); got range [{codes.min()}, {codes.max()}]")
        return (codes + self.offset(modality)).astype(np.int32)

    def to_local(self, ids):
        """Returns (modality_ids, local_codes); specials get modality SPECIAL_ID and their own id."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"token ids must lie in [0, {self.size}); got range [{ids.min()}, {ids.max()}]")
        modality = np.full(ids.shape, SPECIAL_ID, np.int32)
        local = ids.astype(np.int32).copy()
        for name, size in self.ranges:
            start = self.offset(name)
            inside = (ids >= start) & (ids < start + size)
            modality[inside] = MODALITY_ID[name]
            local[inside] = ids[inside] - start
        return modality, local

    def check_model_vocab(self, vocab_size: int) -> None:
        if vocab_size < self.size:
            raise ValueError(f"model.vocab_size={vocab_size} does not cover the vocabulary of {self.size} ids; set model.vocab_size ≥ {self.size}")

    # -- persistence -------------------------------------------------------
    def to_json(self) -> str:
        layout = [{"modality": m, "start": self.offset(m), "size": s} for m, s in self.ranges]
        return json.dumps({"n_specials": self.n_specials, "specials": self.special_names(), "ranges": layout, "size": self.size}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        data = json.loads(text)
        return cls(tuple((r["modality"], int(r["size"])) for r in data["ranges"]), int(data["n_specials"]))

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "Vocab":
        return cls.from_json(Path(path).read_text())
