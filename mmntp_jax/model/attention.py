"""Grouped-query self-attention with the one mask builder, RoPE, optional QK-norm and a KV cache.

Dimensions: B batch, T query time, S key time, D model dim, H query heads,
K kv heads, G = H / K heads per kv head, E head dim.

Masks. Every mask is built from per-token ids (`MaskIds`: segment id, index in
the row, bidirectional group id) by one rule, `attention_mask`: a query sees a
key iff both are in the same segment (packed documents never see each other)
and the key is not later in the row, or both are in the same bidirectional
group (group 0 = none). `bidirectional_groups` gives the groups of a
`PackedBatch` for each kind of `model.attention_mask`:
  causal  none;
  prefix  a document's leading context: its positions up to and including the
          first one whose target is trained (`loss_mask`);
  block   a media block's (`block_ids`) leading context the same way, so a
          context image `<boi> … <eoi>` is bidirectional, markers included.
A group is a contiguous run in which every position but the last has an
untrained target, so no position that carries a loss sees its target or
anything after it (proof in tests/test_masks.py and docs/training.md).

Three implementations compute the same function:
  reference  dense einsum over the [B, T, S] mask, the readable definition;
  xla        `jax.nn.dot_product_attention` (native GQA) with the dense mask;
  blockwise  tiles of `block` (a row that fits in one: two of T/2, `tile_size`)
             with an online softmax: tiles on and below the
             diagonal are always computed, a tile above it only when a group
             crosses into it (`jax.lax.cond`; only its w × w corner, w =
             block/4, when the crossing group fits there); each tile builds its
             own mask from the ids, so no [T, S] array exists.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.config import MASK_KINDS
from mmntp_jax.model.layers import RMSNorm, apply_rope, param, project
from mmntp_jax.sharding import constrain

NEG_INF = -1e30
MIN_TILE = 128  # blockwise: the shortest tile a one-block row is cut into
PREFIX, BLOCK = MASK_KINDS.index("prefix"), MASK_KINDS.index("block")


class MaskIds(NamedTuple):
    """Per-token ids a mask is built from, each int32 [B, T]."""

    segments: jax.Array  # document id in the row (0 padding; -1 an empty cache slot)
    index: jax.Array  # position in the row / cache
    groups: jax.Array  # bidirectional group (0 = none)

    def slice(self, start: int, stop: int) -> "MaskIds":
        return MaskIds(*(x[:, start:stop] for x in self))


def row_ids(segment_ids_BT, groups_BT, offset=0) -> MaskIds:
    """MaskIds of T tokens at row / cache positions offset … offset+T-1."""
    b, t = segment_ids_BT.shape
    index_BT = jnp.broadcast_to(offset + jnp.arange(t, dtype=jnp.int32), (b, t))
    return MaskIds(segment_ids_BT, index_BT, groups_BT)


def bidirectional_groups(segment_ids_BT, block_ids_BT, loss_mask_BT, kind_BT):
    """int32 [B, T] group ids (0 = none; else 1 + the row index where the group starts).

    `kind_BT` (a MASK_KINDS index per token, or one for all) picks the unit of
    each token: its segment (prefix), its media block (block) or none (causal).
    A unit's group is its leading run of untrained targets plus the first
    trained one, the last position whose inputs are all context.
    """
    b, t = segment_ids_BT.shape
    kind_BT = jnp.broadcast_to(jnp.asarray(kind_BT, jnp.int32), (b, t))
    unit_BT = jnp.where(kind_BT == PREFIX, segment_ids_BT, jnp.where(kind_BT == BLOCK, block_ids_BT, 0))
    unit_BT = jnp.where(segment_ids_BT > 0, unit_BT, 0)
    index_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    changed = lambda x_BT: x_BT != jnp.roll(x_BT, 1, axis=1)
    changed_BT = changed(unit_BT) | changed(segment_ids_BT) | changed(kind_BT)
    start_BT = jax.lax.cummax(jnp.where(changed_BT | (index_BT == 0), index_BT, 0), axis=1)
    trained_BT = (loss_mask_BT > 0).astype(jnp.int32)
    before_BT = jnp.cumsum(trained_BT, axis=1) - trained_BT  # trained targets strictly before t
    in_unit_before_BT = before_BT - jnp.take_along_axis(before_BT, start_BT, axis=1)
    return jnp.where((unit_BT != 0) & (in_unit_before_BT == 0), start_BT + 1, 0).astype(jnp.int32)


def attention_mask(q: MaskIds, kv: MaskIds):
    """[B, T, S] bool: same segment, and key not later or in the query's group."""
    same_BTS = q.segments[:, :, None] == kv.segments[:, None, :]
    causal_BTS = q.index[:, :, None] >= kv.index[:, None, :]
    group_BTS = (q.groups[:, :, None] == kv.groups[:, None, :]) & (q.groups[:, :, None] != 0)
    return same_BTS & (causal_BTS | group_BTS)


