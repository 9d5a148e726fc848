"""Per-block (Transfusion-style) diffusion: an image block enters as its noised latents, attends to itself both ways, and predicts their velocity.

Dimensions: B batch, T time, D model dim, F latent dim, E time features,
N codes per block, S cache length, G = F + 1 (a table row).

`model.image_output=diffusion` with `model.diffusion_form=block` (Zhou et al.
2024, "Transfusion"). In training, every image block whose codes are trained
targets (a drawn image; a context image stays clean) is noised as a whole:

    x0_j    the code latent of input j (the table of continuous_output.py)
    t       one level per block, U(0, 1);  ε_j ~ N(0, I)
    x_t_j = (1 − t)·x0_j + t·ε_j         enters as  x_t_j·in + in_bias + time(t)·time_kernel
    v̂_j   = h_j·out + out_bias          loss  mean over F of (v̂_j − (ε_j − x0_j))²

`noise_blocks` finds the members (an input j that is an image code whose own
target-position j − 1 is trained) and gives them one bidirectional group per
block (group id 1 + the block's first row index, so the one mask builder makes
the block attend to itself both ways). Position j's loss then sees the noised
latents of its whole block and the clean context before it, never a clean
latent of the block (its input embedding is replaced, not added to) and never
anything after the block. The image code targets take no cross-entropy; the
block's loss is weighted as its targets were (`train.loss_weights`' image entry).

Sampling (`denoise_block`): when a prompt ends in `<boi>`, the N latents start
at noise (× temperature) and take `model.diffusion_steps` Euler steps, each one
forward pass of the block over the prompt's KV cache (the cache is not
written); with guidance each velocity is cond + (S − 1)·(cond − free). The
final latents become their nearest codes, whose latents enter the cache at
t = 0 as the block's clean context; `<eoi>` follows. With this form an image is
generated only where the prompt opens one: the sampler never emits `<boi>`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.model.layers import param


class NoisedBlocks(NamedTuple):
    x_t_BTF: jax.Array  # noised latents (zeros off the blocks)
    t_BT: jax.Array  # each member's block noise level
    velocity_BTF: jax.Array  # the target ε − x0
    member_BT: jax.Array  # float 1 at the positions of a noised block
    groups_BT: jax.Array  # int32 bidirectional group ids (0 off the blocks)


def noise_blocks(table_VG, inputs_BT, loss_mask_BT, key) -> NoisedBlocks:
    """The noised blocks of a packed batch (see the module docstring)."""
    from mmntp_jax.model.continuous_output import flow_pair, table_rows

    x0_BTF, flag_BT = table_rows(table_VG, inputs_BT)
    b, t, f = x0_BTF.shape
    trained_before_BT = jnp.pad(loss_mask_BT[:, :-1].astype(jnp.float32), ((0, 0), (1, 0)))
    member_BT = flag_BT * (trained_before_BT > 0)
    index_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    previous_BT = jnp.pad(member_BT[:, :-1], ((0, 0), (1, 0)))
    start_BT = jax.lax.cummax(jnp.where((member_BT > 0) & (previous_BT == 0), index_BT, 0), axis=1)
    t_key, noise_key = jax.random.split(key)
    level_BT = jnp.take_along_axis(jax.random.uniform(t_key, (b, t), jnp.float32), start_BT, axis=1)
    noise_BTF = jax.random.normal(noise_key, (b, t, f), jnp.float32)
    x_t_NF, v_NF = flow_pair(x0_BTF.reshape(-1, f), noise_BTF.reshape(-1, f), level_BT.reshape(-1))
    on_BT1 = member_BT[..., None]
    groups_BT = jnp.where(member_BT > 0, start_BT + 1, 0).astype(jnp.int32)
    return NoisedBlocks(x_t_NF.reshape(b, t, f) * on_BT1, level_BT * member_BT, v_NF.reshape(b, t, f) * on_BT1, member_BT, groups_BT)


class BlockDiffusion(nnx.Module):
    """The block form's input projection of noised latents and its linear velocity head (`image_head.block.*`)."""

    def __init__(self, d_model: int, feature_dim: int, std: float, *, rngs: nnx.Rngs):
        from mmntp_jax.model.continuous_output import TIME_FEATURES

        self.in_kernel = param(rngs, (feature_dim, d_model), (None, "embed"), std=1.0 / math.sqrt(feature_dim))
        self.in_bias = param(rngs, (d_model,), ("embed",), value=0.0)
        self.time_kernel = param(rngs, (TIME_FEATURES, d_model), (None, "embed"), std=std)
        self.out_kernel = param(rngs, (d_model, feature_dim), ("embed", None), std=std)
        self.out_bias = param(rngs, (feature_dim,), (None,), value=0.0)

    def embed(self, x_t_BTF, t_BT, dtype=jnp.float32):
        """[B, T, D] input embeddings of noised latents at their levels."""
        from mmntp_jax.model.continuous_output import time_features

        b, t, f = x_t_BTF.shape
        time_BTD = (time_features(t_BT.reshape(-1)) @ self.time_kernel[...].astype(jnp.float32)).reshape(b, t, -1)
        x_BTD = jnp.einsum("BTF,FD->BTD", x_t_BTF.astype(jnp.float32), self.in_kernel[...].astype(jnp.float32))
        return (x_BTD + self.in_bias[...] + time_BTD).astype(dtype)

    def velocity(self, hidden_BTD):
        return jnp.einsum("BTD,DF->BTF", hidden_BTD.astype(jnp.float32), self.out_kernel[...].astype(jnp.float32)) + self.out_bias[...]

    def losses(self, hidden_BTD, noised: NoisedBlocks):
        """(per-position loss [B, T], members [B, T])."""
        err_BT = jnp.mean(jnp.square(self.velocity(hidden_BTD) - noised.velocity_BTF), axis=-1)
        return err_BT * noised.member_BT, noised.member_BT


