"""A run's modality tokenizers as codecs between media items and unified-vocabulary ids.

Dimensions: N codes of one block, H height, W width, L samples, C channels.

`RunMedia(workdir, vocab)` finds `WORKDIR/tokenizers/<modality>/` (the layout the
staged job and `mmntp import` write) and loads each tokenizer on first use.
`encode(modality, items)` gives each block's global ids (without markers), laid
out as data preparation writes them (`data.tokenize.block_ids`);
`decode(modality, blocks)` the items back: images float32 `[B, H, W, 3]` in
[0, 1], audio float32 `[B, L]` in [-1, 1].

`fit` is how an item meets its tokenizer. Images of any size, grey or colour,
are fitted to the tokenizer's size as training data is. Audio (a WAV file,
mixed to mono at the tokenizer's sample rate, or an array `[L]`, `[L, 1]`,
`[L, 2]`) is cut to the clip `clip_length()` — one second at that rate, in
whole frames — keeping its start, or zero-padded at the end; `block_length`
counts the codes of exactly that clip, so every fitted clip fills one block.
Anything else (an image array of 2 or 5 channels, a 3-D audio array, a modality
without a fitter) is a one-line `MediaError` naming the item and what was
expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmntp_jax.data.tokenize import block_ids, load_media
from mmntp_jax.tokenizers.media import MediaError, fit_image

TOKENIZERS_DIR = "tokenizers"
FITTED = ("image", "audio")  # the modalities prompts may hold
AUDIO_CHANNELS = (1, 2)  # channel counts of an [L, C] audio array (channels last)


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

    def item_shape(self, modality: str) -> tuple | None:
        """The shape the tokenizer's codes are counted for and decoded to (audio: the fitted clip);
        None where the tokenizer's own default item is used."""
        return (self.clip_length(),) if modality == "audio" else None

    def block_length(self, modality: str) -> int:
        """Ids of one block between its markers (every level of every position: what `encode` gives)."""
        return self.tokenizer(modality).tokens_per_item(self.item_shape(modality))

    def block_lengths(self) -> dict[str, int]:
        return {m: self.block_length(m) for m in self.available()}

    # -- fitting ----------------------------------------------------------------
    def image_size(self) -> int:
        return int(self.tokenizer("image").config.image_size)

    def sample_rate(self) -> int:
        return int(self.tokenizer("audio").config.sample_rate)

    def clip_length(self) -> int:
        """Samples of a fitted audio item: one second (the tokenizer's default item) in whole frames."""
        config = self.tokenizer("audio").config
        return config.sample_rate // config.hop * config.hop

    def fit(self, modality: str, item, what: str = "item") -> np.ndarray:
        """An item as the tokenizer takes it: loaded when it is a path, then fitted (see the module docstring)."""
        if modality not in FITTED:
            raise MediaError(f"{what}: {modality} prompts are not supported by this run's generation; expected one of {', '.join(FITTED)}")
        self.tokenizer(modality)  # a run without one says so before any file is read
        if isinstance(item, (str, Path)):
            try:
                item = load_media(modality, item, self.sample_rate() if modality == "audio" else None)
            except (FileNotFoundError, MediaError) as err:
                raise MediaError(f"{what}: {err}") from None
        return getattr(self, f"_fit_{modality}")(np.asarray(item, np.float32), what)

    def _fit_image(self, x: np.ndarray, what: str) -> np.ndarray:
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
            raise MediaError(f"{what}: an image array of shape {x.shape}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] in [0, 1]")
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return fit_image(np.clip(x[..., :3], 0.0, 1.0), self.image_size())

    def _fit_audio(self, x: np.ndarray, what: str) -> np.ndarray:
        if x.ndim == 2 and x.shape[-1] in AUDIO_CHANNELS:
            x = x.mean(-1)
        if x.ndim != 1:
            raise MediaError(f"{what}: an audio array of shape {x.shape}; expected [L] (mono) or [L, C] with C in "
                             f"{AUDIO_CHANNELS} (channels last), samples in [-1, 1] at {self.sample_rate()} Hz")
        n = self.clip_length()
        clip = np.clip(x[:n], -1.0, 1.0)
        return np.pad(clip, (0, n - clip.size))

    # -- codes ------------------------------------------------------------------
    def encode(self, modality: str, items: list, batch_size: int = 256) -> list[np.ndarray]:
        """Global ids of each item's block (markers not included)."""
        tokenizer = self.tokenizer(modality)
        fitted = [self.fit(modality, x, f"{modality} item {i}") for i, x in enumerate(items)]
        out = []
        for start in range(0, len(fitted), batch_size):
            codes = np.asarray(tokenizer.encode(tokenizer.params, np.stack(fitted[start : start + batch_size])))
            out += [block_ids(self.vocab, modality, c) for c in codes]
        return out

    def decode(self, modality: str, blocks: list[np.ndarray]) -> np.ndarray:
        """Items `[B, …]` (float32) from blocks of global ids, each exactly one block long."""
        tokenizer = self.tokenizer(modality)
        codes = np.stack([self.vocab.to_codes(modality, np.asarray(b)).reshape(-1) for b in blocks])
        shape = self.item_shape(modality)
        options = {} if shape is None else {"shape": shape}
        return np.asarray(tokenizer.decode(tokenizer.params, codes, **options), np.float32)
