"""Training and held-out data for tokenizer training, as in-memory arrays.

Dimension legend: N items, H, W size, C channels, T frames, L samples.

`load_split(exp, split)` returns the items of a split: images `[N, H, W, C]` and
videos `[N, T, H, W, C]` as uint8 (converted to float32 in [0, 1] per batch),
audio `[N, L]` as float32. The train split is generated (or cut, or read) once
at start-up; `batch_indices(step)` is a pure function of (seed, step) — an
epoch-wise permutation — so a resumed run sees the same batches without any
iterator state.

Image source `manifest` reads the distinct image files of a manifest's image
segments (given by `path`, resolved against the manifest's folder), in order of
first appearance, each fitted to the tokenizer's size by `media.fit_image`.
Of its n images the last eval_items are held out, but never more than n // 10
and always at least one (`manifest_heldout`); the train split is the first
train_items of the rest (all of them when train_items is larger: the epoch-wise
permutation then repeats them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmntp_jax.data import synthetic
from mmntp_jax.data.manifest import Manifest
from mmntp_jax.data.schema import ManifestError, validate_document
from mmntp_jax.tokenizers import media


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_float(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch.astype(np.float32)


def _folder_split(files: list, split: str, eval_items: int, folder) -> list:
    if len(files) <= eval_items and split == "train":
        raise media.MediaError(f"folder {folder}: {len(files)} files cannot leave a train split after holding out data.eval_items={eval_items}")
    return files[-eval_items:] if split == "eval" else files[:-eval_items]


def _fitted(path, size: int) -> np.ndarray:
    return _uint8(media.fit_image(media.load_image(path), size))


def load_split(exp, split: str) -> np.ndarray:
    """All items of `split` ("train" or "eval") for the experiment's kind and data source."""
    d, m = exp.data, exp.model
    n = d.train_items if split == "train" else d.eval_items
    if exp.kind == "image":
        if d.source == "shapes":
            return _uint8(synthetic.shapes_images(n, size=m.image_size, seed=d.seed, split=split)[0])
        if d.source == "photos":
            return _uint8(media.photo_crops(n, m.image_size, seed=d.seed, split=split))
        if d.source == "manifest":
            return _manifest_images(d, m.image_size, split)
        files = _folder_split(media.image_files(d.path), split, d.eval_items, d.path)
        return np.stack([_fitted(p, m.image_size) for p in files])
    if exp.kind == "audio":
        if d.source == "digits":
            return synthetic.digit_audio(n, sample_rate=m.sample_rate, duration=d.clip_seconds, seed=d.seed, split=split)[0]
        return _wav_clips(d, m, split)
    if d.source == "videos":
        return _uint8(synthetic.shapes_videos(n, frames=m.frames, size=m.image_size, seed=d.seed, split=split)[0])
    return _npy_videos(d, m, split)


def manifest_image_files(path) -> dict[Path, int]:
    """{image file: manifest line of its first appearance} of the manifest's image segments, in that order."""
    try:
        manifest = Manifest(path)
        files: dict[Path, int] = {}
        for line, obj in manifest.read():
            if isinstance(obj, ManifestError):
                raise obj
            for seg in validate_document(obj, str(manifest), line).segments:
                if seg.type == "image" and seg.path is not None:
                    files.setdefault(manifest.resolve(seg.path), line)
    except ValueError as err:  # ManifestError, or a manifest of an unknown format
        raise media.MediaError(str(err)) from None
    if not files:
        raise media.MediaError(f"manifest {path}: holds no image segment with a 'path'; data.source=manifest trains on those images")
    return files


def manifest_heldout(n_images: int, eval_items: int) -> int:
    """Images held out of n: the last eval_items, but never more than a tenth of them, and at least one."""
    return max(1, min(eval_items, n_images // 10))


def _manifest_images(d, size: int, split: str) -> np.ndarray:
    files = list(manifest_image_files(d.path).items())
    held = manifest_heldout(len(files), d.eval_items)
    if len(files) <= held:
        raise media.MediaError(f"manifest {d.path}: holds {len(files)} distinct image; data.source=manifest needs at least 2 (one is held out)")
    chosen = files[len(files) - held:] if split == "eval" else files[:len(files) - held][:d.train_items]
    return np.stack([_fitted_from(d.path, p, line, size) for p, line in chosen])


def _fitted_from(manifest, path: Path, line: int, size: int) -> np.ndarray:
    try:
        return _fitted(path, size)
    except (media.MediaError, FileNotFoundError) as err:
        raise media.MediaError(f"manifest {manifest}:{line}: {err}") from None


def _wav_clips(d, m, split: str) -> np.ndarray:
    """Every WAV under the folder, cut into clips of clip_seconds (rounded down to whole frames)."""
    files = sorted(Path(d.path).rglob("*.wav")) if Path(d.path).is_dir() else []
    if not files:
        raise media.MediaError(f"audio folder {d.path}: holds no .wav files")
    length = int(d.clip_seconds * m.sample_rate) // m.hop * m.hop
    clips = []
    for path in files:
        audio = media.load_wav(path, m.sample_rate)
        clips += [audio[i:i + length] for i in range(0, len(audio) - length + 1, length)]
    if not clips:
        raise media.MediaError(f"audio folder {d.path}: no file is as long as data.clip_seconds={d.clip_seconds}")
    return np.stack(_folder_split(clips, split, d.eval_items, d.path)).astype(np.float32)


def _npy_videos(d, m, split: str) -> np.ndarray:
    videos = media.load_array(d.path)
    expected = (m.frames, m.image_size, m.image_size, m.in_channels)
    if videos.ndim != 5 or tuple(videos.shape[1:]) != expected:
        raise media.MediaError(f"array file {d.path}: expected videos [N, {', '.join(map(str, expected))}], got shape {videos.shape}")
    if videos.dtype != np.uint8:
        videos = _uint8(videos)
    return np.asarray(_folder_split(list(videos), split, d.eval_items, d.path))


def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the batch of `step`: consecutive slices of a per-epoch permutation."""
    per_epoch = max(n_items // batch_size, 1)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    if n_items < batch_size:
        order = np.resize(order, batch_size)
    return order[slot * batch_size:(slot + 1) * batch_size]
