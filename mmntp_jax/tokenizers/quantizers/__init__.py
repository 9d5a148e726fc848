"""Pure-JAX quantizers: vq, rvq, group_vq, fsq, lfq, bsq, msvq.

Every quantizer is a pure function `q(z[..., D], params_or_spec, **options)
-> QuantOut(z_q, codes, aux_loss, metrics)` that jits, vmaps, differentiates
and shards; each has a matching `*_codes_to_vectors`. EMA-learned codebooks
are `VQState` pytrees updated by the separate state functions
(`ema_update`, `kmeans_init`, `restart_dead_codes`, and their rvq forms).
See docs/quantizers.md.
"""

from mmntp_jax.tokenizers.quantizers.codebook import (
    cluster_stats,
    ema_update,
    kmeans,
    kmeans_init,
    kmeans_plusplus,
    laplace_smoothing,
    restart_dead_codes,
)
from mmntp_jax.tokenizers.quantizers.fsq import FSQ_PRESETS, fsq, fsq_codes_to_vectors, fsq_implicit_codebook, fsq_levels
from mmntp_jax.tokenizers.quantizers.group import (
    group_vq,
    group_vq_codes_to_vectors,
    group_vq_ema_update,
    group_vq_kmeans_init,
    group_vq_restart_dead_codes,
)
from mmntp_jax.tokenizers.quantizers.lfq import bsq, bsq_codes_to_vectors, lfq, lfq_codes_to_vectors, lfq_entropy_terms
from mmntp_jax.tokenizers.quantizers.msvq import (
    VAR_SCALES,
    msvq,
    msvq_codes_to_vectors,
    msvq_ema_update,
    msvq_inputs,
    msvq_update,
    scale_shapes,
    split_codes,
    tokens_per_image,
)
from mmntp_jax.tokenizers.quantizers.resample import resample_matrix, resize
from mmntp_jax.tokenizers.quantizers.residual import (
    dropout_num_active,
    residual_quantize,
    rvq,
    rvq_codes_to_vectors,
    rvq_ema_update,
    rvq_kmeans_init,
    rvq_residuals,
    rvq_restart_dead_codes,
    rvq_update,
)
from mmntp_jax.tokenizers.quantizers.residual_scalar import (
    residual_fsq,
    residual_fsq_codes_to_vectors,
    residual_lfq,
    residual_lfq_codes_to_vectors,
)
from mmntp_jax.tokenizers.quantizers.types import QuantOut, VQState, init_vq_state, vq_state
from mmntp_jax.tokenizers.quantizers.vq import nearest_codes, rotation_trick, straight_through, vq, vq_codes_to_vectors

__all__ = [
    "FSQ_PRESETS",
    "QuantOut",
    "VAR_SCALES",
    "VQState",
    "bsq",
    "bsq_codes_to_vectors",
    "cluster_stats",
    "dropout_num_active",
    "ema_update",
    "fsq",
    "fsq_codes_to_vectors",
    "fsq_implicit_codebook",
    "fsq_levels",
    "group_vq",
    "group_vq_codes_to_vectors",
    "group_vq_ema_update",
    "group_vq_kmeans_init",
    "group_vq_restart_dead_codes",
    "init_vq_state",
    "kmeans",
    "kmeans_init",
    "kmeans_plusplus",
    "laplace_smoothing",
    "lfq",
    "lfq_codes_to_vectors",
    "lfq_entropy_terms",
    "msvq",
    "msvq_codes_to_vectors",
    "msvq_ema_update",
    "msvq_inputs",
    "msvq_update",
    "nearest_codes",
    "resample_matrix",
    "residual_fsq",
    "residual_fsq_codes_to_vectors",
    "residual_lfq",
    "residual_lfq_codes_to_vectors",
    "residual_quantize",
    "resize",
    "restart_dead_codes",
    "rotation_trick",
    "rvq",
    "rvq_codes_to_vectors",
    "rvq_ema_update",
    "rvq_kmeans_init",
    "rvq_residuals",
    "rvq_restart_dead_codes",
    "rvq_update",
    "scale_shapes",
    "split_codes",
    "straight_through",
    "tokens_per_image",
    "vq",
    "vq_codes_to_vectors",
    "vq_state",
]
