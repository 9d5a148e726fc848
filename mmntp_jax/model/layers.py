"""Building blocks: parameter creation, the dense projection, RMSNorm, embedding, SwiGLU MLP, RoPE.

Dimensions: B batch, T time, D model dim, F ffn dim, V vocab, E head dim,
N tokens (B·T flattened), I / O a projection's input / output features.
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


@jax.custom_vjp
def dense(x_NI, w_IO):
    """x_NI @ w_IO over flattened tokens, with the backward written out.

    Autodiff of `einsum("BTD,DF->BTF")` leaves XLA's CPU backend transposing each
    [B·T, F] gradient before the weight-gradient dot (a third of the step at
    d192); the explicit backward below takes both dots in row-major order and
    compiles to no transposes. Weight gradients accumulate in float32.
    """
    return jnp.dot(x_NI, w_IO, preferred_element_type=jnp.float32).astype(x_NI.dtype)


def _dense_fwd(x_NI, w_IO):
    return dense(x_NI, w_IO), (x_NI, w_IO)


def _dense_bwd(residuals, g_NO):
    x_NI, w_IO = residuals
    dx_NI = jnp.einsum("NO,IO->NI", g_NO, w_IO, preferred_element_type=jnp.float32).astype(x_NI.dtype)
    dw_IO = jnp.einsum("NI,NO->IO", x_NI, g_NO, preferred_element_type=jnp.float32).astype(w_IO.dtype)
    return dx_NI, dw_IO


dense.defvjp(_dense_fwd, _dense_bwd)


def project(x_BTI, w_IO):
    """[B, T, I] · [I, O] → [B, T, O] through `dense` (kernels of more axes are reshaped by the caller)."""
    b, t, i = x_BTI.shape
    return dense(x_BTI.reshape(b * t, i), w_IO.astype(x_BTI.dtype)).reshape(b, t, w_IO.shape[-1])


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
        gate_BTF = project(x_BTD, self.gate_proj[...])
        up_BTF = project(x_BTD, self.up_proj[...])
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
        return project(h_BTF, self.down_proj[...])


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
