"""Output head: logits and a chunked cross-entropy with z-loss.

Dimensions: B batch, T time, C chunk of T, D model dim, V vocab.

`token_losses` never materialises the [B, T, V] logits: it scans over chunks
of C positions, and each chunk's logits are recomputed in the backward pass
(jax.checkpoint) instead of being stored. Log-softmax math is float32.
"""

from __future__ import annotations

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
