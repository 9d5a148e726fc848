"""Grouped-query self-attention with segment masks, RoPE, optional QK-norm and a KV cache.

Dimensions: B batch, T query time, S key time, D model dim, H query heads,
K kv heads, G = H / K heads per kv head, E head dim.

Masking: a query attends to a key iff both are in the same segment
(`segment_ids`, so packed documents never see each other) and the key is not
later in the row (causal). Three implementations compute the same function:
  reference  dense einsum, the readable definition used by tests;
  xla        `jax.nn.dot_product_attention` (native GQA) with the segment mask;
  blockwise  causal tiles with an online softmax: blocks above the diagonal are
             never computed and no [T, S] matrix is materialised at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.model.layers import RMSNorm, apply_rope, param
from mmntp_jax.sharding import constrain

NEG_INF = -1e30


def attention_mask(q_segments_BT, kv_segments_BS, q_index_BT, kv_index_BS):
    """[B, T, S] bool: same segment and key index ≤ query index."""
    same_BTS = q_segments_BT[:, :, None] == kv_segments_BS[:, None, :]
    causal_BTS = q_index_BT[:, :, None] >= kv_index_BS[:, None, :]
    return same_BTS & causal_BTS


def reference_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS):
    """softmax(q·kᵀ/√E + mask)·v in float32, grouped heads by reshaping."""
    b, t, h, e = q_BTHE.shape
    k = k_BSKE.shape[2]
    q_BTKGE = q_BTHE.reshape(b, t, k, h // k, e).astype(jnp.float32)
    scores_BKGTS = jnp.einsum("BTKGE,BSKE->BKGTS", q_BTKGE, k_BSKE.astype(jnp.float32)) / jnp.sqrt(e)
    scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, NEG_INF)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
    out_BTKGE = jnp.einsum("BKGTS,BSKE->BTKGE", probs_BKGTS, v_BSKE.astype(jnp.float32))
    return out_BTKGE.reshape(b, t, h, e).astype(q_BTHE.dtype)


def xla_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS):
    """jax.nn.dot_product_attention with the segment/causal mask (GQA native)."""
    return jax.nn.dot_product_attention(q_BTHE, k_BSKE, v_BSKE, mask=mask_BTS[:, None], implementation="xla")


def _tile(q_BTKGE, k_BSKE, v_BSKE, mask_BTS, carry):
    """One (query block, key block) tile of the online softmax."""
    m_BKGT, l_BKGT, acc_BTKGE = carry
    e = q_BTKGE.shape[-1]
    s_BKGTS = jnp.einsum("BTKGE,BSKE->BKGTS", q_BTKGE, k_BSKE, preferred_element_type=jnp.float32) / jnp.sqrt(e)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, NEG_INF)
    m_new = jnp.maximum(m_BKGT, s_BKGTS.max(-1))
    p_BKGTS = jnp.exp(s_BKGTS - m_new[..., None])
    correction = jnp.exp(m_BKGT - m_new)
    l_new = l_BKGT * correction + p_BKGTS.sum(-1)
    pv_BTKGE = jnp.einsum("BKGTS,BSKE->BTKGE", p_BKGTS.astype(v_BSKE.dtype), v_BSKE, preferred_element_type=jnp.float32)
    acc_new = acc_BTKGE * jnp.moveaxis(correction, -1, 1)[..., None] + pv_BTKGE
    return m_new, l_new, acc_new


def blockwise_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS, block: int):
    """Causal attention over tiles of `block`; tiles above the diagonal are skipped.

    Requires T == S (training/prefill without a cache); falls back to `xla` when
    T is not a multiple of `block` or fits in one block.
    """
    b, t, h, e = q_BTHE.shape
    kv = k_BSKE.shape[2]
    if t != k_BSKE.shape[1] or t % block or t <= block:
        return xla_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS)
    q_BTKGE = q_BTHE.reshape(b, t, kv, h // kv, e)
    outputs = []
    for i in range(t // block):
        qs = slice(i * block, (i + 1) * block)
        carry = (
            jnp.full((b, kv, h // kv, block), NEG_INF, jnp.float32),
            jnp.zeros((b, kv, h // kv, block), jnp.float32),
            jnp.zeros((b, block, kv, h // kv, e), jnp.float32),
        )
        for j in range(i + 1):
            ks = slice(j * block, (j + 1) * block)
            carry = _tile(q_BTKGE[:, qs], k_BSKE[:, ks], v_BSKE[:, ks], mask_BTS[:, qs, ks], carry)
        _, l_BKGT, acc_BTKGE = carry
        outputs.append(acc_BTKGE / jnp.moveaxis(l_BKGT, -1, 1)[..., None])
    out_BTKGE = jnp.concatenate(outputs, axis=1)
    return out_BTKGE.reshape(b, t, h, e).astype(q_BTHE.dtype)


class Attention(nnx.Module):
    """q_proj/k_proj/v_proj/o_proj (+ q_norm/k_norm), kernels [D, heads, E] and [H, E, D]."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, h, k, e = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.q_proj = param(rngs, (d, h, e), ("embed", "heads", "head_dim"), std=cfg.init_std)
        self.k_proj = param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), std=cfg.init_std)
        self.v_proj = param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"), std=cfg.init_std)
        self.o_proj = param(rngs, (h, e, d), ("heads", "head_dim", "embed"), std=out_std)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(e, cfg.norm_eps, rngs=rngs, logical_axis="head_dim")
            self.k_norm = RMSNorm(e, cfg.norm_eps, rngs=rngs, logical_axis="head_dim")
        self.qk_norm = cfg.qk_norm
        self.impl = cfg.attention
        self.block = cfg.attention_block

    def project(self, x_BTD, cos_BTE, sin_BTE):
        dtype = x_BTD.dtype
        q_BTHE = jnp.einsum("BTD,DHE->BTHE", x_BTD, self.q_proj[...].astype(dtype))
        k_BTKE = jnp.einsum("BTD,DKE->BTKE", x_BTD, self.k_proj[...].astype(dtype))
        v_BTKE = jnp.einsum("BTD,DKE->BTKE", x_BTD, self.v_proj[...].astype(dtype))
        if self.qk_norm:
            q_BTHE, k_BTKE = self.q_norm(q_BTHE), self.k_norm(k_BTKE)
        q_BTHE = constrain(apply_rope(q_BTHE, cos_BTE, sin_BTE), ("batch", "length", "heads", None))
        k_BTKE = constrain(apply_rope(k_BTKE, cos_BTE, sin_BTE), ("batch", "length", "kv_heads", None))
        v_BTKE = constrain(v_BTKE, ("batch", "length", "kv_heads", None))
        return q_BTHE, k_BTKE, v_BTKE

    def attend(self, q_BTHE, k_BSKE, v_BSKE, mask_BTS):
        if self.impl == "reference":
            return reference_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS)
        if self.impl == "blockwise":
            return blockwise_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS, self.block)
        return xla_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS)

    def output(self, out_BTHE):
        out_BTHE = constrain(out_BTHE, ("batch", "length", "heads", None))
        return jnp.einsum("BTHE,HED->BTD", out_BTHE, self.o_proj[...].astype(out_BTHE.dtype))

    def __call__(self, x_BTD, cos_BTE, sin_BTE, mask_BTS):
        q_BTHE, k_BTKE, v_BTKE = self.project(x_BTD, cos_BTE, sin_BTE)
        return self.output(self.attend(q_BTHE, k_BTKE, v_BTKE, mask_BTS))

    def decode(self, x_BTD, cos_BTE, sin_BTE, cache, index, q_segments_BT):
        """Attends T new tokens written at `index` of the cache {k, v, segment_ids}."""
        q_BTHE, k_BTKE, v_BTKE = self.project(x_BTD, cos_BTE, sin_BTE)
        k_BSKE = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BTKE.astype(cache["k"].dtype), index, axis=1)
        v_BSKE = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BTKE.astype(cache["v"].dtype), index, axis=1)
        seg_BS = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], q_segments_BT, index, axis=1)
        b, t = q_segments_BT.shape
        s = k_BSKE.shape[1]
        q_index_BT = jnp.broadcast_to(index + jnp.arange(t), (b, t))
        kv_index_BS = jnp.broadcast_to(jnp.arange(s), (b, s))
        written_BS = kv_index_BS < index + t
        mask_BTS = attention_mask(q_segments_BT, jnp.where(written_BS, seg_BS, -1), q_index_BT, kv_index_BS)
        out_BTHE = xla_attention(q_BTHE, k_BSKE.astype(q_BTHE.dtype), v_BSKE.astype(q_BTHE.dtype), mask_BTS)
        return self.output(out_BTHE), {"k": k_BSKE, "v": v_BSKE, "segment_ids": seg_BS}
