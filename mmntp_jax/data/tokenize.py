"""Validated documents → token records, with batched, jitted modality tokenizers.

A modality tokenizer is any object with `encode(params, x_B…) → int32 codes_B…`
(a pure function of its parameters, so it is jitted here) and a
`codebook_size` (plus `num_quantizers` for multi-level codes, whose codes end in
a level axis `[…, L]`). `ModalityEncoder` pairs it with its parameters and an
optional `preprocess(x) → x` applied to each loaded array (resize, scale).

`DocumentTokenizer.tokenize(docs)` loads every media segment of a group of
documents (a file named by several of them once), encodes items of the same modality and shape in batches of
`batch_size` (the last batch padded, so one compiled shape serves all), runs the
text tokenizer over all text segments at once, and assembles each document
(see `documents.py`). A failure is returned in place of that document as a
`ManifestError` naming manifest, line and segment; the rest go on.

Media files are read with the tokenizers' readers (`mmntp_jax.tokenizers.media`):

    image   PNG/JPEG          → float32 [H, W, 3] in [0, 1]
    audio   WAV               → float32 [L] in [-1, 1] (mono; at the file's own rate
                                unless the tokenizer has a `sample_rate`, which must then match)
    video   animated GIF/WebP → float32 [F, H, W, 3] in [0, 1]
    any     .npy              → the stored array
"""

from __future__ import annotations

import wave
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.schema import Document, ManifestError
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.tokenizers.media import MediaError, load_array, load_image, load_wav


