"""VQGAN-family convolutional encoder and decoder, for images (2-D) and causal video (3-D).

Dimension legend: B batch, T frames, H height, W width, C channels, N positions.
Images are `[B, H, W, C]`, videos `[B, T, H, W, C]`. Parameter paths follow
diffusers' `VQModel` (`encoder.down_blocks.0.resnets.0.conv1`, `mid_block.attentions.0.to_q`, …)
with Flax leaf names (`kernel`, `bias`, `scale`).

Video convolutions are causal in time: the time axis is padded at the front only
(with copies of the first frame), so output frame t depends on input frames ≤ t.
Normalisation is per frame, attention is within a frame, and temporal
down-sampling (kernel 3, stride 2, front padding 2) maps 1 + 2m frames to 1 + m:
latent step j sees frames ≤ 2j, and step 0 sees frame 0 alone — the first frame
is coded like an image. Temporal up-sampling repeats each latent step twice and
drops the first copy (1 + m → 1 + 2m).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def space_to_depth(x, p: int):
    """`[..., H, W, C]` → `[..., H/p, W/p, p·p·C]` (pixel-unshuffle; identity for p = 1)."""
    if p == 1:
        return x
    *lead, H, W, C = x.shape
    x = x.reshape(*lead, H // p, p, W // p, p, C)
    x = jnp.moveaxis(x, -4, -3)  # [..., H/p, W/p, p, p, C]
    return x.reshape(*lead, H // p, W // p, p * p * C)


def depth_to_space(x, p: int):
    """Inverse of `space_to_depth`."""
    if p == 1:
        return x
    *lead, h, w, C = x.shape
    x = x.reshape(*lead, h, w, p, p, C // (p * p))
    x = jnp.moveaxis(x, -3, -4)  # [..., h, p, w, p, c]
    return x.reshape(*lead, h * p, w * p, C // (p * p))


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class GroupNorm(nnx.Module):
    """GroupNorm over (spatial, channels-in-group), separately for every frame of a video."""

    def __init__(self, channels: int, groups: int, *, eps: float = 1e-6):
        self.groups, self.eps = _groups(channels, groups), eps
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x):
        *lead, H, W, C = x.shape
        g = x.reshape(*lead, H, W, self.groups, C // self.groups).astype(jnp.float32)
        mean = g.mean(axis=(-4, -3, -1), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(-4, -3, -1), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return (g.reshape(x.shape) * self.scale[...] + self.bias[...]).astype(x.dtype)


class Conv(nnx.Module):
    """k×k convolution (2-D), or causal k×k×k (3-D) with time padded at the front by replication."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, *, video: bool = False, stride=1, time_kernel: int | None = None, rngs: nnx.Rngs):
        self.video = video
        spatial_stride = stride[-1] if isinstance(stride, tuple) else stride
        spatial_pad = ((kernel - 1) // 2, kernel // 2) if spatial_stride == 1 else (0, 1)
        if video:
            tk = kernel if time_kernel is None else time_kernel
            strides = stride if isinstance(stride, tuple) else (1, stride, stride)
            self.time_pad = tk - 1
            self.conv = nnx.Conv(cin, cout, (tk, kernel, kernel), strides, padding=((0, 0), spatial_pad, spatial_pad), rngs=rngs)
        else:
            self.time_pad = 0
            self.conv = nnx.Conv(cin, cout, (kernel, kernel), stride, padding=(spatial_pad, spatial_pad), rngs=rngs)

    def __call__(self, x):
        if self.video and self.time_pad:
            x = jnp.concatenate([jnp.repeat(x[:, :1], self.time_pad, axis=1), x], axis=1)
        return self.conv(x)


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, *, video: bool, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(cin, groups)
        self.conv1 = Conv(cin, cout, video=video, rngs=rngs)
        self.norm2 = GroupNorm(cout, groups)
        self.conv2 = Conv(cout, cout, video=video, rngs=rngs)
        self.conv_shortcut = Conv(cin, cout, 1, video=video, rngs=rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nnx.Module):
    """Single-head self-attention over the positions of one image (or one frame)."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.group_norm = GroupNorm(channels, groups)
        self.to_q = nnx.Linear(channels, channels, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, rngs=rngs)
        self.to_out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x):
        *lead, H, W, C = x.shape
        h_BNC = self.group_norm(x).reshape(-1, H * W, C)
        q_BNC, k_BNC, v_BNC = self.to_q(h_BNC), self.to_k(h_BNC), self.to_v(h_BNC)
        weights_BNM = jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", q_BNC, k_BNC) / math.sqrt(C), axis=-1)
        out_BNC = self.to_out(jnp.einsum("bnm,bmc->bnc", weights_BNM, v_BNC))
        return x + out_BNC.reshape(x.shape)


class MidBlock(nnx.Module):
    def __init__(self, channels: int, groups: int, attention: bool, *, video: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, video=video, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([Attention(channels, groups, rngs=rngs)] if attention else [])

    def __call__(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    """Stride-2 convolution in space (when `spatial`) and in time (when `temporal`, video only)."""

    def __init__(self, channels: int, *, video: bool, spatial: bool = True, temporal: bool = False, rngs: nnx.Rngs):
        s = 2 if spatial else 1
        stride = (2 if temporal else 1, s, s) if video else s
        self.conv = Conv(channels, channels, 3, video=video, stride=stride, time_kernel=3 if temporal else 1, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour ×2 in space (when `spatial`) and in time, causally (when `temporal`), then a conv."""

    def __init__(self, channels: int, *, video: bool, spatial: bool = True, temporal: bool = False, rngs: nnx.Rngs):
        self.spatial, self.temporal = spatial, temporal
        self.conv = Conv(channels, channels, 3, video=video, rngs=rngs)

    def __call__(self, x):
        if self.spatial:
            x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
        if self.temporal:
            x = jnp.repeat(x, 2, axis=1)[:, 1:]
        return self.conv(x)


class DownBlock(nnx.Module):
    def __init__(self, cin, cout, n_res, groups, *, video, down, rngs):
        self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups, video=video, rngs=rngs) for i in range(n_res)])
        self.downsamplers = nnx.List([Downsample(cout, video=video, spatial=down[0], temporal=down[1], rngs=rngs)] if down else [])

    def __call__(self, x):
        for block in list(self.resnets) + list(self.downsamplers):
            x = block(x)
        return x


