"""Continuous tokenizers for compositional models: patch embedding, MLP projector, Perceiver resampler.

Dimension legend: B batch, H, W image size, P patch size, N patches (= H/P · W/P),
E input feature width, D output (model) width, K learned queries, S heads,
A head dim (D / S).

These produce embeddings `[B, N or K, D]` for a backbone to consume in place of
token ids (no codes): `embed(x)` is their interface, and
`tokens_per_item(shape)` says how many embedding slots an item takes.

    PatchEmbed        Fuyu-style: raw P×P patches, flattened, one linear projection
    MLPProjector      LLaVA-style: features → Linear → GELU → Linear
    PerceiverResampler  Flamingo-style: K learned queries cross-attend to the
                        features (keys/values = features ⊕ latents), with an MLP, per layer
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.autoencoder import space_to_depth

KINDS = ("patch", "mlp", "resampler")


@dataclass(frozen=True)
class ContinuousTokenizerConfig:
    """kind: patch (images in), mlp or resampler (features [B, N, E] in; with patch_size > 0
    they first patch-embed images)."""

    kind: str = "patch"
    image_size: int = 32
    in_channels: int = 3
    patch_size: int = 4
    in_features: int = 0
    width: int = 256
    queries: int = 16
    layers: int = 2
    heads: int = 4

    @property
    def feature_width(self) -> int:
        return self.in_features or self.patch_size * self.patch_size * self.in_channels

    def validate(self, prefix: str = "model") -> None:
        from mmntp_jax.config import ConfigError

        if self.kind not in KINDS:
            raise ConfigError(f"config key '{prefix}.kind': {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "patch" and (self.patch_size < 1 or self.image_size % self.patch_size):
            raise ConfigError(f"config key '{prefix}.patch_size': {self.patch_size} must be ≥ 1 and divide image_size {self.image_size}")
        if self.width % self.heads:
            raise ConfigError(f"config key '{prefix}.width': {self.width} is not divisible by {prefix}.heads={self.heads}")
        if self.feature_width < 1:
            raise ConfigError(f"config key '{prefix}.in_features': set it (or patch_size) to the input feature width")


def patchify(x_BHWC, patch: int):
    """Images → flattened patches `[B, N, P·P·C]` in raster order."""
    B, H, W, C = x_BHWC.shape
    if H % patch or W % patch:
        raise ValueError(f"continuous tokenizer: image size {H}×{W} is not divisible by the patch size {patch}")
    return space_to_depth(x_BHWC, patch).reshape(B, (H // patch) * (W // patch), patch * patch * C)


class PerceiverLayer(nnx.Module):
    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.norm_media = nnx.LayerNorm(width, rngs=rngs)
        self.norm_latents = nnx.LayerNorm(width, rngs=rngs)
        self.to_q = nnx.Linear(width, width, use_bias=False, rngs=rngs)
        self.to_kv = nnx.Linear(width, 2 * width, use_bias=False, rngs=rngs)
        self.to_out = nnx.Linear(width, width, use_bias=False, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(width, rngs=rngs)
        self.ff_in = nnx.Linear(width, 4 * width, rngs=rngs)
        self.ff_out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, media_BND, latents_BKD):
        B, K, D = latents_BKD.shape
        S, A = self.heads, D // self.heads
        x_BND, l_BKD = self.norm_media(media_BND), self.norm_latents(latents_BKD)
        q_BKSA = self.to_q(l_BKD).reshape(B, K, S, A)
        kv_BMD = self.to_kv(jnp.concatenate([x_BND, l_BKD], axis=1))
        k_BMSA, v_BMSA = jnp.split(kv_BMD.reshape(B, -1, 2, S, A), 2, axis=2)
        scores_BSKM = jnp.einsum("bksa,bmsa->bskm", q_BKSA, k_BMSA[:, :, 0]) / math.sqrt(A)
        attn_BKSA = jnp.einsum("bskm,bmsa->bksa", jax.nn.softmax(scores_BSKM, axis=-1), v_BMSA[:, :, 0])
        latents_BKD = latents_BKD + self.to_out(attn_BKSA.reshape(B, K, D))
        return latents_BKD + self.ff_out(jax.nn.gelu(self.ff_in(self.ff_norm(latents_BKD))))


class ContinuousTokenizer(nnx.Module):
    kind = "continuous"

    def __init__(self, config: ContinuousTokenizerConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        c, D = config, config.width
        if c.kind == "patch":
            self.proj = nnx.Linear(c.feature_width, D, rngs=rngs)
        elif c.kind == "mlp":
            self.linear_1 = nnx.Linear(c.feature_width, D, rngs=rngs)
            self.linear_2 = nnx.Linear(D, D, rngs=rngs)
        else:
            self.proj = nnx.Linear(c.feature_width, D, rngs=rngs)
            self.latents = nnx.Param(jax.random.normal(rngs.params(), (c.queries, D)) * 0.02)
            self.layers = nnx.List([PerceiverLayer(D, c.heads, rngs=rngs) for _ in range(c.layers)])
            self.norm = nnx.LayerNorm(D, rngs=rngs)

    def features(self, x):
        """Images `[B, H, W, C]` → patches; features `[B, N, E]` pass through (checked)."""
        c = self.config
        if x.ndim == 4 and c.in_features == 0:
            if x.shape[-1] != c.in_channels:
                raise ValueError(f"continuous tokenizer: expected images [B, H, W, {c.in_channels}], got shape {tuple(x.shape)}")
            return patchify(x, c.patch_size)
        if x.ndim != 3 or x.shape[-1] != c.feature_width:
            raise ValueError(f"continuous tokenizer ({c.kind}): expected features [B, N, {c.feature_width}], got shape {tuple(x.shape)}")
        return x

    def embed(self, x):
        """Images or features → embeddings `[B, N (or K), width]`."""
        f_BNE = self.features(x)
        if self.config.kind == "patch":
            return self.proj(f_BNE)
        if self.config.kind == "mlp":
            return self.linear_2(jax.nn.gelu(self.linear_1(f_BNE)))
        media_BND = self.proj(f_BNE)
        latents_BKD = jnp.broadcast_to(self.latents[...], (f_BNE.shape[0],) + self.latents.shape)
        for layer in self.layers:
            latents_BKD = layer(media_BND, latents_BKD)
        return self.norm(latents_BKD)

    def tokens_per_item(self, shape=None) -> int:
        c = self.config
        if c.kind == "resampler":
            return c.queries
        if shape is not None and len(shape) == 2 and c.in_features:
            return shape[0]
        H, W = (shape[0], shape[1]) if shape is not None else (c.image_size, c.image_size)
        return (H // c.patch_size) * (W // c.patch_size)
