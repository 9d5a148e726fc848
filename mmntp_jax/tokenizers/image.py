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

from flax import nnx

from mmntp_jax.tokenizers.bottleneck import QuantizerConfig, msvq_scales
from mmntp_jax.tokenizers.conv_tokenizer import ConvTokenizer


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
        if self.quantizer.kind == "msvq":
            try:
                msvq_scales(self.quantizer, (self.image_size // self.factor,) * 2)
            except ValueError as err:
                raise ConfigError(f"config key '{prefix}.quantizer.scales': {err}") from None


def check_images(x, in_channels: int, factor: int, what: str = "image tokenizer") -> None:
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"{what}: expected images [B, H, W, {in_channels}], got shape {tuple(x.shape)}")
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"{what}: image size {x.shape[1]}×{x.shape[2]} is not divisible by the down-sampling factor {factor}")


class ImageTokenizer(ConvTokenizer):
    """encoder → quant_conv → quantize → post_quant_conv → decoder (diffusers VQModel names)."""

    kind = "image"

    def __init__(self, config: ImageTokenizerConfig, *, rngs: nnx.Rngs):
        super().__init__(config, video=False, rngs=rngs)

    def latent_shape(self, shape=None) -> tuple[int, int]:
        """(h, w) of an image of `shape` ([H, W] or [H, W, C]; default image_size²)."""
        H, W = (shape[0], shape[1]) if shape is not None else (self.config.image_size,) * 2
        return H // self.config.factor, W // self.config.factor

    def check(self, x) -> None:
        check_images(x, self.config.in_channels, self.config.factor)
