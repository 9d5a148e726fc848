"""The quantized bottleneck every tokenizer shares: a quantizer from the library plus its codebooks.

Dimension legend: ... leading axes (batch, time, height, width), D code channels,
Q codes per position (residual depth or groups), C codebook size.

`QuantizerConfig.kind` picks the family; `Bottleneck` owns whatever it learns
(codebooks as `nnx.Param`) and calls the pure quantizer. Codes have shape `[...]`
when one code describes a position, `[..., Q]` for residual and grouped quantizers.
Every code lies in [0, codebook_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.quantizers.fsq import fsq, fsq_codes_to_vectors
from mmntp_jax.tokenizers.quantizers.types import QuantOut
from mmntp_jax.tokenizers.quantizers.vq import vq, vq_codes_to_vectors

KINDS = ("fsq", "vq", "rvq", "group_vq", "lfq", "bsq")


@dataclass(frozen=True)
class QuantizerConfig:
    """kind: one of KINDS. levels: FSQ levels (codebook = their product).
    codebook_size, dim: VQ-family codebook size and code dimension (LFQ/BSQ: dim = log2(codebook_size)).
    num_quantizers: residual depth (rvq). groups: channel groups (group_vq).
    beta: commitment weight. entropy_weight: LFQ/BSQ entropy penalty.
    quantizer_dropout: rvq trains with a random number 1…num_quantizers of levels (variable bitrate).
    """

    kind: str = "fsq"
    levels: tuple = (8, 5, 5, 5)
    codebook_size: int = 1024
    dim: int = 16
    num_quantizers: int = 1
    groups: int = 1
    beta: float = 0.25
    entropy_weight: float = 0.1
    quantizer_dropout: bool = False

    def validate(self, prefix: str = "quantizer") -> None:
        from mmntp_jax.config import ConfigError

        if self.kind not in KINDS:
            raise ConfigError(f"config key '{prefix}.kind': {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "fsq" and (not self.levels or min(self.levels) < 3):
            raise ConfigError(f"config key '{prefix}.levels': FSQ needs levels ≥ 3, got {self.levels}")
        if self.kind in ("lfq", "bsq") and (self.codebook_size & (self.codebook_size - 1) or self.codebook_size < 2):
            raise ConfigError(f"config key '{prefix}.codebook_size': {self.kind} needs a power of two, got {self.codebook_size}")
        if self.kind == "group_vq" and self.dim % self.groups:
            raise ConfigError(f"config key '{prefix}.dim': {self.dim} is not divisible by {prefix}.groups={self.groups}")
        for name in ("codebook_size", "dim", "num_quantizers", "groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{prefix}.{name}': must be ≥ 1, got {getattr(self, name)}")

    @property
    def vocab_size(self) -> int:
        """Distinct values a code takes."""
        return math.prod(self.levels) if self.kind == "fsq" else self.codebook_size

    @property
    def code_dim(self) -> int:
        """Channels the quantizer takes (the encoder projects to this)."""
        if self.kind == "fsq":
            return len(self.levels)
        if self.kind in ("lfq", "bsq"):
            return int(math.log2(self.codebook_size))
        return self.dim

    @property
    def codes_per_position(self) -> int:
        return {"rvq": self.num_quantizers, "group_vq": self.groups}.get(self.kind, 1)

    @property
    def bits_per_position(self) -> float:
        return self.codes_per_position * math.log2(self.vocab_size)


def _codebook(key, shape) -> jax.Array:
    bound = math.sqrt(6.0 / shape[-1])  # Kaiming-uniform, as vector-quantize-pytorch
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Bottleneck(nnx.Module):
    """Holds the codebooks of `config` and quantizes `z[..., code_dim]`."""

    def __init__(self, config: QuantizerConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, k = config, config.code_dim
        if c.kind == "vq":
            self.embedding = nnx.Param(_codebook(rngs.params(), (c.codebook_size, k)))
        elif c.kind == "rvq":
            self.embedding = nnx.Param(_codebook(rngs.params(), (c.num_quantizers, c.codebook_size, k)))
        elif c.kind == "group_vq":
            self.embedding = nnx.Param(_codebook(rngs.params(), (c.groups, c.codebook_size, k // c.groups)))

    def __call__(self, z, *, key=None, train: bool = False, n_quantizers=None) -> QuantOut:
        c = self.config
        if z.shape[-1] != c.code_dim:
            raise ValueError(f"{c.kind} bottleneck: expected {c.code_dim} channels, got shape {z.shape}")
        if c.kind == "fsq":
            return fsq(z, c.levels)
        if c.kind == "vq":
            return vq(z, self.embedding[...], beta=c.beta)
        raise ValueError(f"quantizer kind {c.kind!r} is not available")

    def lookup(self, codes) -> jax.Array:
        """int codes → float32 quantized vectors `[..., code_dim]` (what the decoder sees)."""
        c = self.config
        if c.kind == "fsq":
            return fsq_codes_to_vectors(codes, c.levels)
        if c.kind == "vq":
            return vq_codes_to_vectors(codes, self.embedding[...])
        raise ValueError(f"quantizer kind {c.kind!r} is not available")
