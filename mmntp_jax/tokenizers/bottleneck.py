"""The quantized bottleneck every tokenizer shares: a quantizer from the library plus its codebooks.

Dimension legend: ... leading axes (batch, then time for video), S the latent's
spatial axes (h, w for images and video frames; F frames for audio), D code
channels, Q codes per position (residual depth or groups), C codebook size,
T_s tokens of one multi-scale map (Σ P·Q over the scales).

`QuantizerConfig.kind` picks the family. `Bottleneck` owns what it learns
(codebooks, as `nnx.Param` or as EMA statistics) and calls the pure quantizer.
Codes of a latent `[..., S, D]` are
    `[..., S]`      fsq, vq, lfq, bsq
    `[..., S, Q]`   rvq (Q = num_quantizers), group_vq (Q = groups)
    `[..., T_s]`    msvq (coarse-to-fine scales, each row-major)
and every code lies in [0, vocab_size). Multi-scale VQ works on 2-D maps: video
latents are quantized frame by frame, audio latents `[F]` as `F×1` maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers import quantizers as Q

KINDS = ("fsq", "vq", "rvq", "group_vq", "lfq", "bsq", "msvq")
VQ_FAMILY = ("vq", "rvq", "group_vq", "msvq")


@dataclass(frozen=True)
class QuantizerConfig:
    """kind: one of KINDS. levels: FSQ levels (codebook = their product).
    codebook_size, dim: VQ-family codebook size and code dimension (LFQ/BSQ: dim = log2(codebook_size)).
    num_quantizers: residual depth (rvq). groups: channel groups (group_vq).
    scales: msvq map sizes, coarse to fine (() → 1, 2, 3, 4, 5, 6, 8, 10, 13, 16 below the latent size, then it).
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
    scales: tuple = ()
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
        if self.ema and self.kind not in VQ_FAMILY:
            raise ConfigError(f"config key '{prefix}.ema': EMA codebooks are for {', '.join(VQ_FAMILY)}, not {self.kind}")

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


