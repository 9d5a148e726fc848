"""Loading media segments into arrays for the modality tokenizers.

    image   PNG/JPEG/… (Pillow) → float32 [H, W, 3] in [0, 1]
    audio   WAV (16-bit PCM)    → float32 [S] (mono) or [S, C] in [-1, 1]
    video   animated GIF/WebP   → float32 [F, H, W, 3] in [0, 1]
    any     .npy                → the stored array as float32

Inline arrays (a segment's `array`) are used as given. Every failure is a
`MediaError` whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


class MediaError(ValueError):
    """A media file that is missing, unreadable or of the wrong kind."""


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as err:
        raise MediaError(f"{path}: not a readable .npy array ({err})") from None


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{path}: corrupt or unsupported image ({err})") from None


def _load_video(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = [np.asarray(f.convert("RGB"), np.float32) / 255.0 for f in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{path}: corrupt or unsupported video ({err}); use an animated GIF/WebP or a .npy [F, H, W, C] array") from None
    return np.stack(frames)


def _load_audio(path: Path) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, n = w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as err:
        raise MediaError(f"{path}: corrupt or unsupported WAV file ({err})") from None
    if width != 2:
        raise MediaError(f"{path}: {8 * width}-bit WAV; expected 16-bit PCM (or a .npy array)")
    samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    return samples if channels == 1 else samples.reshape(-1, channels)


LOADERS = {"image": _load_image, "audio": _load_audio, "video": _load_video}


def load_media(modality: str, path: str | Path) -> np.ndarray:
    """Reads a media file for `modality` (see the table above)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        return _load_npy(path)
    return LOADERS[modality](path)
