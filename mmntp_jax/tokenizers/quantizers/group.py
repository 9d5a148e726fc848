"""Grouped (product) VQ: split the channels into G groups, quantize each with its own codebook.

Dimension legend: ... any leading axes, G groups, K channels per group, C
codebook size.

With G codebooks of size C the effective codebook is C^G at the cost of G
codes per token (the heads of vector-quantize-pytorch). Codebooks are
stacked [G, C, K] (array or `VQState` with a leading G axis) and run as one
vmapped `vq`, or one shared [C, K] codebook is used by every group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmntp_jax.tokenizers.quantizers.codebook import ema_update, kmeans_init, restart_dead_codes
from mmntp_jax.tokenizers.quantizers.stats import AxisName
from mmntp_jax.tokenizers.quantizers.types import QuantOut, VQState
from mmntp_jax.tokenizers.quantizers.vq import vq, vq_codes_to_vectors


def _groups(z: jax.Array, codebooks: jax.Array | VQState, num_groups: int | None) -> tuple[jax.Array, int, bool]:
    """(z as [..., G, K], G, shared?)."""
    cb = codebooks.codebook_CK if isinstance(codebooks, VQState) else jnp.asarray(codebooks)
    if cb.ndim == 3:
        g, shared = cb.shape[0], False
        if num_groups not in (None, g):
            raise ValueError(f"group_vq: {g} stacked codebooks but num_groups={num_groups}")
    elif cb.ndim == 2:
        if num_groups is None or num_groups < 1:
            raise ValueError("group_vq: a shared [C, K] codebook needs num_groups >= 1")
        g, shared = num_groups, True
    else:
        raise ValueError(f"group_vq: codebooks must be [G, C, K] or a shared [C, K], got shape {cb.shape}")
    if z.shape[-1] != g * cb.shape[-1]:
        raise ValueError(f"group_vq: input has {z.shape[-1]} channels, expected groups·dim = {g}·{cb.shape[-1]}")
    return z.reshape(*z.shape[:-1], g, cb.shape[-1]), g, shared


def group_vq(
    z: jax.Array,
    codebooks: jax.Array | VQState,
    *,
    num_groups: int | None = None,
    key: jax.Array | None = None,
    axis_name: AxisName = None,
    **vq_options,
) -> QuantOut:
    """Quantizes `z[..., G·K]` group by group; codes are `[..., G]`.

    aux_loss and metrics are the means over groups (so the losses equal those
    of one VQ over all channels). Options are those of `vq`; with a `key`
    (code sampling) each group draws its own noise.
    """
    z_GK, g, shared = _groups(z, codebooks, num_groups)
    if shared:
        out = vq(z_GK, codebooks, key=key, axis_name=axis_name, **vq_options)
        return out._replace(z_q=out.z_q.reshape(z.shape))
    keys = None if key is None else jax.random.split(key, g)

    def one(z_K, cb, k):
        return vq(z_K, cb, key=k, axis_name=axis_name, **vq_options)

    out = jax.vmap(one, in_axes=(z_GK.ndim - 2, 0, None if keys is None else 0))(z_GK, codebooks, keys)
    z_q = jnp.moveaxis(out.z_q, 0, -2).reshape(z.shape)
    codes = jnp.moveaxis(out.codes, 0, -1)
    metrics = {k: jnp.mean(v) for k, v in out.metrics.items()}
    return QuantOut(z_q, codes, jnp.mean(out.aux_loss), metrics)


def group_vq_codes_to_vectors(codes: jax.Array, codebooks: jax.Array | VQState, *, cosine: bool = False) -> jax.Array:
    """int codes [..., G] → float32 [..., G·K]."""
    cb = codebooks.codebook_CK if isinstance(codebooks, VQState) else jnp.asarray(codebooks)
    if cb.ndim == 2:
        v = vq_codes_to_vectors(codes, codebooks, cosine=cosine)
    else:
        v = jax.vmap(lambda c, b: vq_codes_to_vectors(c, b, cosine=cosine), in_axes=(codes.ndim - 1, 0), out_axes=-2)(codes, codebooks)
    return v.reshape(*codes.shape[:-1], -1)


def _per_group(states: VQState, z: jax.Array, fn, shared_arg, per_group_arg, num_groups: int | None):
    """fn(state, z[..., K], arg) on the shared state, or vmapped over the groups' states, channels and args."""
    z_GK, _, shared = _groups(z, states, num_groups)
    if shared:
        return fn(states, z_GK, shared_arg)
    return jax.vmap(fn, in_axes=(0, z_GK.ndim - 2, 0))(states, z_GK, per_group_arg(z_GK.shape[-2]))


def group_vq_ema_update(states: VQState, z: jax.Array, codes: jax.Array, *, num_groups: int | None = None, **ema_options) -> VQState:
    """EMA step of every group's codebook (a shared one learns from all groups)."""
    fn = lambda s, z_K, c: ema_update(s, z_K, c, **ema_options)  # noqa: E731
    return _per_group(states, z, fn, codes, lambda g: jnp.moveaxis(codes, -1, 0), num_groups)


def group_vq_restart_dead_codes(states: VQState, z: jax.Array, key: jax.Array, *, num_groups: int | None = None, **options) -> VQState:
    """Dead-code restart per group, from that group's channels."""
    fn = lambda s, z_K, k: restart_dead_codes(s, z_K, k, **options)  # noqa: E731
    return _per_group(states, z, fn, key, lambda g: jax.random.split(key, g), num_groups)


def group_vq_kmeans_init(states: VQState, z: jax.Array, key: jax.Array, *, num_groups: int | None = None, **options) -> VQState:
    """k-means initialisation per group (each group clusters its own channels)."""
    fn = lambda s, z_K, k: kmeans_init(s, z_K, k, **options)  # noqa: E731
    return _per_group(states, z, fn, key, lambda g: jax.random.split(key, g), num_groups)
