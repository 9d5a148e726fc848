"""Separable 2-D resampling as small matrices, numerically equal to torch's F.interpolate.

Dimension legend: B batch, H W input height/width, P Q output height/width,
D channels.

Each mode is a fixed [out, in] matrix per axis, built in numpy at trace time;
resampling a [B, H, W, D] map is one einsum, which XLA fuses and which
differentiates for free. Modes (align_corners=False throughout):
  area     — adaptive average pooling (F.interpolate mode="area"),
  bilinear — F.interpolate mode="bilinear",
  bicubic  — F.interpolate mode="bicubic" (Keys kernel, A = −0.75, border
             indices clamped).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("area", "bilinear", "bicubic")


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Weights of the 4 taps x0−1 … x0+2 for fractional offset t."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def resample_matrix(out_size: int, in_size: int, mode: str) -> np.ndarray:
    """float32 [out, in]: row i holds the weights of output i over the inputs."""
    if mode not in MODES:
        raise ValueError(f"resample mode must be one of {MODES}, got {mode!r}")
    if out_size < 1 or in_size < 1:
        raise ValueError(f"resample sizes must be >= 1, got out={out_size}, in={in_size}")
    m = np.zeros((out_size, in_size), np.float64)
    i = np.arange(out_size)
    scale = in_size / out_size
    if mode == "area":
        starts = np.floor(i * in_size / out_size).astype(int)
        ends = np.ceil((i + 1) * in_size / out_size).astype(int)
        for r, (s, e) in enumerate(zip(starts, ends)):
            m[r, s:e] = 1.0 / (e - s)
    elif mode == "bilinear":
        src = np.maximum((i + 0.5) * scale - 0.5, 0.0)
        x0 = np.floor(src).astype(int)
        x1 = np.minimum(x0 + 1, in_size - 1)
        lam = src - x0
        np.add.at(m, (i, x0), 1.0 - lam)
        np.add.at(m, (i, x1), lam)
    else:
        src = (i + 0.5) * scale - 0.5
        x0 = np.floor(src).astype(int)
        w = _cubic_weights(src - x0)
        for tap in range(4):
            np.add.at(m, (i, np.clip(x0 - 1 + tap, 0, in_size - 1)), w[:, tap])
    return m.astype(np.float32)


def resize(x_BHWD: jax.Array, size: tuple[int, int], mode: str) -> jax.Array:
    """Resamples a channels-last [B, H, W, D] map to [B, P, Q, D]."""
    p, q = size
    h, w = x_BHWD.shape[-3], x_BHWD.shape[-2]
    if (p, q) == (h, w):
        return x_BHWD
    m_PH = jnp.asarray(resample_matrix(p, h, mode))
    m_QW = jnp.asarray(resample_matrix(q, w, mode))
    return jnp.einsum("ph,...hwd,qw->...pqd", m_PH, x_BHWD, m_QW)