def reference_attention(q_BTHE, k_BSKE, v_BSKE, q_ids: MaskIds, kv_ids: MaskIds):
    """softmax(q·kᵀ/√E + mask)·v in float32, grouped heads by reshaping."""
    b, t, h, e = q_BTHE.shape
    k = k_BSKE.shape[2]
    mask_BTS = attention_mask(q_ids, kv_ids)
    q_BTKGE = q_BTHE.reshape(b, t, k, h // k, e).astype(jnp.float32)
    scores_BKGTS = jnp.einsum("BTKGE,BSKE->BKGTS", q_BTKGE, k_BSKE.astype(jnp.float32)) / jnp.sqrt(e)
    scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, NEG_INF)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
    out_BTKGE = jnp.einsum("BKGTS,BSKE->BTKGE", probs_BKGTS, v_BSKE.astype(jnp.float32))
    return out_BTKGE.reshape(b, t, h, e).astype(q_BTHE.dtype)


def xla_attention(q_BTHE, k_BSKE, v_BSKE, q_ids: MaskIds, kv_ids: MaskIds):
    """jax.nn.dot_product_attention with the dense mask (GQA native)."""
    mask_BTS = attention_mask(q_ids, kv_ids)
    return jax.nn.dot_product_attention(q_BTHE, k_BSKE, v_BSKE, mask=mask_BTS[:, None], implementation="xla")


def _tile(q_BTKGE, k_BSKE, v_BSKE, q_ids, kv_ids, carry):
    """One (query block, key block) tile of the online softmax, its mask built from the ids."""
    m_BKGT, l_BKGT, acc_BTKGE = carry
    e = q_BTKGE.shape[-1]
    mask_BTS = attention_mask(q_ids, kv_ids)
    s_BKGTS = jnp.einsum("BTKGE,BSKE->BKGTS", q_BTKGE, k_BSKE, preferred_element_type=jnp.float32) / jnp.sqrt(e)
    s_BKGTS = jnp.where(mask_BTS[:, None, None], s_BKGTS, NEG_INF)
    # The running max only shifts the exponent, and the output does not depend on it: no
    # gradient through it (autodiff of the max would add a [T, S] select to every tile's backward).
    m_new = jax.lax.stop_gradient(jnp.maximum(m_BKGT, s_BKGTS.max(-1)))
    p_BKGTS = jnp.exp(s_BKGTS - m_new[..., None])
    correction = jnp.exp(m_BKGT - m_new)
    l_new = l_BKGT * correction + p_BKGTS.sum(-1)
    pv_BTKGE = jnp.einsum("BKGTS,BSKE->BTKGE", p_BKGTS.astype(v_BSKE.dtype), v_BSKE, preferred_element_type=jnp.float32)
    acc_new = acc_BTKGE * jnp.moveaxis(correction, -1, 1)[..., None] + pv_BTKGE
    return m_new, l_new, acc_new


def group_crosses(ids: MaskIds, last_query: int, first_key: int):
    """Whether a group holds both row positions (groups are contiguous runs, so any
    query ≤ last_query sharing a group with a key ≥ first_key implies this)."""
    g_B = ids.groups[:, last_query]
    return jnp.any((g_B != 0) & (g_B == ids.groups[:, first_key]))


def _above_diagonal(q_BTKGE, k_BSKE, v_BSKE, ids: MaskIds, qs: slice, ks: slice, carry):
    """Tile (qs, ks) above the diagonal: skipped unless a group crosses into it;
    when the one group crossing its corner spans at most w = block/4 positions on
    each side, only that w × w corner is computed, else the whole tile."""
    tile = lambda q0, k1, c: _tile(q_BTKGE[:, q0 : qs.stop], k_BSKE[:, ks.start : k1], v_BSKE[:, ks.start : k1],
                                   ids.slice(q0, qs.stop), ids.slice(ks.start, k1), c)
    w = (qs.stop - qs.start) // 4
    full = lambda c: tile(qs.start, ks.stop, c)

    def corner(c):  # the last w queries × the first w keys; carries: query on the last axis (m, l) or axis 1 (acc)
        m, l, acc = tile(qs.stop - w, ks.start + w, (c[0][..., -w:], c[1][..., -w:], c[2][:, -w:]))
        return c[0].at[..., -w:].set(m), c[1].at[..., -w:].set(l), c[2].at[:, -w:].set(acc)

    wide = group_crosses(ids, qs.stop - 1, ks.start + w) | group_crosses(ids, qs.stop - 1 - w, ks.start)
    crossing = lambda c: jax.lax.cond(wide, full, corner, c) if w else full(c)
    return jax.lax.cond(group_crosses(ids, qs.stop - 1, ks.start), crossing, lambda c: c, carry)


def tile_size(t, block: int) -> int:
    """The tile `blockwise_attention` uses for rows of T (0: it runs `xla`): `block`, or T/2 for a
    row that fits in one block (T/2 ≥ MIN_TILE); 0 when T is symbolic or not a multiple of it."""
    if not isinstance(t, int):  # symbolic (exported) T
        return 0
    if t <= block:
        block = t // 2 if t % 2 == 0 and t // 2 >= MIN_TILE else t
    return block if t % block == 0 and t > block else 0


