"""Output head: logits and cross-entropy with z-loss, chunked so that the
[B, T, V] logits never exist at once.

Dimensions: B batch, T time, N chunks, C chunk of T, D model dim, V vocab,
S allowed specials per position.

`token_stats` / `token_losses` (evaluation, tests) scan over chunks of C
positions; under differentiation each chunk's logits are recomputed
(jax.checkpoint). `fused_cross_entropy` (training) is the fused linear
cross-entropy: while it computes each chunk's logits it also forms the chunk's
gradient dlogits = w·(softmax − onehot) + z·w·2·lse·softmax and contracts it at
once into d(hidden) and d(W), so the backward pass is a scaling of stored
gradients: the logit layer costs 3 matmuls per chunk (as unchunked), one exp
pass and O(B·C·V) memory. Log-softmax math is float32.

`legal` = (lo_BT, hi_BT, specials_BTS) (see `legal_ids.py`) restricts the
trained softmax of each position to the ids [lo, hi) plus its specials: the
chunk's logits outside are set to -inf before the log-partition, so the
restriction costs one compare-and-select per chunk and no [B, T, V] array.
Per-token statistics: `loss`, `lse`, `correct` (1 when the target's logit is
the row's maximum, i.e. argmax == target up to exact ties; read off the
log-partition's max: a separate argmax pass made the peer-shape step 1.13×
slower) under the full softmax always, and `loss_restricted`, `lse_restricted`,
`correct_restricted` when `legal` is given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmntp_jax.model.legal_ids import restrict

RESTRICTED = "_restricted"


def logits(hidden_BTD, w_DV):
    return jnp.einsum("BTD,DV->BTV", hidden_BTD, w_DV.astype(hidden_BTD.dtype), preferred_element_type=jnp.float32)


def _softmax_stats(logits_BCV, targets_BC, suffix: str = "") -> dict:
    max_BC = jax.lax.stop_gradient(jnp.max(logits_BCV, axis=-1))
    lse_BC = max_BC + jnp.log(jnp.sum(jnp.exp(logits_BCV - max_BC[..., None]), axis=-1))
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    correct_BC = (target_logit_BC >= max_BC).astype(jnp.float32)
    return {f"loss{suffix}": lse_BC - target_logit_BC, f"lse{suffix}": lse_BC, f"correct{suffix}": correct_BC}


def _chunk_stats(logits_BCV, targets_BC, legal):
    """(per-token statistics, the logits of the trained softmax) for one chunk."""
    stats = _softmax_stats(logits_BCV, targets_BC)
    if legal is None:
        return stats, logits_BCV
    restricted_BCV = restrict(logits_BCV, *legal)
    stats.update(_softmax_stats(restricted_BCV, targets_BC, RESTRICTED))
    return stats, restricted_BCV


def trained(stats):
    """(loss, lse) [B, T] of the trained softmax: the restricted one when `stats` has it."""
    suffix = RESTRICTED if f"loss{RESTRICTED}" in stats else ""
    return stats[f"loss{suffix}"], stats[f"lse{suffix}"]


def _split(x, n: int):
    """[B, T, …] → [N, B, T/N, …]."""
    return x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]).swapaxes(0, 1)


def _merge(x):
    """[N, B, C, …] → [B, N·C, …]."""
    return x.swapaxes(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2], *x.shape[3:])


def _num_chunks(t: int, chunk: int) -> int:
    chunk = chunk if chunk and chunk < t else t
    if t % chunk:
        raise ValueError(f"loss chunk {chunk} does not divide sequence length {t}")
    return t // chunk


def token_stats(hidden_BTD, w_DV, targets_BT, chunk: int = 0, legal=None) -> dict:
    """Per-token statistics, float32 [B, T] each (see the module docstring).

    chunk = 0 computes all positions at once; otherwise T must be a multiple of
    `chunk` (callers pick a divisor, see `pick_chunk`).
    """
    n = _num_chunks(hidden_BTD.shape[1], chunk)
    if n == 1:
        return _chunk_stats(logits(hidden_BTD, w_DV), targets_BT, legal)[0]
    body = jax.checkpoint(lambda _, xs: (None, _chunk_stats(logits(xs[0], w_DV), xs[1], xs[2])[0]))
    _, stats_N = jax.lax.scan(body, None, jax.tree.map(lambda x: _split(x, n), (hidden_BTD, targets_BT, legal)))
    return jax.tree.map(_merge, stats_N)


def token_losses(hidden_BTD, w_DV, targets_BT, chunk: int = 0, legal=None):
    """Per-token cross-entropy and log-partition of the trained softmax (restricted
    when `legal` is given), both float32 [B, T]."""
    return trained(token_stats(hidden_BTD, w_DV, targets_BT, chunk, legal))


def pick_chunk(seq_len: int, vocab_size: int, requested: int = 0, budget_elements: int = 2**22) -> int:
    """The loss chunk: `requested`, else the largest divisor of T keeping B·C·V small."""
    if requested:
        return requested
    if seq_len * vocab_size <= budget_elements:
        return 0
    target = max(1, budget_elements // vocab_size)
    divisors = [c for c in range(1, seq_len + 1) if seq_len % c == 0 and c <= target]
    return max(divisors) if divisors else 0


def _fused_chunk(h_BCD, w_DV, targets_BC, weights_BC, legal, z_weight: float):
    """Statistics and gradients of Σ w·loss + z·Σ w·lse² (trained softmax) for one chunk."""
    stats, trained_BCV = _chunk_stats(logits(h_BCD, w_DV), targets_BC, legal)
    _, lse_BC = trained(stats)
    probs_BCV = jnp.exp(trained_BCV - lse_BC[..., None])
    scale_BC = weights_BC * (1.0 + 2.0 * z_weight * lse_BC)
    onehot_BCV = jax.nn.one_hot(targets_BC, w_DV.shape[1], dtype=jnp.float32)
    dlogits_BCV = probs_BCV * scale_BC[..., None] - onehot_BCV * weights_BC[..., None]
    dlogits_BCV = dlogits_BCV.astype(h_BCD.dtype)
    dh_BCD = jnp.einsum("BCV,DV->BCD", dlogits_BCV, w_DV.astype(h_BCD.dtype))
    dw_DV = jnp.einsum("BCD,BCV->DV", h_BCD, dlogits_BCV, preferred_element_type=jnp.float32)
    return stats, dh_BCD, dw_DV


def _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, legal, z_weight, chunk):
    n = _num_chunks(h_BTD.shape[1], chunk)

    def body(dw_DV, xs):
        h_BCD, targets_BC, weights_BC, legal_chunk = xs
        stats, dh_BCD, dw_chunk = _fused_chunk(h_BCD, w_DV, targets_BC, weights_BC, legal_chunk, z_weight)
        return dw_DV + dw_chunk, (stats, dh_BCD)

    xs = jax.tree.map(lambda x: _split(x, n), (h_BTD, targets_BT, weights_BT, legal))
    dw_DV, (stats_N, dh_NBCD) = jax.lax.scan(body, jnp.zeros(w_DV.shape, jnp.float32), xs)
    stats = jax.tree.map(_merge, stats_N)
    loss_BT, lse_BT = trained(stats)
    total = jnp.sum(weights_BT * loss_BT) + z_weight * jnp.sum(weights_BT * jnp.square(lse_BT))
    return (total, stats), (_merge(dh_NBCD), dw_DV.astype(w_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy(h_BTD, w_DV, targets_BT, weights_BT, z_weight: float, chunk: int, legal=None):
    """(Σ w·loss + z·Σ w·lse² of the trained softmax, per-token statistics {name: [B, T]});
    differentiable in the first output with respect to h_BTD and w_DV only."""
    outputs, _ = _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, legal, z_weight, chunk)
    return outputs


def _fused_fwd(h_BTD, w_DV, targets_BT, weights_BT, z_weight, chunk, legal=None):
    return _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, legal, z_weight, chunk)


def _fused_bwd(z_weight, chunk, residuals, cotangents):
    dh_BTD, dw_DV = residuals
    g = cotangents[0]
    return (g * dh_BTD).astype(dh_BTD.dtype), (g * dw_DV).astype(dw_DV.dtype), None, None, None


fused_cross_entropy.defvjp(_fused_fwd, _fused_bwd)
