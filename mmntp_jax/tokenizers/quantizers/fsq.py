"""Finite scalar quantization (Mentzer et al. 2023), bit-compatible with vector-quantize-pytorch.

Dimension legend: ... any leading axes, L number of channels (= len(levels)).

Each channel l is bounded by a shifted tanh to (L_l - 1)/2·(1 + eps) and
rounded to one of `levels[l]` values; the implicit codebook is the product
grid, of size prod(levels). The code index is mixed-radix with the FIRST
channel least significant, exactly as vector-quantize-pytorch, so the same
input gives the same integer codes there and here. Math runs in float32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmntp_jax.tokenizers.quantizers.stats import MAX_USAGE_CODES, AxisName, code_counts, usage_metrics
from mmntp_jax.tokenizers.quantizers.types import QuantOut

# Recommended levels per target codebook size (Mentzer et al. 2023, table 1).
FSQ_PRESETS = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def fsq_levels(codebook_size: int) -> tuple[int, ...]:
    """The preset levels for a target codebook size 2^8 … 2^16."""
    if codebook_size not in FSQ_PRESETS:
        raise ValueError(f"no FSQ preset for codebook_size={codebook_size}; expected one of {sorted(FSQ_PRESETS)}")
    return FSQ_PRESETS[codebook_size]


def _check_levels(levels: Sequence[int], preserve_symmetry: bool) -> np.ndarray:
    levels_L = np.asarray(list(levels), np.int64)
    if levels_L.ndim != 1 or levels_L.size == 0 or np.any(levels_L < 2):
        raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {list(levels)}")
    if np.any(levels_L == 2) and not preserve_symmetry:
        raise ValueError(f"FSQ levels {list(levels)} contain 2: use preserve_symmetry=True or levels >= 3")
    if np.prod(levels_L) >= 2**31:
        raise ValueError(f"FSQ codebook size prod({list(levels)}) does not fit in int32")
    return levels_L


def _basis(levels_L: np.ndarray) -> np.ndarray:
    return np.cumprod(np.concatenate([[1], levels_L[:-1]])).astype(np.int64)


def weighted_channel_sum(x_L: jax.Array, weights_L) -> jax.Array:
    """Σ_l x[..., l]·w_l written out per channel: XLA fuses it elementwise, where a
    reduction over a short minor axis would be a slow separate loop."""
    total = x_L[..., 0] * int(weights_L[0])
    for i in range(1, x_L.shape[-1]):
        total = total + x_L[..., i] * int(weights_L[i])
    return total


def _round_ste(x: jax.Array) -> jax.Array:
    return x + lax.stop_gradient(jnp.round(x) - x)


def _floor_ste(x: jax.Array) -> jax.Array:
    return x + lax.stop_gradient(jnp.floor(x) - x)


def fsq_bound(z_L: jax.Array, levels: Sequence[int], eps: float = 1e-3, hard_clamp: bool = False) -> jax.Array:
    """The tanh bound before rounding: values in [-(L-1)/2·(1+eps) - offset, …]."""
    levels_L = jnp.asarray(np.asarray(levels), jnp.int32)
    half_l = (levels_L - 1).astype(jnp.float32) * jnp.float32(1 + eps) / 2
    offset = jnp.where(levels_L % 2 == 0, jnp.float32(0.5), jnp.float32(0.0))
    if hard_clamp:
        return jnp.clip(z_L, -1.0, 1.0) * half_l - offset
    shift = jnp.arctanh(offset / half_l)
    return jnp.tanh(z_L + shift) * half_l - offset


def fsq(
    z: jax.Array,
    levels: Sequence[int],
    *,
    preserve_symmetry: bool = False,
    hard_clamp: bool = False,
    noise_dropout: float = 0.0,
    key: jax.Array | None = None,
    axis_name: AxisName = None,
) -> QuantOut:
    """Quantizes `z[..., L]` with `len(levels) == L`; codes have shape `z.shape[:-1]`.

    preserve_symmetry: the symmetric grid of arXiv:2411.19842 (allows level 2).
    hard_clamp: clamp to [-1, 1] instead of tanh (for pre-bounded inputs).
    noise_dropout, key: with probability `noise_dropout` per element, replace
        the rounding by uniform noise in [-0.5, 0.5) (needs preserve_symmetry).
    aux_loss is 0 (FSQ needs none); metrics: usage and perplexity of the
    implicit codebook in this batch (codebooks up to 2^20 codes).
    """
    levels_L = _check_levels(levels, preserve_symmetry)
    if z.shape[-1] != levels_L.size:
        raise ValueError(f"fsq: input last axis {z.shape[-1]} must equal len(levels)={levels_L.size} for levels {list(levels)}")
    if noise_dropout > 0 and (key is None or not preserve_symmetry):
        raise ValueError("fsq: noise_dropout > 0 needs a `key` and preserve_symmetry=True")
    z_L = z.astype(jnp.float32)
    lv = jnp.asarray(levels_L, jnp.float32)
    if preserve_symmetry:
        t = jnp.clip(z_L, -1.0, 1.0) if hard_clamp else jnp.tanh(z_L)
        bracket = _floor_ste((lv - 1) * (t + 1) / 2 + 0.5)
        zhat_L = (2.0 / (lv - 1)) * bracket - 1.0
        level_idx = jnp.round((zhat_L + 1.0) / (2.0 / (lv - 1)))
    else:
        half_width = jnp.asarray(levels_L // 2, jnp.float32)
        zhat_L = _round_ste(fsq_bound(z_L, levels_L, hard_clamp=hard_clamp)) / half_width
        level_idx = zhat_L * half_width + half_width
    codes = jnp.round(weighted_channel_sum(lax.stop_gradient(level_idx), _basis(levels_L))).astype(jnp.int32)
    if noise_dropout > 0:
        k_mask, k_noise = jax.random.split(key)
        mask = jax.random.bernoulli(k_mask, noise_dropout, zhat_L.shape)
        noise = jax.random.uniform(k_noise, zhat_L.shape, jnp.float32) - 0.5
        zhat_L = jnp.clip(jnp.where(mask, zhat_L + noise, zhat_L), -1.0, 1.0)
    size = int(np.prod(levels_L))
    metrics = usage_metrics(code_counts(codes, size, axis_name)) if size <= MAX_USAGE_CODES else {}
    return QuantOut(zhat_L.astype(z.dtype), codes, jnp.float32(0.0), metrics)


def fsq_codes_to_vectors(codes: jax.Array, levels: Sequence[int], *, preserve_symmetry: bool = False) -> jax.Array:
    """Inverse of the index: int codes [...] → float32 vectors [..., L] on the FSQ grid."""
    levels_L = _check_levels(levels, preserve_symmetry)
    level_idx = (codes[..., None].astype(jnp.int32) // jnp.asarray(_basis(levels_L), jnp.int32)) % jnp.asarray(levels_L, jnp.int32)
    level_idx = level_idx.astype(jnp.float32)
    if preserve_symmetry:
        return level_idx * (2.0 / (jnp.asarray(levels_L, jnp.float32) - 1)) - 1.0
    half_width = jnp.asarray(levels_L // 2, jnp.float32)
    return (level_idx - half_width) / half_width


def fsq_implicit_codebook(levels: Sequence[int], *, preserve_symmetry: bool = False) -> jax.Array:
    """All prod(levels) code vectors, [C, L], row c = code index c."""
    size = int(np.prod(_check_levels(levels, preserve_symmetry)))
    return fsq_codes_to_vectors(jnp.arange(size, dtype=jnp.int32), levels, preserve_symmetry=preserve_symmetry)
