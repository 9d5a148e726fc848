"""Learning an EMA codebook: EMA update, k-means(++) initialisation, dead-code restart.

Dimension legend: ... any leading axes, N tokens, D input channels, K code
dimension, C codebook size.

These are pure state updates kept apart from the forward pass: a training
step runs `vq` (or `rvq`/`group_vq`/`msvq`), then feeds the same input and
the returned codes here. All statistics are reduced over `axis_name` (see
`stats`), so the codebook is identical on every device and equal to the
1-device result on the same global batch. Semantics follow
vector-quantize-pytorch: cluster_size and embed_sum are EMAs with `decay`,
codes are embed_sum / Laplace-smoothed cluster_size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mmntp_jax.tokenizers.quantizers.stats import AxisName, code_counts, global_sum, sample_row_weighted, sample_rows
from mmntp_jax.tokenizers.quantizers.types import VQState, l2norm
from mmntp_jax.tokenizers.quantizers.vq import nearest_codes, to_latent


def _flat_latent(z: jax.Array, cosine: bool, project_in_DK: jax.Array | None) -> jax.Array:
    z_NK = lax.stop_gradient(to_latent(z, cosine=cosine, project_in_DK=project_in_DK))
    return z_NK.reshape(-1, z_NK.shape[-1])


def cluster_stats(z_NK: jax.Array, codes_N: jax.Array, codebook_size: int, axis_name: AxisName = None) -> tuple[jax.Array, jax.Array]:
    """(counts [C], sums [C, K]) of the tokens per code, over all devices; codes < 0 are ignored."""
    codes_N = codes_N.reshape(-1)
    keep_N = (codes_N >= 0).astype(jnp.float32)
    sums_CK = jax.ops.segment_sum(z_NK * keep_N[:, None], jnp.maximum(codes_N, 0), num_segments=codebook_size)
    return code_counts(codes_N, codebook_size, axis_name), global_sum(sums_CK, axis_name)


def laplace_smoothing(counts_C: jax.Array, eps: float) -> jax.Array:
    """(counts + eps) / (total + C·eps) · total: avoids dividing by zero for unused codes."""
    total = jnp.sum(counts_C, axis=-1, keepdims=True)
    return (counts_C + eps) / (total + counts_C.shape[-1] * eps) * total


def ema_update(
    state: VQState,
    z: jax.Array,
    codes: jax.Array,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    cosine: bool = False,
    project_in_DK: jax.Array | None = None,
    axis_name: AxisName = None,
) -> VQState:
    """One EMA step from the tokens `z[..., D]` that produced `codes[...]` (same options as the `vq` call)."""
    z_NK = _flat_latent(z, cosine, project_in_DK)
    counts_C, sums_CK = cluster_stats(z_NK, codes, state.codebook_size, axis_name)
    cluster_size_C = state.cluster_size_C * decay + counts_C * (1.0 - decay)
    embed_sum_CK = state.embed_sum_CK * decay + sums_CK * (1.0 - decay)
    codebook_CK = embed_sum_CK / laplace_smoothing(cluster_size_C, eps)[:, None]
    if cosine:
        codebook_CK = l2norm(codebook_CK)
    return VQState(codebook_CK, cluster_size_C, embed_sum_CK, state.initted)


def restart_dead_codes(
    state: VQState,
    z: jax.Array,
    key: jax.Array,
    *,
    threshold: float = 2.0,
    reset_cluster_size: float | None = None,
    cosine: bool = False,
    project_in_DK: jax.Array | None = None,
    axis_name: AxisName = None,
) -> VQState:
    """Replaces every code whose EMA cluster size is below `threshold` by a random token of the batch."""
    reset = threshold if reset_cluster_size is None else reset_cluster_size
    z_NK = _flat_latent(z, cosine, project_in_DK)
    samples_CK = sample_rows(key, z_NK, state.codebook_size, axis_name)
    dead_C = state.cluster_size_C < threshold
    return VQState(
        jnp.where(dead_C[:, None], samples_CK, state.codebook_CK),
        jnp.where(dead_C, jnp.float32(reset), state.cluster_size_C),
        jnp.where(dead_C[:, None], samples_CK * reset, state.embed_sum_CK),
        state.initted,
    )


def kmeans_plusplus(key: jax.Array, z_NK: jax.Array, num_clusters: int, *, cosine: bool = False, axis_name: AxisName = None) -> jax.Array:
    """k-means++ seeding: each next centre drawn with probability ∝ squared distance to the nearest chosen one."""
    z_NK = z_NK.astype(jnp.float32)
    keys = jax.random.split(key, num_clusters)
    first_K = sample_rows(keys[0], z_NK, 1, axis_name)[0]
    means_CK = jnp.zeros((num_clusters, z_NK.shape[-1]), jnp.float32).at[0].set(first_K)
    sq_norm_N = jnp.sum(jnp.square(z_NK), -1)

    def dist_to(c_K):
        if cosine:
            return jnp.maximum(1.0 - z_NK @ c_K, 0.0)
        return jnp.maximum(sq_norm_N - 2.0 * (z_NK @ c_K) + jnp.sum(jnp.square(c_K)), 0.0)

    def body(i, carry):
        means_CK, best_N = carry
        nxt_K = sample_row_weighted(keys[i], best_N, z_NK, axis_name)
        return means_CK.at[i].set(nxt_K), jnp.minimum(best_N, dist_to(nxt_K))

    means_CK, _ = lax.fori_loop(1, num_clusters, body, (means_CK, dist_to(first_K)))
    return means_CK


def kmeans(
    key: jax.Array,
    z: jax.Array,
    num_clusters: int,
    *,
    iters: int = 10,
    plusplus: bool = True,
    cosine: bool = False,
    axis_name: AxisName = None,
) -> tuple[jax.Array, jax.Array]:
    """Seeding then `iters` Lloyd steps on the tokens `z[..., K]`; returns (means [C, K], counts [C]).

    plusplus: k-means++ seeding (C sequential passes over the tokens; robust);
        False draws the C seeds uniformly from the tokens (one pass; what
        vector-quantize-pytorch does), cheaper for very large codebooks.
    Clusters left empty keep their previous centre. With cosine the tokens and
    centres are unit vectors (spherical k-means).
    """
    z_NK = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    if cosine:
        z_NK = l2norm(z_NK)
    if plusplus:
        means_CK = kmeans_plusplus(key, z_NK, num_clusters, cosine=cosine, axis_name=axis_name)
    else:
        means_CK = sample_rows(key, z_NK, num_clusters, axis_name)

    def step(means_CK, _):
        codes_N = nearest_codes(z_NK, means_CK, cosine=cosine)
        counts_C, sums_CK = cluster_stats(z_NK, codes_N, num_clusters, axis_name)
        new_CK = sums_CK / jnp.maximum(counts_C, 1.0)[:, None]
        if cosine:
            new_CK = l2norm(new_CK)
        return jnp.where((counts_C > 0)[:, None], new_CK, means_CK), counts_C

    means_CK, counts_IC = lax.scan(step, means_CK, None, length=max(iters, 1))
    return means_CK, counts_IC[-1]


def kmeans_init(
    state: VQState,
    z: jax.Array,
    key: jax.Array,
    *,
    iters: int = 10,
    plusplus: bool = True,
    cosine: bool = False,
    project_in_DK: jax.Array | None = None,
    axis_name: AxisName = None,
) -> VQState:
    """Fills a not-yet-initialised state from this batch by k-means; returns initialised states unchanged.

    Safe to call every step under jit (a `lax.cond` on `state.initted`).
    """
    z_NK = _flat_latent(z, cosine, project_in_DK)

    def init(state):
        means_CK, counts_C = kmeans(key, z_NK, state.codebook_size, iters=iters, plusplus=plusplus, cosine=cosine, axis_name=axis_name)
        return VQState(means_CK, counts_C, means_CK * counts_C[:, None], jnp.asarray(True))

    return lax.cond(state.initted, lambda s: s, init, state)