def denoise_block(model, cache, index: int, positions_BN, key, *, temperature: float, guidance=None):
    """(codes [B', N], hidden of the block's last position [B, 1, D], cache with the clean block).

    The N block positions sit at cache slots index … index + N − 1 and
    `positions_BN`; B' = B/2 under guidance (rows [cond; free] share their latents).
    """
    from mmntp_jax.model.continuous_output import guided, nearest_code

    head = model.image_head
    block = head.block
    b, n = positions_BN.shape
    rows = b // 2 if guidance is not None else b
    f = head.latents.shape[1] - 1
    both = (lambda a: jnp.concatenate([a, a], axis=0)) if guidance is not None else (lambda a: a)
    segments_BN = jnp.ones((b, n), jnp.int32)
    groups_BN = jnp.full((b, n), index + 1, jnp.int32)
    steps = head.steps
    dt = 1.0 / steps

    def run(x_RNF, level):
        emb_BND = block.embed(both(x_RNF), jnp.full((b, n), level, jnp.float32), model.compute_dtype)
        return model.decode(None, positions_BN, segments_BN, cache, index, groups_BN, embeddings_BTD=emb_BND)

    def step(i, x_RNF):
        hidden_BND, _ = run(x_RNF, 1.0 - i * dt)
        return x_RNF - dt * guided(block.velocity(hidden_BND), guidance)

    x_RNF = temperature * jax.random.normal(key, (rows, n, f), jnp.float32)
    x_RNF = jax.lax.fori_loop(0, steps, step, x_RNF)
    table_VG = head.table()
    codes_RN = nearest_code(x_RNF.reshape(-1, f), table_VG).reshape(rows, n)
    clean_RNF = jnp.take(table_VG, codes_RN, axis=0)[..., :f]
    hidden_BND, cache = run(clean_RNF, 0.0)
    return codes_RN, hidden_BND[:, -1:], cache
