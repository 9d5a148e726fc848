"""Output head: logits and cross-entropy with z-loss, chunked so that the
[B, T, V] logits never exist at once.

Dimensions: B batch, T time, N chunks, C chunk of T, D model dim, V vocab.

`token_losses` (evaluation, tests) scans over chunks of C positions; under
differentiation each chunk's logits are recomputed (jax.checkpoint).
`fused_cross_entropy` (training) is the fused linear cross-entropy: while it
computes each chunk's logits it also forms the chunk's gradient
dlogits = w·(softmax − onehot) + z·w·2·lse·softmax and contracts it at once
into d(hidden) and d(W), so the backward pass is a scaling of stored
gradients: the logit layer costs 3 matmuls per chunk (as unchunked), one exp
pass and O(B·C·V) memory. Log-softmax math is float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def logits(hidden_BTD, w_DV):
    return jnp.einsum("BTD,DV->BTV", hidden_BTD, w_DV.astype(hidden_BTD.dtype), preferred_element_type=jnp.float32)


def _chunk_losses(hidden_BCD, w_DV, targets_BC):
    logits_BCV = logits(hidden_BCD, w_DV)
    lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    return lse_BC - target_logit_BC, lse_BC


def token_losses(hidden_BTD, w_DV, targets_BT, chunk: int = 0):
    """Per-token cross-entropy and log-partition, both float32 [B, T].

    chunk = 0 computes all positions at once; otherwise T must be a multiple of
    `chunk` (callers pick a divisor, see `pick_chunk`).
    """
    b, t, d = hidden_BTD.shape
    if not chunk or chunk >= t:
        return _chunk_losses(hidden_BTD, w_DV, targets_BT)
    if t % chunk:
        raise ValueError(f"loss chunk {chunk} does not divide sequence length {t}")
    n = t // chunk
    hidden_NBCD = hidden_BTD.reshape(b, n, chunk, d).swapaxes(0, 1)
    targets_NBC = targets_BT.reshape(b, n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda _, xs: (None, _chunk_losses(xs[0], w_DV, xs[1])))
    _, (loss_NBC, lse_NBC) = jax.lax.scan(body, None, (hidden_NBCD, targets_NBC))
    return loss_NBC.swapaxes(0, 1).reshape(b, t), lse_NBC.swapaxes(0, 1).reshape(b, t)


def pick_chunk(seq_len: int, vocab_size: int, requested: int = 0, budget_elements: int = 2**22) -> int:
    """The loss chunk: `requested`, else the largest divisor of T keeping B·C·V small."""
    if requested:
        return requested
    if seq_len * vocab_size <= budget_elements:
        return 0
    target = max(1, budget_elements // vocab_size)
    divisors = [c for c in range(1, seq_len + 1) if seq_len % c == 0 and c <= target]
    return max(divisors) if divisors else 0


def _fused_chunk(h_BCD, w_DV, targets_BC, weights_BC, z_weight: float):
    """Loss terms and gradients of Σ w·loss + z·Σ w·lse² for one chunk."""
    logits_BCV = logits(h_BCD, w_DV)
    lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    loss_BC = lse_BC - target_logit_BC
    scale_BC = weights_BC * (1.0 + 2.0 * z_weight * lse_BC)
    onehot_BCV = jax.nn.one_hot(targets_BC, w_DV.shape[1], dtype=jnp.float32)
    dlogits_BCV = probs_BCV * scale_BC[..., None] - onehot_BCV * weights_BC[..., None]
    dlogits_BCV = dlogits_BCV.astype(h_BCD.dtype)
    dh_BCD = jnp.einsum("BCV,DV->BCD", dlogits_BCV, w_DV.astype(h_BCD.dtype))
    dw_DV = jnp.einsum("BCD,BCV->DV", h_BCD, dlogits_BCV, preferred_element_type=jnp.float32)
    return loss_BC, lse_BC, dh_BCD, dw_DV


def _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, z_weight, chunk):
    b, t, d = h_BTD.shape
    chunk = chunk if chunk and chunk < t else t
    if t % chunk:
        raise ValueError(f"loss chunk {chunk} does not divide sequence length {t}")
    n = t // chunk
    split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)

    def body(dw_DV, xs):
        loss_BC, lse_BC, dh_BCD, dw_chunk = _fused_chunk(*xs[:1], w_DV, *xs[1:], z_weight)
        return dw_DV + dw_chunk, (loss_BC, lse_BC, dh_BCD)

    dw_DV, (loss_NBC, lse_NBC, dh_NBCD) = jax.lax.scan(
        body, jnp.zeros(w_DV.shape, jnp.float32), (split(h_BTD), split(targets_BT), split(weights_BT))
    )
    merge = lambda x: x.swapaxes(0, 1).reshape(b, t, *x.shape[3:])
    loss_BT, lse_BT = merge(loss_NBC), merge(lse_NBC)
    total = jnp.sum(weights_BT * loss_BT) + z_weight * jnp.sum(weights_BT * jnp.square(lse_BT))
    return (total, loss_BT, lse_BT), (merge(dh_NBCD), dw_DV.astype(w_DV.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_cross_entropy(h_BTD, w_DV, targets_BT, weights_BT, z_weight: float, chunk: int):
    """(Σ w·loss + z·Σ w·lse², per-token loss [B, T], lse [B, T]); differentiable in
    the first output with respect to h_BTD and w_DV only."""
    outputs, _ = _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, z_weight, chunk)
    return outputs


def _fused_fwd(h_BTD, w_DV, targets_BT, weights_BT, z_weight, chunk):
    return _fused_forward(h_BTD, w_DV, targets_BT, weights_BT, z_weight, chunk)


def _fused_bwd(z_weight, chunk, residuals, cotangents):
    dh_BTD, dw_DV = residuals
    g = cotangents[0]
    return (g * dh_BTD).astype(dh_BTD.dtype), (g * dw_DV).astype(dw_DV.dtype), None, None


fused_cross_entropy.defvjp(_fused_fwd, _fused_bwd)