def _load_video(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = [np.asarray(f.convert("RGB"), np.float32) / 255.0 for f in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"video file {path}: cannot be decoded ({err}); use an animated GIF/WebP or a .npy [F, H, W, C] array") from None
    return np.stack(frames)


def _wav_rate(path: Path) -> int:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getframerate()
    except (wave.Error, EOFError, OSError) as err:
        raise MediaError(f"WAV file {path}: cannot be read ({err})") from None


def load_media(modality: str, path: str | Path, sample_rate: int | None = None) -> np.ndarray:
    """Reads a media file for `modality` (see the table above)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{modality} file {path}: not found")
    if path.suffix.lower() == ".npy":
        return load_array(path)
    if modality == "image":
        return load_image(path)
    if modality == "audio":
        return load_wav(path, sample_rate or _wav_rate(path))
    return _load_video(path)


def block_ids(vocab: Vocab, modality: str, codes) -> np.ndarray:
    """One item's codes (`[N]`, `[N·L]` or `[N, L]`, position-major) → the global ids of its
    block: every level of a position together, in the vocabulary's layout."""
    levels, codes = vocab.num_levels(modality), np.asarray(codes)
    codes = codes.reshape(-1, levels) if levels > 1 else codes.reshape(-1)
    return vocab.to_global(modality, codes).reshape(-1)


@dataclass
class ModalityEncoder:
    """A modality tokenizer with its parameters, batched and (by default) jitted."""

    tokenizer: Any
    params: Any = None
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None
    batch_size: int = 16
    jit: bool = True

    def __post_init__(self):
        if not callable(getattr(self.tokenizer, "encode", None)):
            raise TypeError(f"{type(self.tokenizer).__name__} has no encode(params, x) method")
        self._fn = None

    def __getstate__(self):  # a jitted function does not pickle; rebuild it in the worker
        state = dict(self.__dict__)
        state["_fn"] = None
        return state

    def _encode_fn(self):
        if self._fn is None:
            if self.jit:
                import jax

                self._fn = jax.jit(self.tokenizer.encode)
            else:
                self._fn = self.tokenizer.encode
        return self._fn

    def encode(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Codes of each item of `xs` (all of one shape), in order."""
        fn, out = self._encode_fn(), []
        for i in range(0, len(xs), self.batch_size):
            part = xs[i : i + self.batch_size]
            batch = np.stack(part + [part[-1]] * (self.batch_size - len(part)))
            codes = np.asarray(fn(self.params, batch))
            if codes.shape[:1] != (len(batch),):
                raise ValueError(f"encode returned codes of shape {codes.shape} for a batch of {len(batch)}")
            if not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"encode returned {codes.dtype} codes; expected integers")
            out.extend(codes[: len(part)])
        return out


class ModuleTokenizer:
    """Adapts an NNX tokenizer module (`module.encode(x) → codes [B, N·Q]`, `vocab_size`,
    Q codes per position adjacent) to the pure `encode(params, x)` form; params = nnx.state."""

    def __init__(self, graphdef, vocab_size: int, codes_per_position: int = 1):
        self.graphdef, self.codebook_size, self.num_quantizers = graphdef, int(vocab_size), int(codes_per_position)

    def encode(self, params, x):
        from flax import nnx

        codes = nnx.merge(self.graphdef, params).encode(x)
        return codes.reshape(codes.shape[0], -1, self.num_quantizers) if self.num_quantizers > 1 else codes


def module_encoder(module, preprocess=None, batch_size: int = 16) -> ModalityEncoder:
    """A ModalityEncoder around an NNX tokenizer module (e.g. `ImageTokenizer`)."""
    from flax import nnx

    graphdef, params = nnx.split(module)
    config = getattr(module, "config", None)
    q = getattr(getattr(config, "quantizer", None), "codes_per_position", 1)
    return ModalityEncoder(ModuleTokenizer(graphdef, module.vocab_size, q), params, preprocess, batch_size)


def as_encoder(spec) -> ModalityEncoder:
    """A ModalityEncoder, a (tokenizer, params) pair, or a bare tokenizer."""
    if isinstance(spec, ModalityEncoder):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return ModalityEncoder(spec[0], spec[1])
    return ModalityEncoder(spec)


class DocumentTokenizer:
    """Turns `Document`s into token records over `vocab`."""

    def __init__(self, vocab: Vocab, text_tokenizer, encoders: dict | None = None, *, seq_len: int | None = None, resolve=None):
        self.vocab, self.text = vocab, text_tokenizer
        self.encoders = {name: as_encoder(e) for name, e in (encoders or {}).items()}
        for name in self.encoders:
            vocab.offset(name)  # the vocab must have a range for every tokenizer
        self.seq_len = seq_len
        self.resolve = resolve or (lambda path: path)

    def _load(self, doc: Document, k: int) -> np.ndarray:
        seg = doc.segments[k]
        field = f"segments[{k}].{'path' if seg.path is not None else 'array'}"
        encoder = self.encoders.get(seg.type)
        if encoder is None:
            raise doc.error(f"no {seg.type} tokenizer is configured (have: {', '.join(['text', *self.encoders])})", f"segments[{k}].type")
        try:
            if seg.path is not None:
                x = load_media(seg.type, self.resolve(seg.path), getattr(encoder.tokenizer, "sample_rate", None))
            else:
                x = np.asarray(seg.array, np.float32)
            return np.asarray(encoder.preprocess(x) if encoder.preprocess else x)
        except (MediaError, ValueError, FileNotFoundError) as err:
            raise doc.error(str(err), field) from None

    def _to_ids(self, doc: Document, k: int, codes: np.ndarray) -> np.ndarray:
        name = doc.segments[k].type
        try:
            ids = block_ids(self.vocab, name, codes)
        except ValueError as err:
            raise doc.error(f"{name} tokenizer output: {err}", f"segments[{k}]") from None
        if self.seq_len is not None and ids.size + 2 > self.seq_len:
            raise doc.error(f"{name} block of {ids.size + 2} tokens (with markers) is longer than seq_len={self.seq_len}; "
                            "a block is never split, so raise seq_len or use fewer tokens per item", f"segments[{k}]")
        return ids

    def tokenize(self, docs: list[Document]) -> list[dict | ManifestError]:
        results: list[Any] = [None] * len(docs)
        media: dict[tuple, list] = defaultdict(list)  # (modality, shape) → [(doc index, segment index, array)]
        first: dict[tuple, tuple[int, int]] = {}  # (modality, file) → the segment that loads it
        alias: dict[tuple[int, int], tuple[int, int]] = {}  # a segment naming a file already loaded → that segment
        for i, doc in enumerate(docs):
            try:
                for k, seg in enumerate(doc.segments):
                    if not seg.is_media:
                        continue
                    key = (seg.type, str(self.resolve(seg.path))) if seg.path is not None else None
                    if key in first:
                        alias[(i, k)] = first[key]
                        continue
                    x = self._load(doc, k)
                    media[(seg.type, x.shape, x.dtype.str)].append((i, k, x))
                    if key is not None:
                        first[key] = (i, k)
            except ManifestError as err:
                results[i] = err
        codes: dict[tuple[int, int], np.ndarray] = {}
        for (name, shape, _), items in sorted(media.items(), key=lambda kv: repr(kv[0])):
            try:
                out = self.encoders[name].encode([x for _, _, x in items])
            except Exception as err:  # the tokenizer's own error: attribute it to each document
                for i, k, _ in items:
                    results[i] = results[i] or docs[i].error(f"{name} tokenizer failed on an item of shape {shape}: {err}", f"segments[{k}]")
                continue
            codes.update({(i, k): c for (i, k, _), c in zip(items, out)})
        for (i, k), source in alias.items():
            if source in codes:
                codes[(i, k)] = codes[source]
            elif results[i] is None:
                results[i] = docs[i].error(f"{docs[i].segments[k].path}: failed in line {docs[source[0]].line}", f"segments[{k}].path")
        texts = [(i, k, s.text) for i, d in enumerate(docs) if results[i] is None for k, s in enumerate(d.segments) if s.type == "text"]
        text_ids = dict(zip([(i, k) for i, k, _ in texts], self.text.encode_batch([t for _, _, t in texts])))
        for i, doc in enumerate(docs):
            if results[i] is not None:
                continue
            try:
                parts = [(s.type, text_ids[(i, k)] if s.type == "text" else self._to_ids(doc, k, codes[(i, k)]), s.loss)
                         for k, s in enumerate(doc.segments)]
                results[i] = assemble_document(parts, self.vocab)
            except ManifestError as err:
                results[i] = err
        return results
