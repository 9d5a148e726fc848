"""Video tokenizer: a causal 3-D convolutional autoencoder in the MAGVIT-v2 style.

Dimension legend: B batch, T frames (= 1 + n·F, F the temporal factor), T' = 1 + n
latent steps, H, W frame size, h = H/f, w = W/f latent grid, C channels, D code
channels, Q codes per position, N tokens per video = T'·h·w·Q.

Videos are float32 `[B, T, H, W, C]` in [0, 1]. Every convolution is causal in
time and normalisation and attention work frame by frame, so latent step j (and
its tokens) depends only on frames ≤ F·j: step 0 codes the first frame alone,
like an image, and step j ≥ 1 the clip of frames F(j−1)+1 … F·j given the past.
Tokens are time-major raster order (`[T', h, w, Q]` flattened; multi-scale codes
per latent step).

Vocabulary sharing: with the same architecture and quantizer as an image
tokenizer, `inflate_from_image` copies the image weights into the causal 3-D
kernels (image taps on the current frame, zeros on the past), after which the
first frame's tokens are exactly the image tokenizer's tokens of that frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.autoencoder import Decoder, Encoder
from mmntp_jax.tokenizers.bottleneck import Bottleneck, QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizer, check_images


@dataclass(frozen=True)
class VideoTokenizerConfig:
    """factor: spatial down-sampling (= patch · 2^(spatial downs)); temporal_factor: F, a power of two.
    The down-samplers between the len(channel_mult) levels halve space first and time last."""

    frames: int = 9
    image_size: int = 32
    in_channels: int = 3
    factor: int = 4
    temporal_factor: int = 4
    patch: int = 1
    channels: int = 32
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = False
    z_channels: int = 64
    norm_groups: int = 8
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    @property
    def downs(self) -> tuple:
        n = len(self.channel_mult) - 1
        spatial, temporal = int(math.log2(self.factor // self.patch)), int(math.log2(self.temporal_factor))
        return tuple((i < spatial, i >= n - temporal) for i in range(n))

    def validate(self, prefix: str = "model") -> None:
        from mmntp_jax.config import ConfigError

        n = len(self.channel_mult) - 1
        if self.patch < 1 or self.factor % self.patch or (self.factor // self.patch) & (self.factor // self.patch - 1):
            raise ConfigError(f"config key '{prefix}.factor': {self.factor} must be {prefix}.patch={self.patch} times a power of two")
        if self.temporal_factor < 1 or self.temporal_factor & (self.temporal_factor - 1):
            raise ConfigError(f"config key '{prefix}.temporal_factor': {self.temporal_factor} is not a power of two")
        if int(math.log2(self.factor // self.patch)) > n or int(math.log2(self.temporal_factor)) > n:
            raise ConfigError(f"config key '{prefix}.channel_mult': {n} down-samplers cannot reach factor {self.factor} (patch {self.patch}) and temporal_factor {self.temporal_factor}")
        if (self.frames - 1) % self.temporal_factor or self.frames < 1:
            raise ConfigError(f"config key '{prefix}.frames': {self.frames} is not 1 + n·{self.temporal_factor}")
        if self.image_size % self.factor:
            raise ConfigError(f"config key '{prefix}.image_size': {self.image_size} is not divisible by {prefix}.factor={self.factor}")
        self.quantizer.validate(f"{prefix}.quantizer")


class VideoTokenizer(nnx.Module):
    """encoder → quant_conv → quantize → post_quant_conv → decoder, all causal in time."""

    kind = "video"

    def __init__(self, config: VideoTokenizerConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        c, q = config, config.quantizer
        arch = (c.channels, c.channel_mult, c.num_res_blocks, c.z_channels, c.norm_groups, c.attention)
        opts = dict(patch=c.patch, video=True, downs=c.downs, rngs=rngs)
        self.encoder = Encoder(c.in_channels, *arch, **opts)
        self.quant_conv = nnx.Conv(c.z_channels, q.code_dim, (1, 1), rngs=rngs)
        self.quantize = Bottleneck(q, spatial_dims=2, rngs=rngs)
        self.post_quant_conv = nnx.Conv(q.code_dim, c.z_channels, (1, 1), rngs=rngs)
        self.decoder = Decoder(c.in_channels, *arch, **opts)

    @property
    def vocab_size(self) -> int:
        return self.config.quantizer.vocab_size

    def latent_shape(self, shape=None) -> tuple[int, int, int]:
        T, H, W = (shape[0], shape[1], shape[2]) if shape is not None else (self.config.frames, self.config.image_size, self.config.image_size)
        return 1 + (T - 1) // self.config.temporal_factor, H // self.config.factor, W // self.config.factor

    def tokens_per_item(self, shape=None) -> int:
        """Tokens of one video of `shape` ([T, H, W(, C)]; default frames × image_size²)."""
        return math.prod(self.quantize.codes_shape(self.latent_shape(shape)))

    def check(self, x) -> None:
        c = self.config
        if x.ndim != 5:
            raise ValueError(f"video tokenizer: expected videos [B, T, H, W, {c.in_channels}], got shape {tuple(x.shape)}")
        check_images(x[:, 0], c.in_channels, c.factor, "video tokenizer")
        if (x.shape[1] - 1) % c.temporal_factor:
            raise ValueError(f"video tokenizer: {x.shape[1]} frames is not 1 + n·{c.temporal_factor} (shape {tuple(x.shape)})")

    def encode_latent(self, x_BTHWC):
        self.check(x_BTHWC)
        return self.quant_conv(self.encoder(x_BTHWC * 2.0 - 1.0))

    def decode_latent(self, zq_BthwD):
        return (self.decoder(self.post_quant_conv(zq_BthwD)) + 1.0) / 2.0

    def __call__(self, x_BTHWC, *, key=None, train: bool = False):
        out = self.quantize(self.encode_latent(x_BTHWC), key=key, train=train)
        return self.decode_latent(out.z_q), out

    def encode(self, x_BTHWC):
        """Videos → int32 tokens `[B, N]`, time-major raster order."""
        codes = self.quantize(self.encode_latent(x_BTHWC)).codes
        return codes.reshape(codes.shape[0], -1).astype(jnp.int32)

    def decode(self, codes_BN, shape=None):
        """Tokens `[B, N]` → videos `[B, T, H, W, C]` in [0, 1] (default frames × image_size²)."""
        t, h, w = self.latent_shape(shape)
        n = self.tokens_per_item(shape)
        if codes_BN.ndim != 2 or codes_BN.shape[1] != n:
            raise ValueError(f"video tokenizer: expected codes [B, {n}] for {t}×{h}×{w} latents, got shape {tuple(codes_BN.shape)}")
        latent = (codes_BN.shape[0], t, h, w)
        zq = self.quantize.lookup(codes_BN.reshape(self.quantize.codes_shape(latent)), latent)
        return jnp.clip(self.decode_latent(zq), 0.0, 1.0)


def inflate_from_image(video: VideoTokenizer, image: ImageTokenizer) -> None:
    """Copies an image tokenizer's weights into `video` (same architecture and quantizer).

    2-D kernels `[k, k, I, O]` become causal 3-D kernels `[t, k, k, I, O]` holding the
    image kernel at the last (current-frame) tap and zeros before it.
    """
    src = dict(nnx.to_flat_state(nnx.state(image)))
    dst = nnx.state(video)
    for path, var in nnx.to_flat_state(dst):
        if path not in src:
            raise ValueError(f"inflate_from_image: the image tokenizer has no {'.'.join(map(str, path))}; architectures differ")
        value, target = src[path].get_value(), var.get_value()
        if value.shape == target.shape:
            var.set_value(value)
        elif target.shape[1:] == value.shape:
            var.set_value(jnp.zeros(target.shape, value.dtype).at[-1].set(value))
        else:
            raise ValueError(f"inflate_from_image: {'.'.join(map(str, path))} has shape {value.shape} in the image tokenizer but {target.shape} here")
    nnx.update(video, dst)
