"""Shared result and state types of the quantizers.

Dimension legend: N tokens (all leading axes flattened), D input channels,
K code dimension, C codebook size.

`QuantOut` is what every quantizer returns. `VQState` is the EMA-learned
codebook of `vq`/`rvq`/`group_vq`/`msvq`: a plain pytree (a NamedTuple) so it
can live in an NNX Variable, be sharded, checkpointed and stacked along a
leading axis (one state per residual layer or group).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class QuantOut(NamedTuple):
    """Result of a quantizer.

    z_q: quantized vectors, same shape and dtype as the input `z`, with the
        straight-through (or rotation-trick) gradient to `z`.
    codes: int32 code indices; shape `z.shape[:-1]` (plus a trailing axis for
        residual layers or groups, see each quantizer).
    aux_loss: float32 scalar to add to the training loss (commitment,
        codebook and entropy terms, already weighted).
    metrics: dict of float32 scalars (codebook usage, perplexity, loss parts).
    """

    z_q: jax.Array
    codes: jax.Array
    aux_loss: jax.Array
    metrics: dict


class VQState(NamedTuple):
    """An EMA-learned codebook.

    codebook_CK: the codes used by the forward pass.
    cluster_size_C: EMA of how many tokens chose each code.
    embed_sum_CK: EMA of the sum of the tokens that chose each code.
    initted: bool scalar; False until k-means initialisation has run.
    """

    codebook_CK: jax.Array
    cluster_size_C: jax.Array
    embed_sum_CK: jax.Array
    initted: jax.Array

    @property
    def codebook_size(self) -> int:
        return self.codebook_CK.shape[-2]


def vq_state(codebook_CK: jax.Array, initted: bool = True) -> VQState:
    """Wraps an existing codebook as EMA state (cluster sizes start at 1)."""
    codebook_CK = jnp.asarray(codebook_CK, jnp.float32)
    cluster_size_C = jnp.ones(codebook_CK.shape[:-1], jnp.float32)
    return VQState(codebook_CK, cluster_size_C, codebook_CK, jnp.asarray(initted))


def init_vq_state(key: jax.Array, codebook_size: int, dim: int, *, kmeans: bool = False, cosine: bool = False) -> VQState:
    """A fresh EMA codebook of `codebook_size` codes of `dim` channels.

    With `kmeans=True` the codebook is zeros and `initted` is False, so
    `kmeans_init` fills it from the first batch. Otherwise codes are drawn
    Kaiming-uniform (bound sqrt(6 / dim)), as vector-quantize-pytorch does, and
    unit-normalised when `cosine`.
    """
    if codebook_size < 1 or dim < 1:
        raise ValueError(f"codebook_size and dim must be >= 1, got codebook_size={codebook_size}, dim={dim}")
    if kmeans:
        return vq_state(jnp.zeros((codebook_size, dim), jnp.float32), initted=False)
    bound = (6.0 / dim) ** 0.5
    codebook_CK = jax.random.uniform(key, (codebook_size, dim), jnp.float32, -bound, bound)
    if cosine:
        codebook_CK = l2norm(codebook_CK)
    return vq_state(codebook_CK)


def l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit-normalises the last axis (norm clamped at `eps`, as torch F.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)
