"""The common tokenizer interface: `Tokenizer` wraps any tokenizer module as pure functions of its params.

    tok = Tokenizer.create("image", ImageTokenizerConfig(...), seed=0)
    codes = tok.encode(tok.params, images)      # int32 [B, N]
    images = tok.decode(tok.params, codes)      # float32 [B, H, W, C]
    tok.tokens_per_item((32, 32))               # N
    tok.codebook_size, tok.num_quantizers       # K codes per level, L levels per position
    emb = tok.embed(tok.params, images)         # continuous tokenizers: [B, N, D]

`params` is the module's whole `nnx.State` (parameters and EMA codebooks);
`encode`/`decode`/`embed` are jitted, batched, and raise `ValueError` naming the
shape when the input does not fit the tokenizer.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from mmntp_jax.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from mmntp_jax.tokenizers.continuous import ContinuousTokenizer, ContinuousTokenizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from mmntp_jax.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

MODULES = {
    "image": (ImageTokenizer, ImageTokenizerConfig),
    "audio": (AudioTokenizer, AudioTokenizerConfig),
    "video": (VideoTokenizer, VideoTokenizerConfig),
    "continuous": (ContinuousTokenizer, ContinuousTokenizerConfig),
}


def build_module(kind: str, config, seed: int = 0) -> nnx.Module:
    if kind not in MODULES:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {', '.join(MODULES)}")
    cls, config_cls = MODULES[kind]
    if not isinstance(config, config_cls):
        raise ValueError(f"{kind} tokenizer needs a {config_cls.__name__}, got {type(config).__name__}")
    return cls(config, rngs=nnx.Rngs(seed))


class Tokenizer:
    """A tokenizer as (graph, params): pure, jitted encode / decode / embed."""

    def __init__(self, kind: str, config, module: nnx.Module):
        self.kind, self.config = kind, config
        self.graphdef, self.params = nnx.split(module)

    @classmethod
    def create(cls, kind: str, config, seed: int = 0) -> "Tokenizer":
        return cls(kind, config, build_module(kind, config, seed))

    def module(self, params=None) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params if params is None else params)

    @property
    def discrete(self) -> bool:
        return self.kind != "continuous"

    @property
    def vocab_size(self) -> int:
        if not self.discrete:
            raise ValueError("continuous tokenizers produce embeddings, not codes; they have no vocabulary")
        return self.module().vocab_size

    @property
    def codebook_size(self) -> int:
        """Same as `vocab_size` (the name `mmntp_jax.data.tokenize` uses)."""
        return self.vocab_size

    @property
    def num_quantizers(self) -> int:
        """Codes per position (rvq levels, group_vq groups; else 1): the levels `Vocab.for_tokenizers` gives the range."""
        return int(getattr(getattr(self.config, "quantizer", None), "codes_per_position", 1))

    def tokens_per_item(self, shape=None, **options) -> int:
        return self.module().tokens_per_item(shape, **options)

    def _need(self, discrete: bool, what: str) -> None:
        if self.discrete != discrete:
            raise ValueError(f"{self.kind} tokenizer has no {what}(); use {'encode/decode' if self.discrete else 'embed'}")

    @functools.cached_property
    def _encode(self):
        return jax.jit(lambda params, x, options: nnx.merge(self.graphdef, params).encode(x, **dict(options)), static_argnums=2)

    @functools.cached_property
    def _decode(self):
        return jax.jit(lambda params, codes, options: nnx.merge(self.graphdef, params).decode(codes, **dict(options)), static_argnums=2)

    @functools.cached_property
    def _embed(self):
        return jax.jit(lambda params, x: nnx.merge(self.graphdef, params).embed(x))

    def encode(self, params, x, **options):
        """Items → int32 codes `[B, N]` (options: audio `n_quantizers`)."""
        self._need(True, "encode")
        return self._encode(params, x, tuple(sorted(options.items())))

    def decode(self, params, codes, **options):
        """Codes `[B, N]` → items (options: `shape` of one item, audio `n_quantizers`)."""
        self._need(True, "decode")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return self._decode(params, codes, tuple(sorted(options.items())))

    def embed(self, params, x):
        """Continuous tokenizers: items → embeddings `[B, N, D]`."""
        self._need(False, "embed")
        return self._embed(params, x)
