"""Continuous image input: an image block enters the backbone as its tokenizer's latents, projected to d_model.

Dimensions: B batch, T time, D model dim, V vocab, F feature (latent) dim,
G = F + 1 (a table row: the latent and a 1/0 "is a continuous token" flag).

`model.image_input = continuous` (config.py) replaces the embedding of every
image code id by `latent(code) · kernel + bias`, where `latent(code)` is the
image tokenizer's quantized latent of that code — exactly the vector its
decoder reads (`Bottleneck.lookup`: FSQ, LFQ, BSQ and VQ codebooks; one code
per position). The data pipeline keeps carrying codes: shards, packing,
masks, positions and the block markers are those of the discrete model, and
a generated image's codes are fed back through the same path, so KV-cache
sampling needs nothing new. Markers, text and every other id keep their
`embed_tokens` row.

Parameters (`multi_modal_projector`, after LLaVA's projector):
    latents [V, G]   the table: row `id` holds (latent, 1) for an image code, zeros
                     otherwise; filled once from the tokenizer (`code_latent_table`)
                     and frozen (no gradient, no weight decay), so it is checkpointed
                     and loaded with the model and never drifts from the tokenizer
    kernel  [F, D]   trained
    bias    [D]      trained

Why codes rather than pixels or pre-quantization latents in the data: the
codes are what the shards already hold, the quantized latent is a fixed
function of them (no second copy of the data set, no encoder in the step),
and it is what the tokenizer's decoder reconstructs the image from. What it
gives up is the detail lost to quantization (docs/training.md, "Continuous
image input"). The encoder trained end to end is `model.image_reader=pixels`
(model/pixel_reader.py), over the decoded codes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmntp_jax.config import ConfigError
from mmntp_jax.model.layers import param, project

ONE_CODE_PER_POSITION = ("fsq", "lfq", "bsq", "vq")


class ContinuousInput(nnx.Module):
    """Replaces the embeddings of the ids the table flags by their projected latents."""

    def __init__(self, vocab_size: int, feature_dim: int, d_model: int, std: float, *, rngs: nnx.Rngs):
        self.feature_dim = feature_dim
        self.latents = param(rngs, (vocab_size, feature_dim + 1), ("vocab", None), value=0.0)
        self.kernel = param(rngs, (feature_dim, d_model), (None, "embed"), std=std)
        self.bias = param(rngs, (d_model,), ("embed",), value=0.0)

    def __call__(self, ids_BT, x_BTD):
        table_VG = jax.lax.stop_gradient(self.latents[...])
        row_BTG = jnp.take(table_VG, ids_BT, axis=0)
        feature_BTF, flag_BT = row_BTG[..., : self.feature_dim], row_BTG[..., self.feature_dim]
        h_BTD = project(feature_BTF.astype(x_BTD.dtype), self.kernel[...]) + self.bias[...].astype(x_BTD.dtype)
        return jnp.where(flag_BT[..., None] > 0, h_BTD, x_BTD)


def code_latent_table(tokenizer, vocab, vocab_size: int, modality: str = "image") -> np.ndarray:
    """[vocab_size, F + 1]: each `modality` code id's quantized latent and a 1; zeros elsewhere."""
    module = tokenizer.module()
    quantizer = module.quantize.config
    if quantizer.kind not in ONE_CODE_PER_POSITION:
        raise ConfigError(f"model.image_input=continuous / model.image_output=regression|diffusion: the image tokenizer's quantizer is "
                          f"{quantizer.kind!r}; code latents need one code per position ({', '.join(ONE_CODE_PER_POSITION)})")
    codes = np.arange(vocab.range_size(modality))
    latents_CF = np.asarray(module.quantize.lookup(jnp.asarray(codes), (len(codes),)), np.float32).reshape(len(codes), -1)
    bad = np.flatnonzero(~np.isfinite(latents_CF).all(axis=1))
    if bad.size:
        raise ConfigError(f"the image tokenizer's code latents are not finite for {bad.size} codes (first: code {bad[0]}); "
                          "its codebook is damaged, so it cannot supply continuous latents")
    table = np.zeros((vocab_size, latents_CF.shape[1] + 1), np.float32)
    start = vocab.offset(modality)
    table[start : start + len(codes), :-1] = latents_CF
    table[start : start + len(codes), -1] = 1.0
    return table


def fill_latents(params: dict, table: np.ndarray, feature_dim: int, sharding=None, module: str = "multi_modal_projector") -> dict:
    """`params` with `module`'s table set to `table` (shape-checked against `model.image_feature_dim`)."""
    current = params[module]["latents"]
    if table.shape != tuple(current.shape):
        raise ConfigError(f"model.image_feature_dim={feature_dim}: the image tokenizer's latents are {table.shape[1] - 1}-dimensional "
                          f"(table {table.shape}, the model expects {tuple(current.shape)}); set model.image_feature_dim={table.shape[1] - 1}")
    value = jnp.asarray(table, current.dtype)
    value = jax.device_put(value, sharding if sharding is not None else current.sharding)
    return dict(params, **{module: dict(params[module], latents=value)})


def latent_modules(model_config) -> tuple[str, ...]:
    """The parameter modules holding a code-latent table under `model_config`."""
    return (("multi_modal_projector",) if model_config.image_input == "continuous" else ()) + (
        ("image_head",) if model_config.image_output != "discrete" else ()) + (
        ("image_reader",) if model_config.image_reader == "pixels" else ())
