"""Tiny deterministic stand-ins for modality tokenizers, and manifest builders, for the data tests.

Dimensions: B batch, H height, W width, C channels, N codes per item, L levels.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

PATCH = 4


def patch_bins(params, x_BHWC, bins: int):
    B, H, W, C = x_BHWC.shape
    p_BhwC = x_BHWC.reshape(B, H // PATCH, PATCH, W // PATCH, PATCH, C).mean(axis=(2, 4))
    mean_Bhw = p_BhwC.mean(axis=-1)
    codes_BN = jnp.clip(jnp.floor(mean_Bhw * bins * params["gain"]), 0, bins - 1)
    return codes_BN.reshape(B, -1).astype(jnp.int32)


class PatchMeanTokenizer:
    """Image → one code per 4×4 patch: the patch mean quantized to `codebook_size` bins."""

    codebook_size = 16

    def encode(self, params, x_BHWC):
        return patch_bins(params, x_BHWC, self.codebook_size)


class TwoLevelTokenizer(PatchMeanTokenizer):
    """Residual stand-in: level 0 = coarse bin of the patch mean, level 1 = the finer remainder."""

    codebook_size = 4
    num_quantizers = 2

    def encode(self, params, x_BHWC):
        fine_BN = patch_bins(params, x_BHWC, 16)
        return jnp.stack([fine_BN // 4, fine_BN % 4], axis=-1)


GAIN = 0.999  # keeps patch means away from bin edges, so float32 and float64 agree
PARAMS = {"gain": np.float32(GAIN)}


def patch_codes(image_HWC: np.ndarray, codebook: int = 16) -> np.ndarray:
    """NumPy (float64) reference of PatchMeanTokenizer for one image."""
    H, W, C = image_HWC.shape
    means = image_HWC.astype(np.float64).reshape(H // PATCH, PATCH, W // PATCH, PATCH, C).mean(axis=(1, 3, 4))
    return np.clip(np.floor(means * codebook * GAIN), 0, codebook - 1).astype(np.int32).reshape(-1)


def random_image(seed: int, size: int = 8) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 256, (size, size, 3)) / 255.0).astype(np.float32)


def save_png(path: Path, image_HWC: np.ndarray) -> None:
    Image.fromarray(np.round(image_HWC * 255).astype(np.uint8)).save(path)


def write_manifest(folder: Path, n_docs: int = 40, name: str = "m.jsonl") -> list[dict]:
    """Interleaved text / image documents (PNG files and inline arrays); returns the entries."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n_docs):
        segments = [{"type": "text", "text": f"Question {i}: what is shown?", "loss": False}]
        if i % 3 == 0:
            image = random_image(i)
            save_png(folder / f"img{i}.png", image)
            segments.append({"type": "image", "path": f"img{i}.png"})
        elif i % 3 == 1:
            segments.append({"type": "image", "array": np.round(random_image(i) * 255).astype(int).tolist()})
        segments.append({"type": "text", "text": " answer " + "x" * int(rng.integers(0, 40))})
        entries.append({"segments": segments, "id": f"doc{i}"})
    with open(folder / name, "w") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    return entries


class InlineScale:
    """Preprocess for inline arrays written as 0…255 integers: back to [0, 1]."""

    def __call__(self, x):
        return x / 255.0 if x.max() > 1.0 else x
