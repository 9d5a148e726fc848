"""Reading and writing media for the tokenizers: images, WAV audio, numpy arrays.

Every reader raises `MediaError` naming the file and what was expected.
Images become float32 `[H, W, 3]` in [0, 1]; audio float32 `[L]` in [-1, 1].

`fit_image` is how a user image meets a tokenizer of size S: the shorter side is
resized to S (Lanczos), then the centre S×S square is cropped.

`photo_crops` cuts random S×S crops from the colour and grey photographs that
scikit-image ships (no downloads); the right-most quarter of every photograph
is held out for the eval split, and flat crops (pixel std < 0.02) are redrawn.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_CROP_STD = 0.02
PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "immunohistochemistry", "moon", "rocket")


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file."""


# ----------------------------------------------------------------------------
# Images


def load_image(path) -> np.ndarray:
    """PNG/JPEG → float32 `[H, W, 3]` in [0, 1] (grey and RGBA become RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path}: not found")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MediaError(f"image file {path}: cannot be decoded as PNG/JPEG ({err})") from None
    return np.asarray(rgb, np.float32) / 255.0


def fit_image(image_HWC: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` (Lanczos) and centre-crops `size`×`size`."""
    from PIL import Image

    H, W = image_HWC.shape[:2]
    scale = size / min(H, W)
    new_h, new_w = max(size, round(H * scale)), max(size, round(W * scale))
    img = Image.fromarray(np.clip(image_HWC * 255 + 0.5, 0, 255).astype(np.uint8))
    if (new_h, new_w) != (H, W):
        img = img.resize((new_w, new_h), Image.LANCZOS)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.asarray(img, np.float32)[top:top + size, left:left + size] / 255.0


def image_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder}: not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MediaError(f"image folder {folder}: holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def load_image_folder(folder, size: int) -> tuple[np.ndarray, list[Path]]:
    """Every PNG/JPEG under `folder`, fitted to `size`: `[N, size, size, 3]` and the paths."""
    files = image_files(folder)
    return np.stack([fit_image(load_image(p), size) for p in files]), files


def save_image(path, image_HWC: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.asarray(image_HWC) * 255 + 0.5, 0, 255).astype(np.uint8)).save(path)


def save_gif(path, frames_THWC: np.ndarray, fps: int = 8) -> None:
    """Frames in [0, 1] as an animated GIF that loops."""
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(np.clip(np.asarray(f) * 255 + 0.5, 0, 255).astype(np.uint8)) for f in frames_THWC]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def image_grid(rows_NHWC: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Rows of images side by side with a 1-pixel gap, nearest-neighbour upscaled."""
    lines = []
    for row_NHWC in rows_NHWC:
        N, H, W, C = row_NHWC.shape
        padded = np.ones((N, H + 1, W + 1, C), np.float32)
        padded[:, :H, :W] = row_NHWC
        lines.append(padded.transpose(1, 0, 2, 3).reshape(H + 1, N * (W + 1), C))
    grid_HWC = np.concatenate(lines, 0)
    return grid_HWC.repeat(scale, 0).repeat(scale, 1)


def photo_crops(n: int, size: int = 32, *, seed: int = 0, split: str = "train", return_positions: bool = False):
    """`n` random `size`×`size` crops of scikit-image's sample photographs, `[N, S, S, 3]`
    (and, with return_positions, their (photo index, top, left))."""
    if split not in ("train", "eval"):
        raise ValueError(f"split {split!r} is not one of train, eval")
    photos = _photographs()
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    crops, positions = np.empty((n, size, size, 3), np.float32), []
    while len(positions) < n:
        k = int(rng.integers(len(photos)))
        H, W = photos[k].shape[:2]
        cut = (3 * W) // 4
        lo, hi = (0, cut - size) if split == "train" else (cut, W - size)
        top, left = int(rng.integers(0, H - size + 1)), int(rng.integers(lo, hi + 1))
        crop = photos[k][top:top + size, left:left + size]
        if crop.std() < MIN_CROP_STD:  # flat (e.g. black sky) crops say nothing about a tokenizer
            continue
        crops[len(positions)] = crop
        positions.append((k, top, left))
    return (crops, positions) if return_positions else crops


_PHOTO_CACHE: list[np.ndarray] = []


def _photographs() -> list[np.ndarray]:
    if not _PHOTO_CACHE:
        import skimage.data

        for name in PHOTOGRAPHS:
            photo = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
            _PHOTO_CACHE.append(np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3])
    return _PHOTO_CACHE


# ----------------------------------------------------------------------------
# Audio and arrays


def load_wav(path, sample_rate: int) -> np.ndarray:
    """Mono float32 `[L]` in [-1, 1]; the file's rate must equal `sample_rate`."""
    import scipy.io.wavfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WAV file {path}: not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
            rate, data = scipy.io.wavfile.read(path)
    except (ValueError, EOFError, OSError) as err:
        raise MediaError(f"WAV file {path}: cannot be read ({err})") from None
    if rate != sample_rate:
        raise MediaError(f"WAV file {path}: sample rate {rate} Hz, expected {sample_rate} Hz (resample it first)")
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    data = np.asarray(data, np.float32)
    return data.mean(-1) if data.ndim == 2 else data


def save_wav(path, audio_L: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV."""
    import scipy.io.wavfile

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(audio_L, np.float64) * 32768), -32768, 32767).astype(np.int16)
    scipy.io.wavfile.write(path, sample_rate, pcm)


def load_array(path) -> np.ndarray:
    """A `.npy` file (no pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {path}: not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MediaError(f"array file {path}: not a readable .npy file ({err})") from None
    if array.dtype.kind not in "fiub":
        raise MediaError(f"array file {path}: dtype {array.dtype} is not numeric")
    return array.astype(np.float32) if array.dtype.kind == "f" else array