class UpBlock(nnx.Module):
    def __init__(self, cin, cout, n_res, groups, *, video, up, rngs):
        self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups, video=video, rngs=rngs) for i in range(n_res)])
        self.upsamplers = nnx.List([Upsample(cout, video=video, spatial=up[0], temporal=up[1], rngs=rngs)] if up else [])

    def __call__(self, x):
        for block in list(self.resnets) + list(self.upsamplers):
            x = block(x)
        return x


def default_downs(levels: int) -> tuple:
    """Image autoencoders halve space (never time) between consecutive levels."""
    return ((True, False),) * (levels - 1)


class Encoder(nnx.Module):
    """x `[B, (T,) H, W, in]` → z `[B, (T',) H/f, W/f, z_channels]`, f = patch·2^(levels-1).

    `patch` > 1 starts with a pixel-unshuffle (space-to-depth), so no convolution
    runs at full resolution. `downs[i]` = (spatial, temporal) says what the
    down-sampler after level i halves (default: space only).
    """

    def __init__(self, in_channels, channels, channel_mult, n_res, z_channels, groups, attention, *, patch=1, video=False, downs=None, rngs):
        widths = [channels * m for m in channel_mult]
        self.patch = patch
        self.conv_in = Conv(in_channels * patch * patch, widths[0], video=video, rngs=rngs)
        downs = default_downs(len(widths)) if downs is None else downs
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths):
            down = downs[i] if i < len(widths) - 1 else None
            blocks.append(DownBlock(cin, cout, n_res, groups, video=video, down=down, rngs=rngs))
            cin = cout
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(cin, groups, attention, video=video, rngs=rngs)
        self.conv_norm_out = GroupNorm(cin, groups)
        self.conv_out = Conv(cin, z_channels, video=video, rngs=rngs)

    def __call__(self, x):
        h = self.conv_in(space_to_depth(x, self.patch))
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
    """z `[B, (T',) h, w, z_channels]` → x `[B, (T,) h·f, w·f, out]`; mirror of `Encoder` with n_res + 1 blocks a level."""

    def __init__(self, out_channels, channels, channel_mult, n_res, z_channels, groups, attention, *, patch=1, video=False, downs=None, rngs):
        widths = [channels * m for m in channel_mult]
        self.patch = patch
        self.conv_in = Conv(z_channels, widths[-1], video=video, rngs=rngs)
        self.mid_block = MidBlock(widths[-1], groups, attention, video=video, rngs=rngs)
        downs = default_downs(len(widths)) if downs is None else downs
        blocks, cin, levels = [], widths[-1], len(widths)
        for j, cout in enumerate(reversed(widths)):
            i = levels - 1 - j  # the encoder level this block mirrors
            up = downs[i - 1] if i > 0 else None
            blocks.append(UpBlock(cin, cout, n_res + 1, groups, video=video, up=up, rngs=rngs))
            cin = cout
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(cin, groups)
        self.conv_out = Conv(cin, out_channels * patch * patch, video=video, rngs=rngs)

    def features(self, z):
        """Everything before the output convolution."""
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return jax.nn.silu(self.conv_norm_out(h))

    def head(self, h):
        """The output convolution (the layer whose gradients set the adaptive GAN weight)."""
        return depth_to_space(self.conv_out(h), self.patch)

    def __call__(self, z):
        return self.head(self.features(z))