def msvq_scales(config: QuantizerConfig, latent_size: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The (P, Q) map sizes for a latent of spatial size (h, w) or (F,) (an F×1 map)."""
    h, w = latent_size if len(latent_size) == 2 else (latent_size[0], 1)
    n = max(h, w)
    scales = config.scales or tuple(s for s in Q.VAR_SCALES if s < n) + (n,)
    pairs = []
    for s in scales:
        pair = (min(s, h), min(s, w))
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)
    if pairs[-1] != (h, w):
        raise ValueError(f"msvq: the last scale {pairs[-1]} must equal the latent size {(h, w)}; got quantizer.scales={scales}")
    return tuple(pairs)


def _codebook(key, shape) -> jax.Array:
    bound = math.sqrt(6.0 / shape[-1])  # Kaiming-uniform, as vector-quantize-pytorch
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class CodebookEMA(nnx.Variable):
    """Codebook statistics learned by EMA, outside the optimizer."""


class Bottleneck(nnx.Module):
    """Holds the codebooks of `config` and quantizes latents `[..., S, code_dim]`.

    Gradient-learned codebooks are the `nnx.Param` `embedding`; EMA codebooks are
    `CodebookEMA` variables `embedding`, `cluster_size`, `embed_sum`, `initted`
    (vector-quantize-pytorch's buffers), changed only by `update`.
    """

    def __init__(self, config: QuantizerConfig, *, spatial_dims: int, rngs: nnx.Rngs):
        config.validate()
        self.config, self.spatial = config, spatial_dims
        c, k = config, config.code_dim
        shape = {"vq": (c.codebook_size, k), "msvq": (c.codebook_size, k), "rvq": (c.num_quantizers, c.codebook_size, k),
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

    # -- layouts -----------------------------------------------------------------
    def codes_shape(self, latent_shape: tuple, n_quantizers: int | None = None) -> tuple:
        """Shape of the codes of a latent of shape `[..., S]` (channels left out)."""
        c = self.config
        if c.kind == "msvq":
            split = len(latent_shape) - self.spatial
            return tuple(latent_shape[:split]) + (Q.tokens_per_image(msvq_scales(c, tuple(latent_shape[split:]))),)
        if c.kind == "rvq":
            return tuple(latent_shape) + (n_quantizers or c.num_quantizers,)
        return tuple(latent_shape) + ((c.groups,) if c.kind == "group_vq" else ())

    def _maps(self, z):
        """msvq: latents `[..., S, D]` as 2-D maps `[M, h, w, D]`."""
        lead = z.shape[: z.ndim - 1 - self.spatial]
        maps = z.reshape((-1,) + z.shape[len(lead):])
        return (maps[:, :, None] if self.spatial == 1 else maps), lead

    def _scales(self, z):
        return msvq_scales(self.config, tuple(z.shape[z.ndim - 1 - self.spatial:-1]))

    def _check_n(self, n_quantizers) -> None:
        if n_quantizers is not None and (self.config.kind != "rvq" or not 1 <= n_quantizers <= self.config.num_quantizers):
            raise ValueError(f"n_quantizers={n_quantizers}: needs an rvq quantizer and 1 ≤ n ≤ {self.config.num_quantizers} (this one is {self.config.kind})")

    # -- quantize, update, look up ---------------------------------------------------
    def __call__(self, z, *, key=None, train: bool = False, n_quantizers=None) -> Q.QuantOut:
        """Quantizes `z[..., S, code_dim]`. In training, `key` drives rvq's quantizer dropout;
        `n_quantizers` keeps the first n residual levels (the later codes are −1)."""
        c = self.config
        if z.shape[-1] != c.code_dim:
            raise ValueError(f"{c.kind} bottleneck: expected {c.code_dim} channels, got shape {tuple(z.shape)}")
        self._check_n(n_quantizers)
        if c.kind == "fsq":
            return Q.fsq(z, c.levels)
        if c.kind in ("lfq", "bsq"):
            return getattr(Q, c.kind)(z, entropy_weight=c.entropy_weight, commitment_weight=c.beta, with_entropy=train)
        if c.kind == "vq":
            return Q.vq(z, self.codebook(), beta=c.beta)
        if c.kind == "group_vq":
            return Q.group_vq(z, self.codebook(), beta=c.beta)
        if c.kind == "rvq":
            dropout = key if (train and c.quantizer_dropout and key is not None and n_quantizers is None) else None
            return Q.rvq(z, self.codebook(), dropout_key=dropout, num_active=n_quantizers, beta=c.beta)
        maps, lead = self._maps(z)
        out = Q.msvq(maps, self.codebook(), scales=self._scales(z), beta=c.beta)
        return out._replace(z_q=out.z_q.reshape(z.shape), codes=out.codes.reshape(lead + out.codes.shape[-1:]))

    def update(self, z, codes, key) -> None:
        """EMA codebooks: k-means init (first batch), EMA step, dead-code restart. Otherwise nothing."""
        c = self.config
        if not isinstance(getattr(self, "embedding", None), CodebookEMA):
            return
        state, z = self.codebook(), jax.lax.stop_gradient(z)
        k_init, k_dead = jax.random.split(key)
        msvq_args = lambda z, codes: (self._maps(z)[0], codes.reshape(-1, codes.shape[-1]))
        # rvq and msvq restart dead codes from the residuals each level saw in the forward pass,
        # so their EMA step and restart run together (rvq_update / msvq_update).
        init, ema, dead = {
            "vq": (Q.kmeans_init, Q.ema_update, lambda s, z, c, k, t: Q.restart_dead_codes(s, z, k, threshold=t)),
            "msvq": (Q.kmeans_init, lambda s, z, codes, decay: Q.msvq_ema_update(s, *msvq_args(z, codes), scales=self._scales(z), decay=decay),
                     lambda s, z, c, k, t: Q.msvq_update(s, *msvq_args(z, c), k, scales=self._scales(z), decay=self.config.decay, threshold=t)),
            "rvq": (Q.rvq_kmeans_init, Q.rvq_ema_update, lambda s, z, c, k, t: Q.rvq_update(s, z, c, k, decay=self.config.decay, threshold=t)),
            "group_vq": (Q.group_vq_kmeans_init, Q.group_vq_ema_update, lambda s, z, c, k, t: Q.group_vq_restart_dead_codes(s, z, k, threshold=t)),
        }[c.kind]
        if c.kmeans_init:
            state = init(state, z, k_init)
        combined = c.kind in ("rvq", "msvq") and c.dead_threshold > 0
        if not combined:
            state = ema(state, z, codes, decay=c.decay)
        if c.dead_threshold > 0:
            state = dead(state, z, codes, k_dead, c.dead_threshold)
        self.embedding[...], self.cluster_size[...], self.embed_sum[...] = state.codebook_CK, state.cluster_size_C, state.embed_sum_CK
        self.initted[...] = state.initted

    def lookup(self, codes, latent_shape: tuple) -> jax.Array:
        """int codes → float32 quantized latents `[*latent_shape, code_dim]` (what the decoder sees).
        rvq codes may hold fewer than num_quantizers levels (a lower bitrate)."""
        c = self.config
        if c.kind == "fsq":
            return Q.fsq_codes_to_vectors(codes, c.levels)
        if c.kind in ("lfq", "bsq"):
            return getattr(Q, f"{c.kind}_codes_to_vectors")(codes, c.code_dim)
        if c.kind == "vq":
            return Q.vq_codes_to_vectors(codes, self.codebook())
        if c.kind == "group_vq":
            return Q.group_vq_codes_to_vectors(codes, self.codebook())
        if c.kind == "rvq":
            n = codes.shape[-1]
            return Q.rvq_codes_to_vectors(codes, jax.tree.map(lambda x: x[:n], self.codebook()))
        spatial = tuple(latent_shape[len(latent_shape) - self.spatial:])
        size = spatial if self.spatial == 2 else spatial + (1,)
        maps = Q.msvq_codes_to_vectors(codes.reshape(-1, codes.shape[-1]), self.codebook(), size, scales=msvq_scales(c, spatial))
        return maps.reshape(tuple(latent_shape) + (c.code_dim,))
