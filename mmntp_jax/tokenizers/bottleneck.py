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

from mmntp_jax.tokenizers import quantizers as Q

KINDS = ("fsq", "vq", "rvq", "group_vq", "lfq", "bsq")


@dataclass(frozen=True)
class QuantizerConfig:
    """kind: one of KINDS. levels: FSQ levels (codebook = their product).
    codebook_size, dim: VQ-family codebook size and code dimension (LFQ/BSQ: dim = log2(codebook_size)).
    num_quantizers: residual depth (rvq). groups: channel groups (group_vq).
    beta: commitment weight. entropy_weight: LFQ/BSQ entropy penalty.
    quantizer_dropout: rvq trains with a random number 1…num_quantizers of levels (variable bitrate).
    ema: VQ-family codebooks learned by EMA (decay) instead of gradients; kmeans_init fills
    them from the first batch; codes whose EMA usage falls below dead_threshold (> 0) restart.
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
    ema: bool = False
    decay: float = 0.99
    kmeans_init: bool = False
    dead_threshold: float = 0.0

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


class CodebookEMA(nnx.Variable):
    """Codebook statistics learned by EMA, outside the optimizer."""


class Bottleneck(nnx.Module):
    """Holds the codebooks of `config` and quantizes `z[..., code_dim]`.

    Gradient-learned codebooks are `nnx.Param` `embedding`; EMA codebooks are
    `CodebookEMA` variables `embedding`, `cluster_size`, `embed_sum`, `initted`
    (vector-quantize-pytorch's buffers), changed only by `update`.
    """

    def __init__(self, config: QuantizerConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, k = config, config.code_dim
        shape = {"vq": (c.codebook_size, k), "rvq": (c.num_quantizers, c.codebook_size, k),
                 "group_vq": (c.groups, c.codebook_size, k // c.groups)}.get(c.kind)
        if shape is None:
            return
        codebook = _codebook(rngs.params(), shape)
        if not c.ema:
            self.embedding = nnx.Param(codebook)
            return
        if c.kmeans_init:
            codebook = jnp.zeros(shape, jnp.float32)
        self.embedding = CodebookEMA(codebook)
        self.cluster_size = CodebookEMA(jnp.ones(shape[:-1], jnp.float32))
        self.embed_sum = CodebookEMA(codebook)
        self.initted = CodebookEMA(jnp.full(shape[:-2], not c.kmeans_init))

    def codebook(self):
        """The array codebook, or the EMA state as a `VQState`."""
        if isinstance(self.embedding, CodebookEMA):
            return Q.VQState(self.embedding[...], self.cluster_size[...], self.embed_sum[...], self.initted[...])
        return self.embedding[...]

    def __call__(self, z, *, key=None, train: bool = False, n_quantizers=None) -> Q.QuantOut:
        """Quantizes `z[..., code_dim]`. `key` (training) drives quantizer dropout; `n_quantizers` fixes
        how many residual levels are used (codes of the others are −1)."""
        c = self.config
        if z.shape[-1] != c.code_dim:
            raise ValueError(f"{c.kind} bottleneck: expected {c.code_dim} channels, got shape {tuple(z.shape)}")
        if c.kind == "fsq":
            return Q.fsq(z, c.levels)
        if c.kind == "vq":
            return Q.vq(z, self.codebook(), beta=c.beta)
        if c.kind == "rvq":
            dropout = key if (train and c.quantizer_dropout and key is not None and n_quantizers is None) else None
            return Q.rvq(z, self.codebook(), dropout_key=dropout, num_active=n_quantizers, beta=c.beta)
        raise ValueError(f"quantizer kind {c.kind!r} is not available")

    def update(self, z, codes, key) -> None:
        """EMA codebooks: k-means init (first batch), EMA step, dead-code restart. Gradient codebooks: nothing."""
        c = self.config
        if not isinstance(getattr(self, "embedding", None), CodebookEMA):
            return
        state, z = self.codebook(), jax.lax.stop_gradient(z)
        k_init, k_dead = jax.random.split(key)
        if c.kind == "vq":
            if c.kmeans_init:
                state = Q.kmeans_init(state, z, k_init)
            state = Q.ema_update(state, z, codes, decay=c.decay)
            if c.dead_threshold > 0:
                state = Q.restart_dead_codes(state, z, k_dead, threshold=c.dead_threshold)
        elif c.kind == "rvq":
            if c.kmeans_init:
                state = Q.rvq_kmeans_init(state, z, k_init)
            state = Q.rvq_ema_update(state, z, codes, decay=c.decay)
            if c.dead_threshold > 0:
                state = Q.rvq_restart_dead_codes(state, z, codes, k_dead, threshold=c.dead_threshold)
        self.embedding[...], self.cluster_size[...], self.embed_sum[...] = state.codebook_CK, state.cluster_size_C, state.embed_sum_CK
        self.initted[...] = state.initted

    def lookup(self, codes) -> jax.Array:
        """int codes → float32 quantized vectors `[..., code_dim]` (what the decoder sees).
        Residual codes may hold fewer than num_quantizers levels (a lower bitrate)."""
        c = self.config
        if c.kind == "fsq":
            return Q.fsq_codes_to_vectors(codes, c.levels)
        if c.kind == "vq":
            return Q.vq_codes_to_vectors(codes, self.codebook())
        if c.kind == "rvq":
            n = codes.shape[-1]
            return Q.rvq_codes_to_vectors(codes, jax.tree.map(lambda x: x[:n], self.codebook()))
        raise ValueError(f"quantizer kind {c.kind!r} is not available")
