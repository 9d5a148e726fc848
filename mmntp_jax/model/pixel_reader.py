"""The pixel reader: each context image decoded to pixels by the frozen tokenizer decoder, read by a trainable CNN.

Dimensions: B batch, T time, D model dim, V vocab, M image slots of a row,
N codes of an image (h · w), h × w the code grid, H × W the image, F code
latent width, C reader channels, G = F + 1 (a latent table row and its flag).

`model.image_reader = pixels` (config.py) is the compositional path of
LLaVA-style models (a vision encoder and a projector feeding the language
model) on top of the discrete one: a *context* image block (the codes the
`block` mask would let see each other, `image_reader.context_groups`: the
whole image of a captioning document or of a prompt) is gathered into an
image, decoded by the image tokenizer's own decoder — the reconstruction a
person would see — and read by a small convolutional encoder trained with the
backbone, end to end from the caption loss; its feature at each grid cell is
projected to D and added to the embedding of that cell's code:

    codes [B, M, N] ──latents──► zq [B·M, h, w, F] ──post_quant_conv, decoder──► pixels [B·M, H, W, 3]   (frozen)
    pixels ──space-to-depth, 3×3 convs (one of stride 2), GELU──► [B·M, h, w, C]                       (trained)
    x[t] ← x[t] + RMSNorm(feature[slot(t), rank(t)]) · out_proj + RMSNorm(mean ‖ max of slot(t)'s features) · pool_proj
                                                               (out_proj, pool_proj start at zero: the identity)

Why decoded pixels rather than the codes: a code stands for a 4 × 4 patch
whose meaning depends on its neighbours through the decoder; the shape of an
object is an arrangement of those patches. A CNN over the reconstruction sees
the edges the decoder draws, with the translation-invariant weights a shape
detector needs (docs/benchmarks.md, "What limits the shape"). Why not the
data set's own pixels: the shards hold codes only, a prompt image reaches the
model through the same tokenizer in `mmntp sample`, and the reconstruction is
what the model is ever asked to describe.

Parameters (`image_reader.*`): latents [V, G] (the code-latent table,
model/continuous_input.py), tokenizer_decoder.{post_quant_conv, decoder}.*
(copied from the image tokenizer); both frozen: filled once at
initialisation, no gradient (`stop_gradient`), no weight decay (train/optim.py),
checkpointed with the model. Trained: encoder.conv{l}.{kernel, bias},
norm.weight [C], out_proj [C, D], pool_norm.weight [2C], pool_proj [2C, D].

Slots: an image block takes N + 2 tokens with its markers, so a row of T
tokens holds at most M = T // (N + 2) context images; every slot is decoded
(static shapes) and only slots holding an image are read back. Which tokens
are read, and that nothing trained is ever an input of the position that
predicts it, is exactly as for the conv reader (tests/test_pixel_reader.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmntp_jax.config import ConfigError
from mmntp_jax.model.image_reader import grid_members
from mmntp_jax.model.layers import RMSNorm, param, project
from mmntp_jax.tokenizers.autoencoder import Decoder, space_to_depth

def tokenizer_config(cfg):
    """The image tokenizer config in `model.image_tokenizer` (a one-line error without one)."""
    from mmntp_jax.tokenizers.io import _config_from, read_config

    if not cfg.image_tokenizer:
        raise ConfigError("model.image_reader=pixels needs model.image_tokenizer, the image tokenizer folder whose decoder draws "
                          "the context images (the captioned job sets it)")
    meta = read_config(cfg.image_tokenizer)
    if meta["kind"] != "image":
        raise ConfigError(f"model.image_tokenizer={cfg.image_tokenizer}: a {meta['kind']} tokenizer; model.image_reader=pixels needs an image tokenizer")
    return _config_from(meta["kind"], meta["config"], cfg.image_tokenizer)


class TokenizerDecoder(nnx.Module):
    """zq [B, h, w, F] → pixels [B, H, W, C] in [-1, 1]: the tokenizer's post_quant_conv and decoder."""

    def __init__(self, tc, *, rngs: nnx.Rngs):
        q = tc.quantizer
        self.post_quant_conv = nnx.Conv(q.code_dim, tc.z_channels, (1, 1), rngs=rngs)
        self.decoder = Decoder(tc.in_channels, tc.channels, tc.channel_mult, tc.num_res_blocks, tc.z_channels, tc.norm_groups,
                               tc.attention, patch=tc.patch, rngs=rngs)

    def __call__(self, zq):
        return jnp.clip(self.decoder(self.post_quant_conv(zq)), -1.0, 1.0)


def zeros_like_module(make):
    """The module `make()` builds, with every variable zero: frozen weights that are filled in
    afterwards need no random initialisation (whose compilation dominates building the model)."""
    graph, state = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graph, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))