def blockwise_attention(q_BTHE, k_BSKE, v_BSKE, ids: MaskIds, block: int):
    """Self-attention over tiles of `block` (queries and keys share `ids`, T == S).

    Tiles on and below the diagonal are computed; one above it only when a
    bidirectional group crosses into it (see `_above_diagonal`). A row that fits
    in one block is cut into two tiles of T/2 when T/2 ≥ MIN_TILE, so its
    upper-right quarter is skipped (1.06× at T = 256, 1.10× at T = 512 against one
    dense tile, docs/benchmarks.md). Falls back to `xla` when T is symbolic, not a
    multiple of the tile or too short to split.
    """
    b, t, h, e = q_BTHE.shape
    kv = k_BSKE.shape[2]
    block = tile_size(t, block)
    if not block or t != k_BSKE.shape[1]:
        return xla_attention(q_BTHE, k_BSKE, v_BSKE, ids, ids)
    q_BTKGE = q_BTHE.reshape(b, t, kv, h // kv, e)
    n = t // block
    outputs = []
    for i in range(n):
        qs = slice(i * block, (i + 1) * block)
        carry = (
            jnp.full((b, kv, h // kv, block), NEG_INF, jnp.float32),
            jnp.zeros((b, kv, h // kv, block), jnp.float32),
            jnp.zeros((b, block, kv, h // kv, e), jnp.float32),
        )
        for j in range(n):
            ks = slice(j * block, (j + 1) * block)
            if j <= i:
                carry = _tile(q_BTKGE[:, qs], k_BSKE[:, ks], v_BSKE[:, ks], ids.slice(qs.start, qs.stop), ids.slice(ks.start, ks.stop), carry)
            else:
                carry = _above_diagonal(q_BTKGE, k_BSKE, v_BSKE, ids, qs, ks, carry)
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
        b, t, d = x_BTD.shape
        heads = lambda w_DHE: project(x_BTD, w_DHE.reshape(d, -1)).reshape(b, t, *w_DHE.shape[1:])
        q_BTHE, k_BTKE, v_BTKE = heads(self.q_proj[...]), heads(self.k_proj[...]), heads(self.v_proj[...])
        if self.qk_norm:
            q_BTHE, k_BTKE = self.q_norm(q_BTHE), self.k_norm(k_BTKE)
        q_BTHE = constrain(apply_rope(q_BTHE, cos_BTE, sin_BTE), ("batch", "length", "heads", None))
        k_BTKE = constrain(apply_rope(k_BTKE, cos_BTE, sin_BTE), ("batch", "length", "kv_heads", None))
        v_BTKE = constrain(v_BTKE, ("batch", "length", "kv_heads", None))
        return q_BTHE, k_BTKE, v_BTKE

    def attend(self, q_BTHE, k_BTKE, v_BTKE, ids: MaskIds):
        if self.impl == "reference":
            return reference_attention(q_BTHE, k_BTKE, v_BTKE, ids, ids)
        if self.impl == "blockwise":
            return blockwise_attention(q_BTHE, k_BTKE, v_BTKE, ids, self.block)
        return xla_attention(q_BTHE, k_BTKE, v_BTKE, ids, ids)

    def output(self, out_BTHE):
        out_BTHE = constrain(out_BTHE, ("batch", "length", "heads", None))
        b, t, h, e = out_BTHE.shape
        return project(out_BTHE.reshape(b, t, h * e), self.o_proj[...].reshape(h * e, -1))

    def __call__(self, x_BTD, cos_BTE, sin_BTE, ids: MaskIds):
        q_BTHE, k_BTKE, v_BTKE = self.project(x_BTD, cos_BTE, sin_BTE)
        return self.output(self.attend(q_BTHE, k_BTKE, v_BTKE, ids))

    def decode(self, x_BTD, cos_BTE, sin_BTE, cache, index, q_ids: MaskIds):
        """Attends T new tokens written at `index` of the cache {k, v, segment_ids, groups}.

        `q_ids` are the new tokens' ids (index = cache slot); their segment and
        group ids are stored next to k and v, so the same mask rule applies.
        """
        q_BTHE, k_BTKE, v_BTKE = self.project(x_BTD, cos_BTE, sin_BTE)
        write = lambda name, x: jax.lax.dynamic_update_slice_in_dim(cache[name], x.astype(cache[name].dtype), index, axis=1)
        new_cache = {"k": write("k", k_BTKE), "v": write("v", v_BTKE), "segment_ids": write("segment_ids", q_ids.segments),
                     "groups": write("groups", q_ids.groups)}
        kv_ids = row_ids(new_cache["segment_ids"], new_cache["groups"])
        written_BS = kv_ids.index < index + q_ids.index.shape[1]
        kv_ids = kv_ids._replace(segments=jnp.where(written_BS, kv_ids.segments, -1))
        k_BSKE, v_BSKE = new_cache["k"].astype(q_BTHE.dtype), new_cache["v"].astype(q_BTHE.dtype)
        return self.output(xla_attention(q_BTHE, k_BSKE, v_BSKE, q_ids, kv_ids)), new_cache
