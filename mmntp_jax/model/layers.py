"""Building blocks: parameter creation, RMSNorm, embedding, SwiGLU MLP, RoPE.

Dimensions: B batch, T time, D model dim, F ffn dim, V vocab, E head dim.
Parameters follow Hugging Face Llama names (`embed_tokens`, `gate_proj`,
`up_proj`, `down_proj`, `*_layernorm`) and store kernels as [in, out].
RoPE uses the split-halves (rotate_half) layout of HF Llama.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.sharding import constrain


def param(rngs: nnx.Rngs, shape, logical_axes, *, std: float | None = None, value: float | None = None, dtype=jnp.float32) -> nnx.Param:
    """A parameter with logical-axis metadata; normal(std) or constant `value`."""
    if value is not None:
        data = jnp.full(shape, value, dtype)
    else:
        data = std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(data, logical_axes=tuple(logical_axes))


class RMSNorm(nnx.Module):
    """y = x / rms(x) · weight, computed in float32."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, logical_axis: str | None = "embed"):
        self.weight = param(rngs, (dim,), (logical_axis,), value=1.0)
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...]).astype(x.dtype)


class Embedding(nnx.Module):
    """Token ids → vectors; `attend` gives logits against the same table (tied head)."""

    def __init__(self, vocab_size: int, dim: int, std: float, *, rngs: nnx.Rngs):
        self.embedding = param(rngs, (vocab_size, dim), ("vocab", "embed"), std=std)

    def __call__(self, ids_BT, dtype):
        return jnp.take(self.embedding[...].astype(dtype), ids_BT, axis=0)


class MLP(nnx.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) · up_proj(x))."""

    def __init__(self, d_model: int, d_ff: int, std: float, out_std: float, *, rngs: nnx.Rngs):
        self.gate_proj = param(rngs, (d_model, d_ff), ("embed", "mlp"), std=std)
        self.up_proj = param(rngs, (d_model, d_ff), ("embed", "mlp"), std=std)
        self.down_proj = param(rngs, (d_ff, d_model), ("mlp", "embed"), std=out_std)

    def __call__(self, x_BTD):
        dtype = x_BTD.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_proj[...].astype(dtype))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_proj[...].astype(dtype))
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
        return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_proj[...].astype(dtype))


def rope_cos_sin(positions_BT, head_dim: int, theta: float):
    """cos, sin of shape [B, T, E] for the rotate_half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BTe = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    angles_BTE = jnp.concatenate([angles_BTe, angles_BTe], axis=-1)
    return jnp.cos(angles_BTE), jnp.sin(angles_BTE)


def apply_rope(x_BTHE, cos_BTE, sin_BTE):
    """x·cos + rotate_half(x)·sin, rotate_half([x1, x2]) = [-x2, x1]; math in float32."""
    x = x_BTHE.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x * cos_BTE[:, :, None, :] + rotated * sin_BTE[:, :, None, :]
    return out.astype(x_BTHE.dtype)
