"""Residual FSQ and residual LFQ: implicit-codebook quantizers composed with `residual_quantize`.

Dimension legend: ... any leading axes, L FSQ channels, K LFQ bits, Q
quantizers (layers).

As in vector-quantize-pytorch (same codes for the same input): residual FSQ
layer i quantizes residual/s_i with s_i = levels^−i per channel (symmetric
grid, hard clamp after a soft clamp of the input by default) and scales the
result back by s_i; residual LFQ layer i uses codebook scale 2^−i. Each layer
therefore refines the previous one at a finer grid. Codes are `[..., Q]`;
dropped layers (quantizer dropout) have code −1.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.tokenizers.quantizers.fsq import fsq, fsq_codes_to_vectors
from mmntp_jax.tokenizers.quantizers.lfq import lfq, lfq_codes_to_vectors
from mmntp_jax.tokenizers.quantizers.residual import dropout_num_active, residual_quantize
from mmntp_jax.tokenizers.quantizers.stats import AxisName
from mmntp_jax.tokenizers.quantizers.types import QuantOut


def fsq_layer_scales(levels: Sequence[int], num_quantizers: int) -> np.ndarray:
    """[Q, L]: levels^−i, the grid scale of each residual FSQ layer."""
    return np.stack([np.asarray(levels, np.float32) ** -i for i in range(num_quantizers)])


def _num_active(key, num_quantizers, cutoff, num_active):
    if key is not None:
        return dropout_num_active(key, num_quantizers, cutoff)
    return num_active


def residual_fsq(
    z: jax.Array,
    levels: Sequence[int],
    num_quantizers: int,
    *,
    preserve_symmetry: bool = True,
    hard_clamp: bool = True,
    dropout_key: jax.Array | None = None,
    dropout_cutoff: int = 0,
    num_active: int | None = None,
    axis_name: AxisName = None,
) -> QuantOut:
    """Residual FSQ of `z[..., L]` with `num_quantizers` layers; z_q's gradient sums the layers' FSQ gradients.

    hard_clamp (default, as vector-quantize-pytorch): the input is first soft-
    clamped to ±(1 + 1/(L−1)) by a scaled tanh and each layer clamps to
    [−1, 1] instead of applying tanh.
    """
    scales_QL = fsq_layer_scales(levels, num_quantizers)
    z_in = z.astype(jnp.float32)
    if hard_clamp:
        clamp_L = jnp.asarray(1.0 + 1.0 / (np.asarray(levels, np.float32) - 1.0))
        z_in = jnp.tanh(z_in / clamp_L) * clamp_L

    def layer(i, residual):
        scale = jnp.asarray(scales_QL[i])
        out = fsq(residual / scale, levels, preserve_symmetry=preserve_symmetry, hard_clamp=hard_clamp, axis_name=axis_name)
        return out._replace(z_q=out.z_q.astype(jnp.float32) * scale)

    active = _num_active(dropout_key, num_quantizers, dropout_cutoff, num_active)
    out = residual_quantize(z_in, layer, num_quantizers, num_active=active, straight_through_total=False)
    return out._replace(z_q=out.z_q.astype(z.dtype))


def residual_fsq_codes_to_vectors(codes: jax.Array, levels: Sequence[int], *, preserve_symmetry: bool = True) -> jax.Array:
    """int codes [..., Q] → float32 [..., L]; codes −1 add nothing."""
    scales_QL = fsq_layer_scales(levels, codes.shape[-1])
    total = 0.0
    for i in range(codes.shape[-1]):
        v = fsq_codes_to_vectors(jnp.maximum(codes[..., i], 0), levels, preserve_symmetry=preserve_symmetry) * scales_QL[i]
        total = total + jnp.where((codes[..., i] >= 0)[..., None], v, 0.0)
    return total


def residual_lfq(
    z: jax.Array,
    num_quantizers: int,
    *,
    dropout_key: jax.Array | None = None,
    dropout_cutoff: int = 0,
    num_active: int | None = None,
    axis_name: AxisName = None,
    **lfq_options,
) -> QuantOut:
    """Residual LFQ of `z[..., K]`: layer i has codebook scale 2^−i; z_q is straight-through as a whole."""
    if "codebook_scale" in lfq_options or "num_codebooks" in lfq_options:
        raise ValueError("residual_lfq sets codebook_scale per layer and uses one codebook per layer")

    def layer(i, residual):
        return lfq(residual, codebook_scale=2.0**-i, axis_name=axis_name, **lfq_options)

    active = _num_active(dropout_key, num_quantizers, dropout_cutoff, num_active)
    return residual_quantize(z, layer, num_quantizers, num_active=active)


def residual_lfq_codes_to_vectors(codes: jax.Array, bits: int, *, spherical: bool = False) -> jax.Array:
    """int codes [..., Q] → float32 [..., K]; codes −1 add nothing."""
    total = 0.0
    for i in range(codes.shape[-1]):
        v = lfq_codes_to_vectors(jnp.maximum(codes[..., i], 0), bits, codebook_scale=2.0**-i, spherical=spherical)
        total = total + jnp.where((codes[..., i] >= 0)[..., None], v, 0.0)
    return total
