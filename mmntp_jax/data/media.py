"""Loading a manifest's media segments into arrays for the modality tokenizers.

    image   PNG/JPEG          → float32 [H, W, 3] in [0, 1]
    audio   WAV               → float32 [L] in [-1, 1] (mono; at the file's own rate
                                unless the tokenizer names one, which must then match)
    video   animated GIF/WebP → float32 [F, H, W, 3] in [0, 1]
    any     .npy              → the stored array

The readers are those of `mmntp_jax.tokenizers.media`; every failure is a
`MediaError` (or FileNotFoundError) whose message names the file.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from mmntp_jax.tokenizers.media import MediaError, load_array, load_image, load_wav

__all__ = ["MediaError", "load_media"]


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
