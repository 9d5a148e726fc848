"""The train state and the jitted, sharded train and eval steps.

Dimensions: B batch, T time, A accumulation steps, M modalities.

The loss is the mean token cross-entropy over `loss_mask` of the whole global
batch (+ z_loss · mean log-partition²). Gradient accumulation splits the batch
into A strided micro-batches (row i goes to micro-batch i mod A, so each stays
spread over the data shards), sums their gradients of the summed loss and
divides once by the batch's token count: the update equals the un-accumulated one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from mmntp_jax.data.vocab import MODALITIES
from mmntp_jax.model.heads import fused_cross_entropy, pick_chunk, token_losses
from mmntp_jax.model.init import bind, graphdef, init_params, param_specs
from mmntp_jax.sharding import batch_sharding
from mmntp_jax.train.optim import global_norm, learning_rate_schedule, make_optimizer

N_MODALITIES = len(MODALITIES)


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _sums(loss_BT, lse_BT, batch):
    mask_BT = batch["loss_mask"].astype(jnp.float32)
    loss_BT, lse_BT = jax.lax.stop_gradient(loss_BT), jax.lax.stop_gradient(lse_BT)
    onehot_BTM = jax.nn.one_hot(batch["modality"], N_MODALITIES, dtype=jnp.float32) * mask_BT[..., None]
    return {
        "loss_sum": jnp.sum(loss_BT * mask_BT),
        "z_sum": jnp.sum(jnp.square(lse_BT) * mask_BT),
        "weight": jnp.sum(mask_BT),
        "modality_loss_sum": jnp.einsum("BT,BTM->M", loss_BT, onehot_BTM),
        "modality_weight": jnp.sum(onehot_BTM, axis=(0, 1)),
    }


def loss_sums(params, graph, batch, *, loss_chunk: int):
    """Summed token loss, z-loss term and token weight, in total and per modality."""
    model = bind(graph, params)
    hidden_BTD = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    loss_BT, lse_BT = token_losses(hidden_BTD, model.head_kernel(), batch["targets"], loss_chunk)
    return _sums(loss_BT, lse_BT, batch)


def training_objective(params, graph, batch, *, loss_chunk: int, z_loss: float, fused: bool = True):
    """(Σ mask·loss + z·Σ mask·lse², sums): the differentiable numerator of the train loss.

    `fused` uses the fused linear cross-entropy (gradients formed chunk by chunk);
    otherwise plain autodiff through `token_losses`.
    """
    model = bind(graph, params)
    hidden_BTD = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    mask_BT = batch["loss_mask"].astype(jnp.float32)
    if fused:
        total, loss_BT, lse_BT = fused_cross_entropy(hidden_BTD, model.head_kernel(), batch["targets"], mask_BT, z_loss, loss_chunk)
    else:
        loss_BT, lse_BT = token_losses(hidden_BTD, model.head_kernel(), batch["targets"], loss_chunk)
        total = jnp.sum(loss_BT * mask_BT) + z_loss * jnp.sum(jnp.square(lse_BT) * mask_BT)
    return total, _sums(loss_BT, lse_BT, batch)


class StepBuilder:
    """Builds the optimizer, state shardings and jitted steps for one config and mesh."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.graph = graphdef(config.model)
        self.optimizer = make_optimizer(config.optim, config.train.steps)
        self.schedule = learning_rate_schedule(config.optim, config.train.steps)
        self.loss_chunk = pick_chunk(config.train.seq_len, config.model.vocab_size, config.train.loss_chunk)
        self.fused_loss = True
        self.state_shardings = self._state_shardings()
        self.batch_shardings = {k: batch_sharding(mesh) for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask", "modality")}

    # -- state ---------------------------------------------------------------
    def _state_shardings(self):
        specs = param_specs(self.config.model)
        abstract_params = jax.eval_shape(lambda: init_params(self.config.model, jax.random.key(0)))
        abstract_opt = jax.eval_shape(self.optimizer.init, abstract_params)
        is_spec = lambda x: isinstance(x, PartitionSpec)
        opt_specs = optax.tree_map_params(
            self.optimizer, lambda _, spec: spec, abstract_opt, specs,
            transform_non_params=lambda _: PartitionSpec(), is_leaf=is_spec,
        )
        named = lambda tree: jax.tree.map(lambda s: NamedSharding(self.mesh, s), tree, is_leaf=is_spec)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return TrainState(step=replicated, params=named(specs), opt_state=named(opt_specs), rng=replicated)

    def init_state(self, seed: int) -> TrainState:
        def create():
            key = jax.random.key(seed)
            params = init_params(self.config.model, jax.random.fold_in(key, 0))
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params),
                rng=jax.random.key_data(jax.random.fold_in(key, 1)),
            )

        return jax.jit(create, out_shardings=self.state_shardings)()

    def abstract_state(self) -> TrainState:
        shapes = jax.eval_shape(lambda: self.init_state(0))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, self.state_shardings)

    # -- steps ---------------------------------------------------------------
    def _grads(self, params, batch):
        accum = self.config.optim.grad_accum
        total_weight = jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)
        z = self.config.train.z_loss

        def objective(p, micro):
            total, sums = training_objective(p, self.graph, micro, loss_chunk=self.loss_chunk, z_loss=z, fused=self.fused_loss)
            return total / total_weight, sums

        grad_fn = jax.grad(objective, has_aux=True)
        if accum == 1:
            return grad_fn(params, batch)
        micro_batches = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

        def body(carry, micro):
            grads, sums = grad_fn(params, micro)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches)))
        (grads, sums), _ = jax.lax.scan(body, zeros, micro_batches)
        return grads, sums

    def _train_step(self, state: TrainState, batch):
        grads, sums = self._grads(state.params, batch)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = summarize(sums)
        metrics["grad_norm"] = global_norm(grads)
        metrics["lr"] = self.schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    @functools.cached_property
    def train_step(self):
        return jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, None),
            donate_argnums=(0,),
        )

    @functools.cached_property
    def eval_step(self):
        fn = lambda params, batch: loss_sums(params, self.graph, batch, loss_chunk=self.loss_chunk)
        return jax.jit(fn, in_shardings=(self.state_shardings.params, self.batch_shardings))


def summarize(sums) -> dict:
    """Mean losses from summed terms: loss, z_loss and loss/<modality> where present."""
    weight = jnp.maximum(sums["weight"], 1.0)
    metrics = {"loss": sums["loss_sum"] / weight, "z_loss": sums["z_sum"] / weight, "tokens": sums["weight"]}
    for i, name in enumerate(MODALITIES):
        w = sums["modality_weight"][i]
        metrics[f"loss/{name}"] = jnp.where(w > 0, sums["modality_loss_sum"][i] / jnp.maximum(w, 1.0), jnp.nan)
    return metrics
