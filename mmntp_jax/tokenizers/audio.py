"""Audio tokenizer: a SoundStream/EnCodec-style 1-D convolutional codec with residual VQ.

Dimension legend: B batch, L samples, F frames (= L / hop), C channels, D code
channels, Q residual quantizers, N tokens per clip = F·Q.

The encoder is a 1-D conv, then one block per stride (residual units with
dilations 1, 3, 9 …, then an ELU and a strided conv doubling the channels); the
decoder mirrors it with transposed convs. The frame rate is
sample_rate / prod(strides). With `quantizer.quantizer_dropout`, training uses
the first n ∈ [1, Q] residual levels (n drawn per step), so one model serves
every bitrate: `encode(x, n_quantizers=n)` keeps the first n codes of a frame.
Tokens are frame-major (`[F, Q]` flattened), int32 `[B, F·Q]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.bottleneck import Bottleneck, QuantizerConfig


def _default_quantizer() -> QuantizerConfig:
    return QuantizerConfig(kind="rvq", codebook_size=1024, dim=64, num_quantizers=8, quantizer_dropout=True)


@dataclass(frozen=True)
class AudioTokenizerConfig:
    sample_rate: int = 16000
    channels: int = 16
    strides: tuple = (2, 4, 5, 8)
    dilations: tuple = (1, 3, 9)
    kernel_size: int = 7
    quantizer: QuantizerConfig = field(default_factory=_default_quantizer)

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def validate(self, prefix: str = "model") -> None:
        from mmntp_jax.config import ConfigError

        for name in ("sample_rate", "channels", "kernel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{prefix}.{name}': must be ≥ 1, got {getattr(self, name)}")
        if not self.strides or min(self.strides) < 1:
            raise ConfigError(f"config key '{prefix}.strides': expected positive integers, got {self.strides}")
        self.quantizer.validate(f"{prefix}.quantizer")


class Conv1d(nnx.Module):
    """'Same'-padded 1-D convolution (stride s maps L to L / s)."""

    def __init__(self, cin, cout, kernel, *, stride=1, dilation=1, rngs):
        total = (kernel - 1) * dilation + 1 - stride
        self.conv = nnx.Conv(cin, cout, (kernel,), stride, padding=((total - total // 2, total // 2),), kernel_dilation=dilation, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class ConvTranspose1d(nnx.Module):
    """Up-sampling by `stride` (L → L·stride), kernel 2·stride, cropped to exact length."""

    def __init__(self, cin, cout, stride, *, rngs):
        self.stride = stride
        self.conv = nnx.ConvTranspose(cin, cout, (2 * stride,), stride, padding="SAME", rngs=rngs)

    def __call__(self, x):
        return self.conv(x)[:, : x.shape[1] * self.stride]


class ResidualUnit(nnx.Module):
    def __init__(self, channels, kernel, dilation, *, rngs):
        self.conv1 = Conv1d(channels, channels, kernel, dilation=dilation, rngs=rngs)
        self.conv2 = Conv1d(channels, channels, 1, rngs=rngs)

    def __call__(self, x):
        return x + self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x))))


class EncoderBlock(nnx.Module):
    def __init__(self, cin, stride, config, *, rngs):
        self.res_units = nnx.List([ResidualUnit(cin, config.kernel_size, d, rngs=rngs) for d in config.dilations])
        self.conv = Conv1d(cin, 2 * cin, 2 * stride, stride=stride, rngs=rngs)

    def __call__(self, x):
        for unit in self.res_units:
            x = unit(x)
        return self.conv(jax.nn.elu(x))


class DecoderBlock(nnx.Module):
    def __init__(self, cin, stride, config, *, rngs):
        self.conv_t = ConvTranspose1d(cin, cin // 2, stride, rngs=rngs)
        self.res_units = nnx.List([ResidualUnit(cin // 2, config.kernel_size, d, rngs=rngs) for d in config.dilations])

    def __call__(self, x):
        x = self.conv_t(jax.nn.elu(x))
        for unit in self.res_units:
            x = unit(x)
        return x


class AudioTokenizer(nnx.Module):
    """encoder (conv_in, blocks, conv_out) → quantize → decoder (conv_in, blocks, conv_out)."""

    kind = "audio"

    def __init__(self, config: AudioTokenizerConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        c, d = config, config.quantizer.code_dim
        widths = [c.channels * 2**i for i in range(len(c.strides) + 1)]
        self.encoder_conv_in = Conv1d(1, widths[0], c.kernel_size, rngs=rngs)
        self.encoder_blocks = nnx.List([EncoderBlock(widths[i], s, c, rngs=rngs) for i, s in enumerate(c.strides)])
        self.encoder_conv_out = Conv1d(widths[-1], d, 3, rngs=rngs)
        self.quantize = Bottleneck(c.quantizer, spatial_dims=1, rngs=rngs)
        self.decoder_conv_in = Conv1d(d, widths[-1], c.kernel_size, rngs=rngs)
        self.decoder_blocks = nnx.List([DecoderBlock(widths[i + 1], s, c, rngs=rngs) for i, s in reversed(list(enumerate(c.strides)))])
        self.decoder_conv_out = Conv1d(widths[0], 1, c.kernel_size, rngs=rngs)

    @property
    def vocab_size(self) -> int:
        return self.config.quantizer.vocab_size

    def tokens_per_item(self, shape=None, n_quantizers: int | None = None) -> int:
        """Tokens of a clip of `shape` ([L]; default one second)."""
        L = shape[-1] if shape is not None else self.config.sample_rate
        return math.prod(self.quantize.codes_shape((L // self.config.hop,), n_quantizers))

    def bitrate(self, n_quantizers: int | None = None) -> float:
        """Bits per second (the first `n_quantizers` residual levels; default all)."""
        return self.tokens_per_item((self.config.sample_rate,), n_quantizers) * math.log2(self.vocab_size)

    def check(self, x_BL) -> None:
        if x_BL.ndim != 2:
            raise ValueError(f"audio tokenizer: expected mono clips [B, L], got shape {tuple(x_BL.shape)}")
        if x_BL.shape[1] % self.config.hop:
            raise ValueError(f"audio tokenizer: clip length {x_BL.shape[1]} is not a multiple of the hop {self.config.hop} (= prod(strides) {self.config.strides})")

    def encode_latent(self, x_BL):
        self.check(x_BL)
        h = self.encoder_conv_in(x_BL[..., None])
        for block in self.encoder_blocks:
            h = block(h)
        return self.encoder_conv_out(jax.nn.elu(h))

    def decode_latent(self, zq_BFD):
        h = self.decoder_conv_in(zq_BFD)
        for block in self.decoder_blocks:
            h = block(h)
        return self.decoder_conv_out(jax.nn.elu(h))[..., 0]

    def __call__(self, x_BL, *, key=None, train: bool = False, n_quantizers=None):
        out = self.quantize(self.encode_latent(x_BL), key=key, train=train, n_quantizers=n_quantizers)
        return self.decode_latent(out.z_q), out

    def encode(self, x_BL, n_quantizers: int | None = None):
        """Clips `[B, L]` → int32 tokens `[B, F·n]` (n = n_quantizers, default all)."""
        codes = self.quantize(self.encode_latent(x_BL), n_quantizers=n_quantizers).codes
        if n_quantizers is not None:
            codes = codes[..., :n_quantizers]
        return codes.reshape(codes.shape[0], -1).astype(jnp.int32)

    def decode(self, codes_BN, shape=None, n_quantizers: int | None = None):
        """Tokens `[B, N]` → clips `[B, L]` in [-1, 1] (L from `shape` = [L], else from N)."""
        per_frame = math.prod(self.quantize.codes_shape((1,), n_quantizers))
        if shape is not None:
            frames = shape[-1] // self.config.hop
        elif self.config.quantizer.kind == "msvq":
            raise ValueError("audio tokenizer: decoding multi-scale codes needs the clip `shape`")
        else:
            frames = codes_BN.shape[-1] // per_frame
        n = self.tokens_per_item((frames * self.config.hop,), n_quantizers)
        if codes_BN.ndim != 2 or codes_BN.shape[1] != n:
            raise ValueError(f"audio tokenizer: expected codes [B, {n}] for {frames} frames, got shape {tuple(codes_BN.shape)}")
        latent = (codes_BN.shape[0], frames)
        zq_BFD = self.quantize.lookup(codes_BN.reshape(self.quantize.codes_shape(latent, n_quantizers)), latent)
        return jnp.clip(self.decode_latent(zq_BFD), -1.0, 1.0)
