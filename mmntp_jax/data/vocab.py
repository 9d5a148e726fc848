"""The unified vocabulary: specials, modality markers, one id range per modality.

Layout (ids ascending):
    0 <pad>  1 <bos>  2 <eos>  3 <boi>  4 <eoi>  5 <boa>  6 <eoa>  7 <bov>  8 <eov>
    9 … n_specials-1   reserved specials (<reserved_k>)
    then one contiguous range per modality, in the order given: text, image, …

Multi-level (residual, L levels of a K-code codebook) modalities choose a layout:

    "per_level"    L sub-ranges of K ids, level l at ids [start + l·K, start + (l+1)·K);
                   range size L·K. The model sees which level a token belongs to.
    "interleaved"  one shared range of K ids for every level; range size K. The level
                   is implied by position: a block lists the codes position-major,
                   c[0,0] c[0,1] … c[0,L-1] c[1,0] …, so level = offset in block mod L.

Both layouts interleave the levels in the sequence the same way (position-major);
they differ only in the ids. `to_global(modality, codes[..., L])` maps tokenizer
codes into the modality's range; `to_codes(modality, ids)` maps back to
`[..., L]` codes; `to_local(ids)` tells the modality and range-local index of
every id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmntp_jax.errors import FileFormatError

MODALITIES = ("text", "image", "audio", "video")
MODALITY_ID = {name: i for i, name in enumerate(MODALITIES)}
SPECIAL_ID = -1  # modality reported by to_local for special tokens
NAMED_SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<bov>", "<eov>")
BLOCK_MARKERS = {"image": ("<boi>", "<eoi>"), "audio": ("<boa>", "<eoa>"), "video": ("<bov>", "<eov>")}
BEGIN_IDS = tuple(NAMED_SPECIALS.index(b) for b, _ in BLOCK_MARKERS.values())
END_IDS = tuple(NAMED_SPECIALS.index(e) for _, e in BLOCK_MARKERS.values())
LAYOUTS = ("per_level", "interleaved")
DEFAULT_N_SPECIALS = 16


@dataclass(frozen=True)
class Vocab:
    """Id ranges per modality.

    `ranges` is ((modality, range size), …) in id order; `levels` lists the
    multi-level modalities as ((modality, n_levels, layout), …).
    """

    ranges: tuple[tuple[str, int], ...] = (("text", 256),)
    n_specials: int = DEFAULT_N_SPECIALS
    levels: tuple[tuple[str, int, str], ...] = ()

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
        for name, n_levels, layout in self.levels:
            if name not in seen or name == "text":
                raise ValueError(f"Vocab.levels: {name!r} is not a non-text modality of this vocab ({', '.join(seen)})")
            if layout not in LAYOUTS:
                raise ValueError(f"Vocab.levels: layout {layout!r} for {name!r}; expected one of {', '.join(LAYOUTS)}")
            if n_levels < 1 or (layout == "per_level" and self.range_size(name) % n_levels):
                raise ValueError(f"Vocab.levels: {name!r} has {n_levels} levels, which does not divide its range of {self.range_size(name)} ids")

    @classmethod
    def build(cls, text: int = 256, image: int = 0, audio: int = 0, video: int = 0, n_specials: int = DEFAULT_N_SPECIALS,
              levels: dict[str, tuple[int, str]] | None = None):
        """Sizes are codebook sizes K; `levels` maps a modality to (L, layout)."""
        levels = dict(levels or {})
        codebooks = {"text": text, "image": image, "audio": audio, "video": video}
        ranges, level_specs = [], []
        for name, k in codebooks.items():
            if not k:
                continue
            n_levels, layout = levels.pop(name, (1, "per_level"))
            ranges.append((name, k * n_levels if layout == "per_level" else k))
            if n_levels > 1:
                level_specs.append((name, int(n_levels), layout))
        if levels:
            raise ValueError(f"Vocab.build: levels given for modalities without a codebook: {', '.join(levels)}")
        return cls(tuple(ranges), n_specials, tuple(level_specs))

    @classmethod
    def for_tokenizers(cls, text: int, tokenizers: dict, layout: str = "per_level", n_specials: int = DEFAULT_N_SPECIALS):
        """Sizes each modality range from its tokenizer's `codebook_size` and
        `num_quantizers` (levels, default 1), as vector-quantize-pytorch names them."""
        sizes, levels = {}, {}
        for name, tok in tokenizers.items():
            k = int(getattr(tok, "codebook_size", 0))
            if k <= 0:
                raise ValueError(f"{name} tokenizer {type(tok).__name__} has no positive `codebook_size` attribute")
            sizes[name] = k
            n_levels = int(getattr(tok, "num_quantizers", 1) or 1)
            if n_levels > 1:
                levels[name] = (n_levels, layout)
        return cls.build(text=text, n_specials=n_specials, levels=levels, **sizes)

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
        return dict(self.ranges).get(modality, 0)

    def num_levels(self, modality: str) -> int:
        return next((n for name, n, _ in self.levels if name == modality), 1)

    def layout(self, modality: str) -> str:
        return next((lay for name, _, lay in self.levels if name == modality), "per_level")

    def codebook_size(self, modality: str) -> int:
        """K: the number of distinct codes of one level."""
        size = self.range_size(modality)
        return size // self.num_levels(modality) if self.layout(modality) == "per_level" else size

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

    def markers(self, modality: str) -> tuple[int, int]:
        """(begin, end) marker ids of a block of `modality`."""
        begin, end = BLOCK_MARKERS[modality]
        return self.special(begin), self.special(end)

    def special_names(self) -> list[str]:
        reserved = [f"<reserved_{k}>" for k in range(self.n_specials - len(NAMED_SPECIALS))]
        return list(NAMED_SPECIALS) + reserved

    # -- mapping -----------------------------------------------------------
    def _level_shift(self, modality: str) -> np.ndarray:
        """Per-level id shift: l·K for per_level, 0 for interleaved."""
        n_levels = self.num_levels(modality)
        if self.layout(modality) == "interleaved":
            return np.zeros(n_levels, np.int64)
        return np.arange(n_levels, dtype=np.int64) * self.codebook_size(modality)

    def to_global(self, modality: str, codes) -> np.ndarray:
        """Codes → ids of the same shape; multi-level codes need a last axis of L levels."""
        codes = np.asarray(codes)
        if self.range_size(modality) == 0:
            self.offset(modality)  # raises the descriptive KeyError
        k, n_levels = self.codebook_size(modality), self.num_levels(modality)
        if n_levels > 1 and (codes.ndim == 0 or codes.shape[-1] != n_levels):
            raise ValueError(f"{modality} codes must have a last axis of {n_levels} levels; got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise ValueError(f"{modality} codes must lie in [0, {k}); got range [{codes.min()}, {codes.max()}]")
        shift = self._level_shift(modality) if n_levels > 1 else 0
        return (codes.astype(np.int64) + shift + self.offset(modality)).astype(np.int32)

    def to_codes(self, modality: str, ids) -> np.ndarray:
        """Inverse of `to_global` for a flat run of ids: returns `[N, L]` codes (`[N]` if L = 1)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        n_levels, start = self.num_levels(modality), self.offset(modality)
        if ids.size and (ids.min() < start or ids.max() >= start + self.range_size(modality)):
            raise ValueError(f"ids [{ids.min()}, {ids.max()}] are not all in the {modality} range [{start}, {start + self.range_size(modality)})")
        if n_levels == 1:
            return (ids - start).astype(np.int32)
        if ids.size % n_levels:
            raise ValueError(f"{ids.size} {modality} ids is not a whole number of {n_levels}-level positions")
        local = ids.reshape(-1, n_levels) - start - self._level_shift(modality)
        if local.size and (local.min() < 0 or local.max() >= self.codebook_size(modality)):
            raise ValueError(f"{modality} ids are not in per-level order (level l of each position in sub-range l)")
        return local.astype(np.int32)

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

    def extends(self, other: "Vocab") -> bool:
        """True if every id of `other` means the same here (its ranges are a prefix of ours)."""
        return (self.n_specials == other.n_specials and self.ranges[: len(other.ranges)] == other.ranges
                and all(spec in self.levels for spec in other.levels))

    # -- persistence -------------------------------------------------------
    def to_json(self) -> str:
        layout = []
        for m, s in self.ranges:
            entry = {"modality": m, "start": self.offset(m), "size": s}
            if self.num_levels(m) > 1:
                entry.update(levels=self.num_levels(m), layout=self.layout(m), codebook=self.codebook_size(m))
            layout.append(entry)
        return json.dumps({"n_specials": self.n_specials, "specials": self.special_names(), "ranges": layout, "size": self.size}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        data = json.loads(text)
        ranges = tuple((r["modality"], int(r["size"])) for r in data["ranges"])
        levels = tuple((r["modality"], int(r["levels"]), r["layout"]) for r in data["ranges"] if int(r.get("levels", 1)) > 1)
        return cls(ranges, int(data["n_specials"]), levels)

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "Vocab":
        """The vocabulary saved at `path`; a file that is not one is a FileFormatError naming it."""
        try:
            return cls.from_json(Path(path).read_text())
        except (ValueError, KeyError, TypeError) as err:
            raise FileFormatError(f"{path}: not a vocabulary file ({type(err).__name__}: {err}); "
                                  'expected JSON with "n_specials" and "ranges" as written by mmntp data prepare') from None
