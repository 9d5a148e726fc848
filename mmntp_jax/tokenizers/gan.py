"""Patch-GAN discriminator and the hinge losses of VQGAN training.

Dimension legend: B batch, H height, W width, C channels, h×w the grid of patch logits.

`PatchDiscriminator` is the N-layer PatchGAN of Isola et al. (kernel 4, stride 2,
LeakyReLU 0.2) with GroupNorm instead of BatchNorm, so a step is a pure function
of the batch. Video frames are judged one by one (`[B, T, H, W, C]` → `[B·T, …]`).
`adaptive_weight` balances the generator's GAN term against reconstruction by
the ratio of their gradient norms at the decoder's output layer (Esser et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.tokenizers.autoencoder import GroupNorm


@dataclass(frozen=True)
class GanConfig:
    """weight 0 turns the GAN off; the discriminator starts learning (and the
    generator sees its loss) from `start_step`; `adaptive` scales by gradient norms."""

    weight: float = 0.0
    start_step: int = 2000
    adaptive: bool = True
    channels: int = 32
    layers: int = 2
    lr: float = 1e-4

    def validate(self, prefix: str = "gan") -> None:
        from mmntp_jax.config import ConfigError

        if self.weight < 0 or self.start_step < 0 or self.layers < 1 or self.channels < 1 or self.lr <= 0:
            raise ConfigError(f"config section '{prefix}': weight, start_step ≥ 0 and layers, channels, lr > 0 expected, got {self}")


class PatchDiscriminator(nnx.Module):
    def __init__(self, in_channels: int, channels: int = 32, layers: int = 2, *, rngs: nnx.Rngs):
        convs, norms, cin = [nnx.Conv(in_channels, channels, (4, 4), 2, padding=1, rngs=rngs)], [], channels
        for n in range(1, layers + 1):
            cout = channels * min(2**n, 8)
            convs.append(nnx.Conv(cin, cout, (4, 4), 2 if n < layers else 1, padding=1, rngs=rngs))
            norms.append(GroupNorm(cout, 8))
            cin = cout
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.conv_out = nnx.Conv(cin, 1, (4, 4), 1, padding=1, rngs=rngs)

    def __call__(self, x):
        """Images `[B, H, W, C]` (or videos `[B, T, H, W, C]`) in [0, 1] → patch logits `[B(·T), h, w]`."""
        x = x.reshape((-1,) + x.shape[-3:]) * 2.0 - 1.0
        h = jax.nn.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(list(self.convs)[1:], self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)[..., 0]


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake):
    return -jnp.mean(logits_fake)


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(tree)))


def adaptive_weight(grad_rec, grad_gan, max_weight: float = 1e4) -> jax.Array:
    """‖∇rec‖ / (‖∇gan‖ + 1e-4) at the output layer, clipped to [0, max_weight], no gradient."""
    weight = _norm(grad_rec) / (_norm(grad_gan) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
