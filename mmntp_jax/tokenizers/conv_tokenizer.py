"""What the image and video tokenizers share: encoder → quant_conv → quantize → post_quant_conv → decoder.

Dimension legend: B batch, X the item axes (H, W, C for images; T, H, W, C for
videos), L the latent axes (h, w or T', h, w), D code channels, N tokens per item.

Subclasses choose 2-D or causal 3-D convolutions (and the video down-samplers)
and say how an item shape maps to its latent shape (`latent_shape`) and what
input they accept (`check`). Parameter names follow diffusers' VQModel. Items are in [0, 1]; the networks see
[-1, 1]. Tokens are the codes flattened in the latent's row-major order.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.autoencoder import Decoder, Encoder
from mmntp_jax.tokenizers.bottleneck import Bottleneck


class ConvTokenizer(nnx.Module):
    kind = "conv"

    def __init__(self, config, *, video: bool, downs=None, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        c, q = config, config.quantizer
        arch = (c.channels, c.channel_mult, c.num_res_blocks, c.z_channels, c.norm_groups, c.attention)
        opts = dict(patch=c.patch, video=video, downs=downs, rngs=rngs)
        self.encoder = Encoder(c.in_channels, *arch, **opts)
        self.quant_conv = nnx.Conv(c.z_channels, q.code_dim, (1, 1), rngs=rngs)
        self.quantize = Bottleneck(q, spatial_dims=2, rngs=rngs)
        self.post_quant_conv = nnx.Conv(q.code_dim, c.z_channels, (1, 1), rngs=rngs)
        self.decoder = Decoder(c.in_channels, *arch, **opts)

    @property
    def vocab_size(self) -> int:
        return self.config.quantizer.vocab_size

    def latent_shape(self, shape=None) -> tuple:
        raise NotImplementedError

    def check(self, x) -> None:
        raise NotImplementedError

    def tokens_per_item(self, shape=None) -> int:
        """Tokens of one item of `shape` (default: the configured size)."""
        return math.prod(self.quantize.codes_shape(self.latent_shape(shape)))

    def encode_latent(self, x_BX):
        self.check(x_BX)
        return self.quant_conv(self.encoder(x_BX * 2.0 - 1.0))

    def decode_latent(self, zq_BLD):
        return (self.decoder(self.post_quant_conv(zq_BLD)) + 1.0) / 2.0

    def __call__(self, x_BX, *, key=None, train: bool = False):
        """(reconstruction, QuantOut) — the training forward pass."""
        out = self.quantize(self.encode_latent(x_BX), key=key, train=train)
        return self.decode_latent(out.z_q), out

    def encode(self, x_BX):
        """Items → int32 tokens `[B, N]`."""
        codes = self.quantize(self.encode_latent(x_BX)).codes
        return codes.reshape(codes.shape[0], -1).astype(jnp.int32)

    def decode(self, codes_BN, shape=None):
        """Tokens `[B, N]` → items in [0, 1] (of `shape`, default the configured size)."""
        latent = self.latent_shape(shape)
        n = self.tokens_per_item(shape)
        if codes_BN.ndim != 2 or codes_BN.shape[1] != n:
            raise ValueError(f"{self.kind} tokenizer: expected codes [B, {n}] for a {'×'.join(map(str, latent))} latent grid, got shape {tuple(codes_BN.shape)}")
        latent = (codes_BN.shape[0],) + tuple(latent)
        zq_BLD = self.quantize.lookup(codes_BN.reshape(self.quantize.codes_shape(latent)), latent)
        return jnp.clip(self.decode_latent(zq_BLD), 0.0, 1.0)
