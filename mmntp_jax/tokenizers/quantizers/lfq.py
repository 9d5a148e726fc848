"""Lookup-free quantization (Yu et al. 2023) and binary spherical quantization (Zhao et al. 2024).

Dimension legend: ... any leading axes, N tokens, G codebooks (channel
groups), K bits per codebook (codebook size 2^K), H / J high / low bit
halves (2^H · 2^J = 2^K).

Each channel is quantized to its sign (±scale); the code is the bit pattern
with the FIRST channel most significant, as vector-quantize-pytorch. BSQ
first projects each group to the sphere and uses codes ±1/√K.

The entropy loss is that of vector-quantize-pytorch: per-token distribution
softmax(2τ x·c) over all 2^K codes c, loss = mean per-token entropy −
γ · entropy of the batch-average distribution. Since x·c is a sum over bits,
the per-token distribution is a product of K independent bits, so
  per-token entropy = Σ_k H(σ(4τ·a·x_k))           (exact, O(N·K))
  batch average     = (1/N) Σ_n A_n ⊗ B_n,
where A_n, B_n are the distributions of the high and low halves of the bits:
one [2^H, N] × [N, 2^J] matmul. Memory grows as N·2^(K/2), never N·2^K, and
no distance matrix is formed. Entropies are exact (no probability clamp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmntp_jax.tokenizers.quantizers.fsq import weighted_channel_sum
from mmntp_jax.tokenizers.quantizers.stats import MAX_USAGE_CODES, AxisName, code_counts, entropy, global_mean, global_sum, mse, usage_metrics
from mmntp_jax.tokenizers.quantizers.types import QuantOut, l2norm


def _bit_matrix(bits: int) -> np.ndarray:
    """[bits, 2^bits]: entry (j, i) is bit j of i, bit 0 most significant."""
    i = np.arange(2**bits)
    return ((i[None, :] >> (bits - 1 - np.arange(bits))[:, None]) & 1).astype(np.float32)


def _split_groups(z: jax.Array, num_codebooks: int) -> jax.Array:
    if z.shape[-1] % num_codebooks:
        raise ValueError(f"lfq: input channels {z.shape[-1]} are not divisible by num_codebooks={num_codebooks}")
    bits = z.shape[-1] // num_codebooks
    if bits > 30:
        raise ValueError(f"lfq: {bits} bits per codebook do not fit an int32 code; use num_codebooks to split")
    return z.astype(jnp.float32).reshape(-1, num_codebooks, bits)


def bernoulli_entropy(logit: jax.Array) -> jax.Array:
    """Entropy of a bit with P(1) = σ(logit), stable for large |logit|."""
    p = jax.nn.sigmoid(logit)
    return p * jax.nn.softplus(-logit) + (1.0 - p) * jax.nn.softplus(logit)


def lfq_entropy_terms(logit_NGK: jax.Array, axis_name: AxisName = None) -> tuple[jax.Array, jax.Array]:
    """(mean per-token entropy, mean over codebooks of the batch-average entropy) for independent bits.

    logit_NGK: log-odds of each bit being 1. Exact for the product distribution.
    """
    per_token = global_mean(jnp.sum(bernoulli_entropy(logit_NGK), axis=-1), axis_name)
    k = logit_NGK.shape[-1]
    hi = (k + 1) // 2
    log_one, log_zero = jax.nn.log_sigmoid(logit_NGK), jax.nn.log_sigmoid(-logit_NGK)

    def half_probs(lo_bit, n_bits):
        bits = jnp.asarray(_bit_matrix(n_bits))
        l1, l0 = log_one[..., lo_bit : lo_bit + n_bits], log_zero[..., lo_bit : lo_bit + n_bits]
        return jnp.exp(jnp.einsum("ngk,ki->ngi", l1, bits) + jnp.einsum("ngk,ki->ngi", l0, 1.0 - bits))

    a_NGI = half_probs(0, hi)
    if k == hi:
        avg_GC = global_sum(jnp.sum(a_NGI, axis=0), axis_name)
    else:
        b_NGJ = half_probs(hi, k - hi)
        avg_GC = global_sum(jnp.einsum("ngi,ngj->gij", a_NGI, b_NGJ), axis_name).reshape(a_NGI.shape[1], -1)
    n = global_sum(jnp.float32(logit_NGK.shape[0]), axis_name)
    return per_token, jnp.mean(entropy(avg_GC / n))


def lfq(
    z: jax.Array,
    *,
    num_codebooks: int = 1,
    entropy_weight: float = 0.1,
    commitment_weight: float = 0.0,
    diversity_gamma: float = 1.0,
    inv_temperature: float = 100.0,
    codebook_scale: float = 1.0,
    spherical: bool = False,
    with_entropy: bool = True,
    axis_name: AxisName = None,
) -> QuantOut:
    """Quantizes `z[..., G·K]` to signs; codes are `z.shape[:-1]` (or `[..., G]` when num_codebooks > 1).

    aux_loss = entropy_weight·(per-token entropy − diversity_gamma·codebook
    entropy) + commitment_weight·‖x − sg(q)‖². with_entropy=False skips the
    entropy terms (inference). spherical=True is BSQ (see `bsq`).
    """
    x_NGK = _split_groups(z, num_codebooks)
    k = x_NGK.shape[-1]
    code_scale = codebook_scale / np.sqrt(k) if spherical else codebook_scale
    if spherical:
        x_NGK = l2norm(x_NGK) * codebook_scale
    q_NGK = jnp.where(x_NGK > 0, code_scale, -code_scale).astype(jnp.float32)
    codes_NG = weighted_channel_sum((x_NGK > 0).astype(jnp.int32), [2**b for b in range(k - 1, -1, -1)])
    zq_NGK = x_NGK + lax.stop_gradient(q_NGK - x_NGK)
    commitment = mse(x_NGK, lax.stop_gradient(q_NGK), axis_name)
    aux = commitment_weight * commitment
    metrics = {"commitment": lax.stop_gradient(commitment)}
    if with_entropy:
        per_token, codebook_entropy = lfq_entropy_terms(4.0 * inv_temperature * code_scale * x_NGK, axis_name)
        aux = aux + entropy_weight * (per_token - diversity_gamma * codebook_entropy)
        metrics["per_sample_entropy"] = lax.stop_gradient(per_token)
        metrics["codebook_entropy"] = lax.stop_gradient(codebook_entropy)
    if 2**k <= MAX_USAGE_CODES:
        usage = [usage_metrics(code_counts(codes_NG[:, g], 2**k, axis_name)) for g in range(num_codebooks)]
        metrics.update({name: sum(u[name] for u in usage) / num_codebooks for name in usage[0]})
    lead = z.shape[:-1]
    z_q = zq_NGK.reshape(*lead, -1).astype(z.dtype)
    codes = codes_NG.reshape(*lead, num_codebooks) if num_codebooks > 1 else codes_NG.reshape(lead)
    return QuantOut(z_q, codes, aux, metrics)


def bsq(z: jax.Array, **options) -> QuantOut:
    """Binary spherical quantization: unit-normalise each group, take signs, codes ±1/√K; LFQ's entropy loss."""
    return lfq(z, spherical=True, **options)


def lfq_codes_to_vectors(
    codes: jax.Array, bits: int, *, num_codebooks: int = 1, codebook_scale: float = 1.0, spherical: bool = False
) -> jax.Array:
    """int codes [...] (or [..., G]) → float32 vectors [..., G·bits] of ±scale (±scale/√bits when spherical)."""
    if num_codebooks == 1:
        codes = codes[..., None]
    shifts_K = jnp.asarray(np.arange(bits - 1, -1, -1), jnp.int32)
    bit_GK = (codes[..., None].astype(jnp.int32) >> shifts_K) & 1
    scale = codebook_scale / np.sqrt(bits) if spherical else codebook_scale
    vectors = jnp.where(bit_GK > 0, scale, -scale).astype(jnp.float32)
    return vectors.reshape(*vectors.shape[:-2], -1)


def bsq_codes_to_vectors(codes: jax.Array, bits: int, **options) -> jax.Array:
    return lfq_codes_to_vectors(codes, bits, spherical=True, **options)
