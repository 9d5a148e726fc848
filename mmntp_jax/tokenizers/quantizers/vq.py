"""Vector quantization: nearest-code lookup with straight-through or rotation-trick gradients.

Dimension legend: ... any leading axes, N tokens (leading axes flattened),
D input channels, K code dimension (= D unless factorised), C codebook size.

The codebook is either a float array [C, K], learned by gradient through the
codebook loss, or a `VQState`, learned by EMA with `ema_update` (then no
gradient reaches the codebook and only the commitment loss is returned).
Distances are a matmul against precomputed code norms
(argmin ‖z − e‖² = argmax 2 z·e − ‖e‖²), chunked over tokens; the lookup is a
gather and the EMA statistics a segment sum, never a one-hot product. Quantization math runs in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mmntp_jax.tokenizers.quantizers.stats import AxisName, code_counts, mse, usage_metrics
from mmntp_jax.tokenizers.quantizers.types import QuantOut, VQState, l2norm


def codebook_array(codebook: jax.Array | VQState) -> tuple[jax.Array, bool]:
    """(float32 codebook [C, K], learnable?) for an array or an EMA state."""
    if isinstance(codebook, VQState):
        return lax.stop_gradient(codebook.codebook_CK.astype(jnp.float32)), False
    codebook = jnp.asarray(codebook)
    if codebook.ndim != 2:
        raise ValueError(f"vq: codebook must be [codebook_size, dim], got shape {codebook.shape}")
    return codebook.astype(jnp.float32), True


def to_latent(z: jax.Array, *, cosine: bool = False, project_in_DK: jax.Array | None = None) -> jax.Array:
    """The float32 vectors that are looked up: optional projection, then unit norm when cosine."""
    z_NK = z.astype(jnp.float32)
    if project_in_DK is not None:
        z_NK = jnp.einsum("...d,dk->...k", z_NK, project_in_DK.astype(jnp.float32))
    return l2norm(z_NK) if cosine else z_NK


def nearest_codes(z_NK: jax.Array, codebook_CK: jax.Array, *, cosine: bool = False, chunk_size: int = 1024) -> jax.Array:
    """int32 [N]: index of the nearest code (L2, or max cosine when both are unit-norm).

    Scores are 2 z·e − ‖e‖² (one matmul against precomputed norms), taken
    `chunk_size` tokens at a time so the [N, C] score matrix is never
    materialised whole (it stays in cache and memory stays O(chunk·C)).
    """
    z_NK = lax.stop_gradient(z_NK)
    codebook_CK = lax.stop_gradient(codebook_CK)
    sq_norm_C = jnp.sum(jnp.square(codebook_CK), axis=-1)

    def best(z_nK):
        scores_nC = jnp.einsum("nk,ck->nc", z_nK, codebook_CK)
        if not cosine:
            scores_nC = 2.0 * scores_nC - sq_norm_C
        return jnp.argmax(scores_nC, axis=-1).astype(jnp.int32)

    n = z_NK.shape[0]
    if n <= chunk_size:
        return best(z_NK)
    pad = (-n) % chunk_size
    z_NK = jnp.pad(z_NK, ((0, pad), (0, 0)))
    return lax.map(best, z_NK.reshape(-1, chunk_size, z_NK.shape[-1])).reshape(-1)[:n]


def sample_codes(key: jax.Array, z_NK: jax.Array, codebook_CK: jax.Array, temperature: float, *, cosine: bool = False) -> jax.Array:
    """int32 [N]: codes drawn from softmax(-distance / temperature) (Gumbel-max), as in vector-quantize-pytorch."""
    z_NK = lax.stop_gradient(z_NK)
    codebook_CK = lax.stop_gradient(codebook_CK)
    sim_NC = jnp.einsum("nk,ck->nc", z_NK, codebook_CK)
    if cosine:
        logits_NC = sim_NC
    else:
        d2_NC = jnp.sum(jnp.square(z_NK), -1, keepdims=True) - 2.0 * sim_NC + jnp.sum(jnp.square(codebook_CK), -1)
        logits_NC = -jnp.sqrt(jnp.maximum(d2_NC, 1e-8))
    noisy_NC = logits_NC / temperature + jax.random.gumbel(key, logits_NC.shape, jnp.float32)
    return jnp.argmax(noisy_NC, axis=-1).astype(jnp.int32)


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
    """Value q, gradient identity to z."""
    return z + lax.stop_gradient(q - z)


def rotation_trick(z_NK: jax.Array, q_NK: jax.Array) -> jax.Array:
    """Value q; gradient to z through the rotation+rescale taking z to q (Fifty et al. 2024, sec 4.2)."""
    norm_z = jnp.maximum(jnp.linalg.norm(z_NK, axis=-1, keepdims=True), 1e-6)
    norm_q = jnp.maximum(jnp.linalg.norm(q_NK, axis=-1, keepdims=True), 1e-6)
    u_NK = lax.stop_gradient(z_NK / norm_z)
    qh_NK = lax.stop_gradient(q_NK / norm_q)
    w_NK = lax.stop_gradient(l2norm(u_NK + qh_NK))
    e_NK = z_NK
    rotated_NK = (
        e_NK
        - 2.0 * jnp.sum(e_NK * w_NK, -1, keepdims=True) * w_NK
        + 2.0 * jnp.sum(e_NK * u_NK, -1, keepdims=True) * qh_NK
    )
    return rotated_NK * lax.stop_gradient(norm_q / norm_z)


def vq(
    z: jax.Array,
    codebook: jax.Array | VQState,
    *,
    beta: float = 0.25,
    codebook_weight: float = 1.0,
    cosine: bool = False,
    rotation: bool = False,
    sample_temperature: float = 0.0,
    key: jax.Array | None = None,
    project_in_DK: jax.Array | None = None,
    project_out_KD: jax.Array | None = None,
    dead_threshold: float = 2.0,
    axis_name: AxisName = None,
) -> QuantOut:
    """Quantizes `z[..., D]` to its nearest code; codes have shape `z.shape[:-1]`.

    beta: commitment weight, aux += beta·‖z − sg(q)‖².
    codebook_weight: aux += codebook_weight·‖sg(z) − q‖² (array codebooks only).
    cosine: compare unit vectors (codebook normalised on lookup).
    rotation: the rotation trick instead of the straight-through estimator.
    sample_temperature, key: with a key, draw codes from softmax(−distance/T)
        (training; T may be a traced scalar for annealing; each device of
        `axis_name` draws independent noise). No key: argmin.
    project_in_DK / project_out_KD: factorised codes — project to K dims,
        (normalise with cosine=True), look up, project back.
    dead_threshold: a code counts as dead in `metrics` when its EMA cluster
        size is below this (EMA states) or it was unused in the batch (arrays).
    axis_name: mapped mesh axes the tokens are split over (see `stats`).
    """
    codebook_CK, learnable = codebook_array(codebook)
    if cosine:
        codebook_CK = l2norm(codebook_CK)
    lead = z.shape[:-1]
    z_NK = to_latent(z, cosine=cosine, project_in_DK=project_in_DK)
    z_NK = z_NK.reshape(-1, z_NK.shape[-1])
    if z_NK.shape[-1] != codebook_CK.shape[-1]:
        raise ValueError(f"vq: input has {z_NK.shape[-1]} channels after projection but the codebook has {codebook_CK.shape[-1]}")
    sampling = key is not None and not (isinstance(sample_temperature, (int, float)) and sample_temperature <= 0.0)
    if sampling:
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))
        codes_N = sample_codes(key, z_NK, codebook_CK, sample_temperature, cosine=cosine)
    else:
        codes_N = nearest_codes(z_NK, codebook_CK, cosine=cosine)
    q_NK = jnp.take(codebook_CK, codes_N, axis=0)
    commitment = mse(z_NK, lax.stop_gradient(q_NK), axis_name)
    aux_loss = beta * commitment
    metrics = {"commitment": lax.stop_gradient(commitment)}
    if learnable:
        codebook_loss = mse(lax.stop_gradient(z_NK), q_NK, axis_name)
        aux_loss = aux_loss + codebook_weight * codebook_loss
        metrics["codebook_loss"] = lax.stop_gradient(codebook_loss)
    zq_NK = rotation_trick(z_NK, q_NK) if rotation else straight_through(z_NK, q_NK)
    if project_out_KD is not None:
        zq_NK = jnp.einsum("nk,kd->nd", zq_NK, project_out_KD.astype(jnp.float32))
    counts_C = code_counts(codes_N, codebook_CK.shape[0], axis_name)
    metrics.update(usage_metrics(counts_C))
    if isinstance(codebook, VQState):
        metrics["dead_codes"] = jnp.sum((codebook.cluster_size_C < dead_threshold).astype(jnp.float32))
    else:
        metrics["dead_codes"] = jnp.sum((counts_C == 0).astype(jnp.float32))
    z_q = zq_NK.reshape(*lead, zq_NK.shape[-1]).astype(z.dtype)
    return QuantOut(z_q, codes_N.reshape(lead), aux_loss, metrics)


def vq_codes_to_vectors(
    codes: jax.Array, codebook: jax.Array | VQState, *, cosine: bool = False, project_out_KD: jax.Array | None = None
) -> jax.Array:
    """int codes [...] → float32 vectors [..., K] (or [..., D] with project_out_KD)."""
    codebook_CK, _ = codebook_array(codebook)
    if cosine:
        codebook_CK = l2norm(codebook_CK)
    vectors = jnp.take(codebook_CK, codes.astype(jnp.int32), axis=0)
    if project_out_KD is not None:
        vectors = jnp.einsum("...k,kd->...d", vectors, project_out_KD.astype(jnp.float32))
    return vectors
