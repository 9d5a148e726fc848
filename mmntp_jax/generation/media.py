"""A run's modality tokenizers as codecs between media items and unified-vocabulary ids.

Dimensions: N codes of one block, H height, W width, C channels.

`RunMedia(workdir, vocab)` finds `WORKDIR/tokenizers/<modality>/` (the layout the
staged job and `mmntp import` write) and loads each tokenizer on first use.
`encode(modality, item)` gives the block's global ids (without markers),
`decode(modality, ids)` the item back: images float32 `[H, W, 3]` in [0, 1].
Image items of any size, grey or colour, are fitted to the tokenizer's size as
training data is; anything else (an array of 2 or 5 channels, a 4-D array) is a
`MediaError` naming the item and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmntp_jax.tokenizers.media import MediaError, fit_image, load_image

TOKENIZERS_DIR = "tokenizers"


class RunMedia:
    """The modality tokenizers of one workdir, loaded lazily."""

    def __init__(self, workdir, vocab):
        self.root, self.vocab = Path(str(workdir)) / TOKENIZERS_DIR, vocab
        self._loaded = {}

    def available(self) -> list[str]:
        """Modalities with both a tokenizer folder and an id range."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name != "text" and self.vocab.range_size(p.name))

    def tokenizer(self, modality: str):
        if modality not in self._loaded:
            from mmntp_jax.tokenizers.io import load_tokenizer

            folder = self.root / modality
            if not folder.is_dir() or not self.vocab.range_size(modality):
                have = ", ".join(self.available()) or "none"
                raise MediaError(f"this run has no {modality} tokenizer ({folder} is missing or the vocabulary has no {modality} range; it has: {have})")
            self._loaded[modality] = load_tokenizer(folder)
        return self._loaded[modality]

    def block_length(self, modality: str) -> int:
        """Ids of one block between its markers (positions × levels)."""
        return self.tokenizer(modality).tokens_per_item() * self.vocab.num_levels(modality)

    def block_lengths(self) -> dict[str, int]:
        return {m: self.block_length(m) for m in self.available()}

    # -- images ---------------------------------------------------------------
    def image_size(self) -> int:
        return int(self.tokenizer("image").config.image_size)

    def fit(self, modality: str, item, what: str = "item") -> np.ndarray:
        """An item as the tokenizer takes it (images: loaded from a path, fitted)."""
        if modality != "image":
            raise MediaError(f"{what}: {modality} prompts are not supported by this run's generation yet (images are)")
        if isinstance(item, (str, Path)):
            return fit_image(load_image(item), self.image_size())
        x = np.asarray(item, np.float32)
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
            raise MediaError(f"{what}: an image array of shape {x.shape}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] in [0, 1]")
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return fit_image(np.clip(x[..., :3], 0.0, 1.0), self.image_size())

    def encode(self, modality: str, items: list, batch_size: int = 256) -> list[np.ndarray]:
        """Global ids of each item's block (markers not included)."""
        tokenizer = self.tokenizer(modality)
        fitted = [self.fit(modality, x, f"{modality} item {i}") for i, x in enumerate(items)]
        out = []
        for start in range(0, len(fitted), batch_size):
            codes = np.asarray(tokenizer.encode(tokenizer.params, np.stack(fitted[start : start + batch_size])))
            out += [self.vocab.to_global(modality, c).reshape(-1) for c in codes]
        return out

    def decode(self, modality: str, blocks: list[np.ndarray]) -> np.ndarray:
        """Items `[B, …]` from blocks of global ids (each exactly one block long)."""
        tokenizer = self.tokenizer(modality)
        codes = np.stack([np.asarray(self.vocab.to_codes(modality, np.asarray(b))).reshape(-1) for b in blocks])
        return np.asarray(tokenizer.decode(tokenizer.params, codes))
