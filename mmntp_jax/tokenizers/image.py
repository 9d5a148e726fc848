"""Image tokenizer: a VQGAN-family convolutional autoencoder around any quantizer of the library.

Dimension legend: B batch, H height, W width, C image channels, h = H/f, w = W/f
latent grid (f the down-sampling factor), D code channels, Q codes per position,
N tokens per image = h·w·Q.

Images are float32 `[B, H, W, C]` in [0, 1]. Tokens are the codes in raster
order (row by row, left to right; the Q codes of a position adjacent; multi-scale
codes coarse to fine), int32 `[B, N]` in [0, vocab_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.autoencoder import Decoder, Encoder
from mmntp_jax.tokenizers.bottleneck import Bottleneck, QuantizerConfig


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """factor: spatial down-sampling 4, 8 or 16 = patch · 2^(len(channel_mult) − 1); patch > 1
    starts with a pixel-unshuffle instead of full-resolution convolutions."""

    image_size: int = 32
    in_channels: int = 3
    factor: int = 4
    patch: int = 1
    channels: int = 64
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = True
    z_channels: int = 64
    norm_groups: int = 32
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def validate(self, prefix: str = "model") -> None:
        from mmntp_jax.config import ConfigError

        if self.factor not in (2, 4, 8, 16, 32):
            raise ConfigError(f"config key '{prefix}.factor': {self.factor} is not one of 2, 4, 8, 16, 32")
        if self.patch < 1 or self.factor % self.patch:
            raise ConfigError(f"config key '{prefix}.patch': {self.patch} does not divide {prefix}.factor={self.factor}")
        levels = int(math.log2(self.factor // self.patch)) + 1
        if len(self.channel_mult) != levels:
            raise ConfigError(f"config key '{prefix}.channel_mult': factor {self.factor} with patch {self.patch} needs {levels} entries, got {self.channel_mult}")
        if self.image_size % self.factor:
            raise ConfigError(f"config key '{prefix}.image_size': {self.image_size} is not divisible by {prefix}.factor={self.factor}")
        for name in ("image_size", "in_channels", "channels", "num_res_blocks", "z_channels", "norm_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{prefix}.{name}': must be ≥ 1, got {getattr(self, name)}")
        self.quantizer.validate(f"{prefix}.quantizer")


def check_images(x, in_channels: int, factor: int, what: str = "image tokenizer") -> None:
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"{what}: expected images [B, H, W, {in_channels}], got shape {tuple(x.shape)}")
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"{what}: image size {x.shape[1]}×{x.shape[2]} is not divisible by the down-sampling factor {factor}")


class ImageTokenizer(nnx.Module):
    """encoder → quant_conv → quantize → post_quant_conv → decoder (diffusers VQModel names)."""

    kind = "image"

    def __init__(self, config: ImageTokenizerConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        c, q = config, config.quantizer
        arch = (c.channels, c.channel_mult, c.num_res_blocks, c.z_channels, c.norm_groups, c.attention)
        self.encoder = Encoder(c.in_channels, *arch, patch=c.patch, rngs=rngs)
        self.quant_conv = nnx.Conv(c.z_channels, q.code_dim, (1, 1), rngs=rngs)
        self.quantize = Bottleneck(q, spatial_dims=2, rngs=rngs)
        self.post_quant_conv = nnx.Conv(q.code_dim, c.z_channels, (1, 1), rngs=rngs)
        self.decoder = Decoder(c.in_channels, *arch, patch=c.patch, rngs=rngs)

    # -- sizes -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.quantizer.vocab_size

    def grid(self, shape=None) -> tuple[int, int]:
        H, W = (shape[-3], shape[-2]) if shape is not None and len(shape) >= 3 else (shape or (self.config.image_size,) * 2)
        return H // self.config.factor, W // self.config.factor

    def tokens_per_item(self, shape=None) -> int:
        """Tokens of one image of `shape` ([H, W] or [H, W, C]; default image_size²)."""
        return math.prod(self.quantize.codes_shape(self.grid(shape)))

    # -- the autoencoder ---------------------------------------------------------
    def encode_latent(self, x_BHWC):
        check_images(x_BHWC, self.config.in_channels, self.config.factor)
        return self.quant_conv(self.encoder(x_BHWC * 2.0 - 1.0))

    def decode_latent(self, zq_BhwD):
        return (self.decoder(self.post_quant_conv(zq_BhwD)) + 1.0) / 2.0

    def __call__(self, x_BHWC, *, key=None, train: bool = False):
        """(reconstruction `[B, H, W, C]`, QuantOut) — the training forward pass."""
        out = self.quantize(self.encode_latent(x_BHWC), key=key, train=train)
        return self.decode_latent(out.z_q), out

    # -- the tokenizer interface ---------------------------------------------------
    def encode(self, x_BHWC):
        """Images → int32 tokens `[B, N]` in raster order."""
        codes = self.quantize(self.encode_latent(x_BHWC)).codes
        return codes.reshape(codes.shape[0], -1).astype(jnp.int32)

    def decode(self, codes_BN, shape=None):
        """Tokens `[B, N]` → images `[B, H, W, C]` in [0, 1] (default size image_size)."""
        h, w = self.grid(shape)
        n = self.tokens_per_item(shape)
        if codes_BN.ndim != 2 or codes_BN.shape[1] != n:
            raise ValueError(f"image tokenizer: expected codes [B, {n}] for a {h}×{w} latent grid, got shape {tuple(codes_BN.shape)}")
        latent = (codes_BN.shape[0], h, w)
        zq_BhwD = self.quantize.lookup(codes_BN.reshape(self.quantize.codes_shape(latent)), latent)
        return jnp.clip(self.decode_latent(zq_BhwD), 0.0, 1.0)

