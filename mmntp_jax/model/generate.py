"""KV-cache decoding: greedy and temperature/top-k sampling, optional modality constraints.

Dimensions: B batch, P prompt length, N new tokens, S cache length, V vocab.

Prompts of different lengths are left-padded: padding gets segment id 0 and
real tokens segment 1, so padding is never attended to, and positions count
from each prompt's first real token. The prompt is run once (prefill), then
one token per step under `jax.lax.fori_loop`, reusing the cache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.model.heads import logits as head_logits
from mmntp_jax.model.init import bind


def left_pad(prompts: list[np.ndarray], pad_id: int = 0):
    """ids [B, P], segment ids [B, P] (0 padding, 1 real), positions [B, P]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    p = max(len(x) for x in prompts)
    ids = np.full((len(prompts), p), pad_id, np.int32)
    seg = np.zeros((len(prompts), p), np.int32)
    pos = np.zeros((len(prompts), p), np.int32)
    for i, x in enumerate(prompts):
        ids[i, p - len(x):] = x
        seg[i, p - len(x):] = 1
        pos[i, p - len(x):] = np.arange(len(x))
    return ids, seg, pos


def sample_token(logits_BV, key, temperature: float, top_k: int, allowed_V=None):
    """Greedy when temperature == 0; else softmax(logits / T) restricted to top-k."""
    logits_BV = logits_BV.astype(jnp.float32)
    if allowed_V is not None:
        logits_BV = jnp.where(allowed_V, logits_BV, -jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graph", "max_new_tokens", "temperature", "top_k"))
def generate_ids(graph, params, ids_BP, segments_BP, positions_BP, key, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, allowed_V=None):
    """Returns [B, N] new token ids continuing each (left-padded) prompt."""
    model = bind(graph, params)
    b, p = ids_BP.shape
    cache = model.init_cache(b, p + max_new_tokens)
    hidden_BPD, cache = model.decode(ids_BP, positions_BP, segments_BP, cache, 0)
    w_DV = model.head_kernel()
    next_pos_B = positions_BP[:, -1] + 1
    first = sample_token(head_logits(hidden_BPD[:, -1:], w_DV)[:, 0], jax.random.fold_in(key, 0), temperature, top_k, allowed_V)
    out_BN = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
        out_BN, cache = carry
        token_B1 = jax.lax.dynamic_slice_in_dim(out_BN, i - 1, 1, axis=1)
        pos_B1 = (next_pos_B + i - 1)[:, None]
        hidden_B1D, cache = model.decode(token_B1, pos_B1, jnp.ones((b, 1), jnp.int32), cache, p + i - 1)
        token = sample_token(head_logits(hidden_B1D, w_DV)[:, 0], jax.random.fold_in(key, i), temperature, top_k, allowed_V)
        return out_BN.at[:, i].set(token), cache

    out_BN, _ = jax.lax.fori_loop(1, max_new_tokens, body, (out_BN, cache))
    return out_BN


def modality_mask(vocab, modality: str, vocab_size: int, *, extra_tokens=()) -> np.ndarray:
    """[V] bool allowing only `modality`'s id range (plus `extra_tokens` such as an end marker)."""
    allowed = np.zeros(vocab_size, bool)
    start = vocab.offset(modality)
    allowed[start : start + vocab.range_size(modality)] = True
    for token in extra_tokens:
        allowed[vocab.special(token) if isinstance(token, str) else token] = True
    return allowed
