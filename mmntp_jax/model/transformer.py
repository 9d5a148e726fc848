"""The decoder-only transformer: embed → N × (attention + SwiGLU) → RMSNorm.

Dimensions: B batch, T time, S cache length, D model dim, V vocab, L layers.

Parameter tree (HF Llama names, kernels [in, out], layers stacked on axis 0):
    embed_tokens.embedding [V, D]
    multi_modal_projector.{latents [V, F+1], kernel [F, D], bias [D]}  only with image_input=continuous
    image_reader.{norm, conv*, out_proj}  only with image_reader=conv (model/image_reader.py)
    image_reader.{latents, tokenizer_decoder.*, encoder.*, norm, out_proj, pool_norm, pool_proj}  only with image_reader=pixels (model/pixel_reader.py)
    layers.input_layernorm.weight [L, D]
    layers.self_attn.{q,k,v}_proj [L, D, heads, E], o_proj [L, H, E, D] (+ q_norm/k_norm)
    layers.post_attention_layernorm.weight [L, D]
    layers.mlp.{gate,up}_proj [L, D, F], down_proj [L, F, D]
    norm.weight [D];  lm_head [D, V] unless tie_embeddings
    image_head.{latents [V, F+1], kernel, bias | denoiser.* | block.*}  only with image_output=regression | diffusion

Masks: `__call__` takes the PackedBatch fields the mask needs (segment_ids,
block_ids, loss_mask and the optional per-token mask_kind, -1 = this model's
`attention_mask`) and builds the per-token `MaskIds` once with the one builder
in attention.py; every layer builds its mask (or its tiles' masks) from them.

Layers run under `jax.lax.scan` over the stacked parameters (compile time flat
in depth) or unrolled in a Python loop over the same parameters
(`model.scan_layers`, see `layer_loop`), with a configurable remat policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.config import MASK_KINDS
from mmntp_jax.model.attention import Attention, MaskIds, bidirectional_groups, row_ids
from mmntp_jax.model.continuous_input import ContinuousInput
from mmntp_jax.model.continuous_output import ContinuousOutput
from mmntp_jax.model.image_reader import ImageReader, context_groups
from mmntp_jax.model.pixel_reader import PixelReader
from mmntp_jax.model.layers import MLP, Embedding, RMSNorm, param, rope_cos_sin
from mmntp_jax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
UNROLL_MAX_LAYERS, UNROLL_MAX_ACTIVATION = 8, 2**21


def layer_loop(cfg, shape_BTD) -> str:
    """"scan" or "unroll" for `model.scan_layers` at this [B, T, D]. auto unrolls up to
    8 layers whose activations hold at most 2^21 elements: on the 2-core CPU, without the
    scan's stacked residuals (a dynamic-update-slice per layer forward, a dynamic-slice
    back) the small jobs' steps ran 1.09–1.25× faster (text_stdlib, captioned), while
    d512 L8 T1024 B8 ran 7% faster scanned (docs/benchmarks.md)."""
    if cfg.scan_layers != "auto":
        return cfg.scan_layers
    if not all(isinstance(n, int) for n in shape_BTD):  # symbolic (exported) shapes: scan
        return "scan"
    small = cfg.n_layers <= UNROLL_MAX_LAYERS and shape_BTD[0] * shape_BTD[1] * shape_BTD[2] <= UNROLL_MAX_ACTIVATION
    return "unroll" if small else "scan"


class DecoderLayer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.init_std, out_std, rngs=rngs)

    def __call__(self, x_BTD, cos_BTE, sin_BTE, ids: MaskIds):
        x_BTD = x_BTD + self.self_attn(self.input_layernorm(x_BTD), cos_BTE, sin_BTE, ids)
        x_BTD = x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
        return constrain(x_BTD, ("batch", "length", None))

    def decode(self, x_BTD, cos_BTE, sin_BTE, cache, index, q_ids: MaskIds):
        h_BTD, cache = self.self_attn.decode(self.input_layernorm(x_BTD), cos_BTE, sin_BTE, cache, index, q_ids)
        x_BTD = x_BTD + h_BTD
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD)), cache


class Transformer(nnx.Module):
    """Token ids [B, T] → final hidden states [B, T, D] (see heads.py for logits/loss)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
        if cfg.image_input == "continuous":
            self.multi_modal_projector = ContinuousInput(cfg.vocab_size, cfg.image_feature_dim, cfg.d_model, cfg.init_std, rngs=rngs)
        if cfg.image_reader != "none":
            self.image_reader = (PixelReader if cfg.image_reader == "pixels" else ImageReader)(cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(layer_rngs):
            return DecoderLayer(cfg, rngs=layer_rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std=cfg.init_std)
        if cfg.image_output != "discrete":
            self.image_head = ContinuousOutput(cfg, rngs=rngs)

    @property
    def compute_dtype(self):
        return DTYPES[self.cfg.dtype]

    def embed(self, ids_BT, context_BT=None):
        """Input embeddings [B, T, D]: token rows, image codes through the projector when
        `image_input=continuous`, context image blocks (`context_BT`, from
        `image_reader.context_groups`; None = none) read by the image reader."""
        x_BTD = self.embed_tokens(ids_BT, self.compute_dtype)
        if self.cfg.image_input == "continuous":
            x_BTD = self.multi_modal_projector(ids_BT, x_BTD)
        if self.cfg.image_reader != "none" and context_BT is not None:
            x_BTD = self.image_reader(ids_BT, x_BTD, context_BT)
        return x_BTD

    def head_kernel(self):
        """[D, V] output projection (the embedding table transposed when tied)."""
        if self.cfg.tie_embeddings:
            return self.embed_tokens.embedding[...].T
        return self.lm_head[...]

    def _run_layers(self, x_BTD, body):
        graphdef, state = nnx.split(self.layers)
        step = lambda x, layer_state: (body(nnx.merge(graphdef, layer_state), x), None)
        scan = layer_loop(self.cfg, x_BTD.shape) == "scan"
        if self.cfg.remat != "none":
            step = jax.checkpoint(step, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=not scan)
        if scan:
            x_BTD, _ = jax.lax.scan(step, x_BTD, state)
            return x_BTD
        for i in range(self.cfg.n_layers):
            x_BTD, _ = step(x_BTD, jax.tree.map(lambda a: a[i], state))
        return x_BTD

    def groups(self, segment_ids_BT, block_ids_BT=None, loss_mask_BT=None, mask_kind_BT=None):
        """Bidirectional group ids [B, T] of a batch under this model's mask kind(s).

        Without `loss_mask` every target counts as trained, so nothing is
        bidirectional; `mask_kind` -1 (or None) means `cfg.attention_mask`.
        """
        if loss_mask_BT is None:
            return jnp.zeros_like(segment_ids_BT)
        default = MASK_KINDS.index(self.cfg.attention_mask)
        kind_BT = default if mask_kind_BT is None else jnp.where(mask_kind_BT < 0, default, mask_kind_BT)
        block_ids_BT = jnp.zeros_like(segment_ids_BT) if block_ids_BT is None else block_ids_BT
        return bidirectional_groups(segment_ids_BT, block_ids_BT, loss_mask_BT, kind_BT)

    def __call__(self, ids_BT, positions_BT=None, segment_ids_BT=None, block_ids_BT=None, loss_mask_BT=None, mask_kind_BT=None, noised=None):
        """Hidden states [B, T, D]; the optional fields are those of a PackedBatch.

        `noised` (diffusion_block.NoisedBlocks): its members enter as their noised
        latents and attend within their block both ways. Without `loss_mask` no
        block counts as context, so the image reader reads nothing."""
        context_BT = None
        if self.cfg.image_reader != "none" and loss_mask_BT is not None and segment_ids_BT is not None and block_ids_BT is not None:
            context_BT = context_groups(ids_BT, segment_ids_BT, block_ids_BT, loss_mask_BT)
        x_BTD = self.embed(ids_BT, context_BT)
        if noised is not None:
            noised_BTD = self.image_head.block.embed(noised.x_t_BTF, noised.t_BT, x_BTD.dtype)
            x_BTD = jnp.where(noised.member_BT[..., None] > 0, noised_BTD, x_BTD)
        x_BTD = constrain(x_BTD, ("batch", "length", None))
        return self.from_embeddings(x_BTD, positions_BT, segment_ids_BT, block_ids_BT, loss_mask_BT, mask_kind_BT,
                                    None if noised is None else noised.groups_BT)

    def from_embeddings(self, x_BTD, positions_BT=None, segment_ids_BT=None, block_ids_BT=None, loss_mask_BT=None, mask_kind_BT=None,
                        extra_groups_BT=None):
        """The layers and final norm on input embeddings [B, T, D] (tests differentiate through it);
        `extra_groups_BT` (non-zero ids) override the mask kind's groups where given."""
        b, t, _ = x_BTD.shape
        positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)) if positions_BT is None else positions_BT
        segment_ids_BT = jnp.ones((b, t), jnp.int32) if segment_ids_BT is None else segment_ids_BT
        groups_BT = self.groups(segment_ids_BT, block_ids_BT, loss_mask_BT, mask_kind_BT)
        if extra_groups_BT is not None:
            groups_BT = jnp.where(extra_groups_BT > 0, extra_groups_BT, groups_BT)
        ids = row_ids(segment_ids_BT, groups_BT)
        cos_BTE, sin_BTE = rope_cos_sin(positions_BT, self.cfg.resolved_head_dim, self.cfg.rope_theta)
        x_BTD = self._run_layers(x_BTD, lambda layer, x: layer(x, cos_BTE, sin_BTE, ids))
        return self.norm(x_BTD)

    # -- KV-cache decoding ---------------------------------------------------
    def init_cache(self, batch: int, length: int, dtype=None):
        """Stacked per-layer cache: k, v [L, B, S, K, E], key segment ids and group ids [L, B, S]."""
        cfg = self.cfg
        dtype = dtype or self.compute_dtype
        shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.resolved_head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.full((cfg.n_layers, batch, length), -1, jnp.int32),
            "groups": jnp.zeros((cfg.n_layers, batch, length), jnp.int32),
        }

    def decode(self, ids_BT, positions_BT, segment_ids_BT, cache, index, groups_BT=None, embeddings_BTD=None, context_BT=None):
        """Runs T new tokens at cache slot `index`; returns (hidden [B, T, D], new cache).

        `groups_BT` (from `groups`, e.g. a prompt's context block prefilled at
        once) makes tokens of one call see each other as in the full forward;
        None = causal, as for newly decoded tokens. `embeddings_BTD` replaces
        the embedding of `ids_BT` (a denoised image block); `context_BT` (as for
        `embed`) the context image blocks the image reader reads, at prefill.
        """
        groups_BT = jnp.zeros_like(segment_ids_BT) if groups_BT is None else groups_BT
        q_ids = row_ids(segment_ids_BT, groups_BT, index)
        cos_BTE, sin_BTE = rope_cos_sin(positions_BT, self.cfg.resolved_head_dim, self.cfg.rope_theta)
        x_BTD = self.embed(ids_BT, context_BT) if embeddings_BTD is None else embeddings_BTD
        graphdef, state = nnx.split(self.layers)

        def step(x, layer_and_cache):
            layer_state, layer_cache = layer_and_cache
            x, new_cache = nnx.merge(graphdef, layer_state).decode(x, cos_BTE, sin_BTE, layer_cache, index, q_ids)
            return x, new_cache

        x_BTD, cache = jax.lax.scan(step, x_BTD, (state, cache))
        return self.norm(x_BTD), cache
