"""Tokenizer training state and the jitted, data-parallel train step.

Dimension legend: B batch (sharded over the mesh's data×fsdp axes), then the
item axes (H, W, C images; T, H, W, C videos; L audio).

The generator objective is
    w_rec · reconstruction (L1 or L2; audio: + stft_weight · multi-resolution STFT)
  + quantizer aux loss (commitment, codebook, entropy terms)
  + [step ≥ gan.start_step] · λ · hinge generator loss of the patch discriminator,
with λ = gan.weight · ‖∇rec‖/‖∇gan‖ at the decoder's output layer when
`gan.adaptive`. The discriminator takes a hinge step on (real, reconstruction)
from gan.start_step on; before that neither GAN term is computed. EMA codebooks
are updated after the gradient step from the same batch's latents and codes.
With `train.ema_decay` > 0 the state also carries an exponential moving average
of the parameters (decay warmed up as min(decay, (1 + step) / (10 + step))),
which evaluation and export use. As in the backbone's step, the learning rate is
the schedule at the state's step, and a step whose loss, gradient norm or new
parameters (codebooks and discriminator included) are not finite is not applied
(`train/guards.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from mmntp_jax.sharding import logical_to_spec
from mmntp_jax.tokenizers.autoencoder import depth_to_space
from mmntp_jax.tokenizers.gan import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from mmntp_jax.tokenizers.registry import build_module
from mmntp_jax.tokenizers.spectral import multi_resolution_stft_loss
from mmntp_jax.train.guards import fill_guard, guard_step, init_guard
from mmntp_jax.train.optim import global_norm, make_optimizer
from mmntp_jax.train.resume_check import effective_schedule


@struct.dataclass
class TokenizerState:
    step: jax.Array
    params: Any  # nnx.State of the tokenizer's nnx.Param
    ema_params: Any  # their moving average when train.ema_decay > 0, else None
    codebooks: Any  # nnx.State of everything else (EMA codebooks); may be empty
    opt_state: Any
    disc_params: Any
    disc_opt_state: Any
    rng: jax.Array
    guard: Any  # GuardState (train/guards.py); None when restored from a checkpoint older than the guard


def reconstruction_loss(rec, x, loss_config, kind: str):
    err = rec - x
    loss = jnp.mean(jnp.abs(err)) if loss_config.reconstruction == "l1" else jnp.mean(jnp.square(err))
    loss = loss_config.reconstruction_weight * loss
    if kind == "audio" and loss_config.stft_weight > 0:
        loss = loss + loss_config.stft_weight * multi_resolution_stft_loss(rec, x)
    return loss


class TokenizerStepBuilder:
    """Optimizers, shardings and the jitted step for one experiment on one mesh
    (`guard=False`: every step applied unconditionally)."""

    def __init__(self, exp, mesh, *, guard: bool = True):
        self.exp, self.mesh, self.kind = exp, mesh, exp.kind
        module = build_module(exp.kind, exp.model, exp.train.seed)
        self.graphdef, params, _ = nnx.split(module, nnx.Param, ...)
        self.gan = exp.loss.gan if exp.kind != "audio" and exp.loss.gan.weight > 0 else None
        self.optimizer = make_optimizer(exp.optim, exp.train.steps)
        self.schedule = effective_schedule(exp.optim, exp.train.steps)
        self.guard = guard
        self.disc_optimizer = optax.adam(self.gan.lr, b1=0.5, b2=0.9) if self.gan else optax.identity()
        disc = PatchDiscriminator(exp.model.in_channels, self.gan.channels, self.gan.layers, rngs=nnx.Rngs(exp.train.seed + 1)) if self.gan else None
        self.disc_graphdef = nnx.graphdef(disc) if disc is not None else None
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.ema_decay = exp.train.ema_decay

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))

    # -- state -------------------------------------------------------------------
    def _create(self, seed: int) -> TokenizerState:
        module = build_module(self.kind, self.exp.model, seed)
        _, params, codebooks = nnx.split(module, nnx.Param, ...)
        disc_params = {}
        if self.gan:
            disc_params = nnx.state(PatchDiscriminator(self.exp.model.in_channels, self.gan.channels, self.gan.layers, rngs=nnx.Rngs(seed + 1)))
        key = jax.random.key(seed)
        return TokenizerState(
            step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params) if self.ema_decay else None, codebooks=codebooks, opt_state=self.optimizer.init(params),
            disc_params=disc_params, disc_opt_state=self.disc_optimizer.init(disc_params), rng=jax.random.key_data(jax.random.fold_in(key, 7)),
            guard=init_guard(),
        )

    def init_state(self, seed: int) -> TokenizerState:
        shapes = jax.eval_shape(lambda: self._create(seed))
        shardings = jax.tree.map(lambda _: self.replicated, shapes)
        return jax.jit(lambda: self._create(seed), out_shardings=shardings)()

    def abstract_state(self) -> TokenizerState:
        shapes = jax.eval_shape(lambda: self._create(0))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    optional_fields = ("ema_params", "guard")  # absent from checkpoints older than these fields

    def restore(self, checkpointer, step: int) -> TokenizerState:
        """The state saved at `step`; checkpoints from before the parameter average get ema_params=None."""
        state, _ = checkpointer.restore(step, self.abstract_state(), optional_fields=self.optional_fields)
        return fill_guard(state, self.replicated)

    def restart_schedule(self, origin: int) -> None:
        """A new learning-rate schedule from step `origin` on (before the first train step is traced)."""
        if "train_step" in self.__dict__:
            raise RuntimeError("restart_schedule after the train step was built")
        self.schedule = effective_schedule(self.exp.optim, self.exp.train.steps, origin)

    def module(self, state: TokenizerState, *, raw: bool = False) -> nnx.Module:
        """The tokenizer with the averaged parameters when EMA is on (the raw ones if `raw`)."""
        params = state.ema_params if self.ema_decay and not raw else state.params
        return nnx.merge(self.graphdef, params, state.codebooks)

    def _ema(self, ema_params, params, step):
        if not self.ema_decay:
            return ema_params
        decay = jnp.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)

    # -- the generator objective ---------------------------------------------------
    def _objective(self, params, state: TokenizerState, x, key, gan_on):
        model = nnx.merge(self.graphdef, params, state.codebooks)
        z = model.encode_latent(x)
        out = model.quantize(z, key=key, train=True)
        loss_cfg = self.exp.loss
        metrics = {f"quantizer/{k}": v for k, v in out.metrics.items()}
        if self.kind == "audio":
            rec = model.decode_latent(out.z_q)
            rec_loss = reconstruction_loss(rec, x, loss_cfg, self.kind)
            total = rec_loss + out.aux_loss
            return total, (metrics | {"reconstruction": rec_loss, "aux_loss": out.aux_loss}, z, out.codes, rec)
        h = model.decoder.features(model.post_quant_conv(out.z_q))
        head_def, head_state = nnx.split(model.decoder.conv_out)
        patch = model.config.patch

        def render(hs, h):
            return (depth_to_space(nnx.merge(head_def, hs)(h), patch) + 1.0) / 2.0

        rec = render(head_state, h)
        rec_loss = reconstruction_loss(rec, x, loss_cfg, self.kind)
        total = rec_loss + out.aux_loss
        metrics |= {"reconstruction": rec_loss, "aux_loss": out.aux_loss}
        if self.gan:
            gan = self.gan

            def gan_term(_):
                disc = nnx.merge(self.disc_graphdef, state.disc_params)
                g_loss = hinge_g_loss(disc(rec))
                weight = jnp.float32(gan.weight)
                if gan.adaptive:
                    h_sg = jax.lax.stop_gradient(h)
                    g_rec = jax.grad(lambda hs: reconstruction_loss(render(hs, h_sg), x, loss_cfg, self.kind))(head_state)
                    g_gan = jax.grad(lambda hs: hinge_g_loss(disc(render(hs, h_sg))))(head_state)
                    weight = weight * adaptive_weight(g_rec, g_gan)
                return g_loss, weight

            g_loss, weight = jax.lax.cond(gan_on, gan_term, lambda _: (jnp.float32(0.0), jnp.float32(0.0)), None)
            total = total + weight * g_loss
            metrics |= {"gan/g_loss": g_loss, "gan/weight": weight}
        return total, (metrics, z, out.codes, rec)

    # -- the step ---------------------------------------------------------------------
    def _train_step(self, state: TokenizerState, x):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_quant, k_ema = jax.random.split(key)
        gan_on = (state.step >= self.gan.start_step) if self.gan else jnp.asarray(False)
        grad_fn = jax.value_and_grad(self._objective, has_aux=True)
        (loss, (metrics, z, codes, rec)), grads = grad_fn(state.params, state, x, k_quant, gan_on)
        lr = self.schedule(state.step)
        optimizer = make_optimizer(self.exp.optim, self.exp.train.steps, schedule=lambda _: lr)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model = nnx.merge(self.graphdef, params, state.codebooks)
        model.quantize.update(z, codes, k_ema)
        _, _, codebooks = nnx.split(model, nnx.Param, ...)
        disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
        if self.gan:

            def disc_step(_):
                def d_objective(dp):
                    disc = nnx.merge(self.disc_graphdef, dp)
                    return hinge_d_loss(disc(x), disc(jax.lax.stop_gradient(rec)))

                d_loss, d_grads = jax.value_and_grad(d_objective)(state.disc_params)
                d_updates, new_opt = self.disc_optimizer.update(d_grads, state.disc_opt_state, state.disc_params)
                return optax.apply_updates(state.disc_params, d_updates), new_opt, d_loss

            skip = lambda _: (state.disc_params, state.disc_opt_state, jnp.float32(0.0))
            disc_params, disc_opt_state, d_loss = jax.lax.cond(gan_on, disc_step, skip, None)
            metrics["gan/d_loss"] = d_loss
        metrics |= {"loss": loss, "grad_norm": global_norm(grads), "lr": lr}
        if self.kind != "audio":
            metrics["psnr"] = jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(jnp.mean(jnp.square(jnp.clip(rec, 0, 1) - x), axis=tuple(range(1, x.ndim))), 1e-6)))
        ema_params = self._ema(state.ema_params, params, state.step)
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, codebooks=codebooks, opt_state=opt_state, disc_params=disc_params, disc_opt_state=disc_opt_state)
        if self.guard:
            checked = lambda s: (s.params, s.codebooks, s.disc_params)  # noqa: E731
            new_state, guard_metrics = guard_step(state, new_state, loss, metrics["grad_norm"], spike_factor=self.exp.train.spike_factor, checked=checked)
            metrics |= guard_metrics
        return new_state, metrics

    @functools.cached_property
    def train_step(self):
        state_shardings = jax.tree.map(lambda _: self.replicated, jax.eval_shape(lambda: self._create(0)))
        return jax.jit(self._train_step, in_shardings=(state_shardings, None), out_shardings=(state_shardings, None), donate_argnums=(0,))