class PixelEncoder(nnx.Module):
    """pixels [B, H, W, 3] → features [B, h, w, C]: space-to-depth by factor/2, a 3×3 conv,
    a 3×3 conv of stride 2 onto the code grid, then `layers` 3×3 convs; GELU after each."""

    def __init__(self, in_channels: int, factor: int, channels: int, layers: int, *, rngs: nnx.Rngs):
        self.patch = max(factor // 2, 1)
        self.stride = 2 if factor >= 2 else 1
        widths = [in_channels * self.patch**2] + [channels] * (layers + 2)
        for layer in range(layers + 2):
            stride = self.stride if layer == 1 else 1
            setattr(self, f"conv{layer}", nnx.Conv(widths[layer], widths[layer + 1], (3, 3), strides=stride, padding="SAME", rngs=rngs))
        self.layers = layers + 2

    def __call__(self, pixels):
        h = space_to_depth(pixels, self.patch)
        for layer in range(self.layers):
            h = jax.nn.gelu(getattr(self, f"conv{layer}")(h))
        return h


def image_slots(ids_BT, groups_BT, n: int, m: int):
    """The context images of each row as slots: (index [B, M, N] of each slot's codes in
    the row, valid [B, M, N]), and for every token (member [B, T], flat [B, T] = slot · N + rank)."""
    member_BT, rank_BT = grid_members(ids_BT, groups_BT)
    member_BT = member_BT & (rank_BT < n)
    start_BT = member_BT & (rank_BT == 0)
    slot_BT = jnp.cumsum(start_BT, axis=1, dtype=jnp.int32) - 1
    hit_BMT = start_BT[:, None, :] & (slot_BT[:, None, :] == jnp.arange(m, dtype=jnp.int32)[None, :, None])
    first_BM = jnp.argmax(hit_BMT, axis=-1).astype(jnp.int32)
    t = ids_BT.shape[1]
    index_BMN = jnp.minimum(first_BM[..., None] + jnp.arange(n, dtype=jnp.int32), t - 1)
    take = lambda a_BT: jnp.take_along_axis(a_BT[:, None, :], index_BMN.reshape(a_BT.shape[0], 1, -1), axis=2).reshape(index_BMN.shape)
    valid_BMN = hit_BMT.any(-1)[..., None] & take(member_BT) & (take(groups_BT) == take(groups_BT)[..., :1])
    member_BT = member_BT & (slot_BT < m)
    return index_BMN, valid_BMN, member_BT, jnp.where(member_BT, slot_BT * n + rank_BT, 0)


class PixelReader(nnx.Module):
    """x [B, T, D] → x plus the CNN's reading of the decoded context images."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        tc = tokenizer_config(cfg)
        self.grid = (tc.image_size // tc.factor,) * 2
        self.n = self.grid[0] * self.grid[1]
        self.feature_dim = tc.quantizer.code_dim
        c = cfg.image_reader_channels or cfg.d_model
        self.latents = param(rngs, (cfg.vocab_size, self.feature_dim + 1), ("vocab", None), value=0.0)
        self.tokenizer_decoder = zeros_like_module(lambda: TokenizerDecoder(tc, rngs=nnx.Rngs(0)))
        self.encoder = PixelEncoder(tc.in_channels, tc.factor, c, cfg.image_reader_layers, rngs=rngs)
        self.norm = RMSNorm(c, cfg.norm_eps, rngs=rngs)
        self.out_proj = param(rngs, (c, cfg.d_model), (None, "embed"), value=0.0)
        self.pool_norm = RMSNorm(2 * c, cfg.norm_eps, rngs=rngs)
        self.pool_proj = param(rngs, (2 * c, cfg.d_model), (None, "embed"), value=0.0)

    def pixels(self, codes_BMN):
        """Decoded images [B·M, H, W, C] in [-1, 1] of the code ids' latents (no gradient)."""
        table_VG = jax.lax.stop_gradient(self.latents[...])
        b, m, n = codes_BMN.shape
        zq = jnp.take(table_VG, codes_BMN, axis=0)[..., : self.feature_dim].reshape(b * m, *self.grid, self.feature_dim)
        return jax.lax.stop_gradient(self.tokenizer_decoder(zq))

    def __call__(self, ids_BT, x_BTD, groups_BT):
        b, t, _ = x_BTD.shape
        m = t // (self.n + 2)
        if m == 0:
            return x_BTD
        index_BMN, valid_BMN, member_BT, flat_BT = image_slots(ids_BT, groups_BT, self.n, m)
        codes_BMN = jnp.where(valid_BMN, jnp.take_along_axis(ids_BT, index_BMN.reshape(b, -1), axis=1).reshape(b, m, self.n), 0)
        h = self.encoder(self.pixels(codes_BMN))                      # [B·M, h, w, C]
        h_BMNC = h.reshape(b, m, self.n, -1)
        pool_BMP = self.pool_norm(jnp.concatenate([h_BMNC.mean(2), h_BMNC.max(2)], axis=-1))  # P = 2C: the image's summary
        g_BMD = project(pool_BMP.astype(x_BTD.dtype), self.pool_proj[...].astype(x_BTD.dtype))
        h_BQC = self.norm(h_BMNC.reshape(b, m * self.n, -1))          # Q = M · N, row-major over the grid
        feature_BTC = jnp.take_along_axis(h_BQC, flat_BT[..., None], axis=1)
        out_BTD = project(feature_BTC.astype(x_BTD.dtype), self.out_proj[...].astype(x_BTD.dtype))
        out_BTD = out_BTD + jnp.take_along_axis(g_BMD, (flat_BT // self.n)[..., None], axis=1)
        return jnp.where(member_BT[..., None], x_BTD + out_BTD, x_BTD)


def decoder_params(params: dict, tokenizer) -> dict:
    """`params` with `image_reader.tokenizer_decoder` set to the tokenizer's post_quant_conv and decoder weights."""
    source = nnx.to_pure_dict(tokenizer.params)
    reader = params["image_reader"]
    filled = {}
    for name in ("post_quant_conv", "decoder"):
        ours, theirs = reader["tokenizer_decoder"][name], source[name]
        if jax.tree.map(np.shape, ours) != jax.tree.map(np.shape, theirs):
            raise ConfigError(f"the image tokenizer's {name} does not match the pixel reader's: the model was built for another tokenizer")
        filled[name] = jax.tree.map(lambda cur, new: jax.device_put(jnp.asarray(new, cur.dtype), cur.sharding), ours, theirs)
    return dict(params, image_reader=dict(reader, tokenizer_decoder=filled))
