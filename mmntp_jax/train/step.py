"""The train state and the jitted, sharded train and eval steps.

Dimensions: B batch, T time, A accumulation steps, M modalities.

The loss is the weighted mean token cross-entropy over `loss_mask` of the whole
global batch, Σ w·mask·ce / Σ w·mask with w the `train.loss_weights` entry of
the target's modality (1 if unlisted, so by default the plain mean over
`loss_mask`), + z_loss · the same weighted mean of log-partition². With
`train.modality_softmax` each target's ce and log-partition are those of the
softmax restricted to its legal ids (`model/legal_ids.py`, from the data's
Vocab). Metrics per modality are unweighted means over `loss_mask` (see
`summarize`). Gradient accumulation splits the batch
into A strided micro-batches (row i goes to micro-batch i mod A, so each stays
spread over the data shards), sums their gradients of the summed loss and
divides once by the batch's Σ w·mask: the update equals the un-accumulated one.

The learning rate is the schedule at the state's step (`resume_check.effective_schedule`,
which a restarted schedule shifts). The step is guarded (`train/guards.py`): one
whose loss, gradient norm or new parameters are not finite is not applied.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from mmntp_jax.data.vocab import MODALITIES
from mmntp_jax.model.continuous_output import table_rows
from mmntp_jax.model.heads import RESTRICTED, fused_cross_entropy, pick_chunk, token_stats, trained
from mmntp_jax.model.legal_ids import LegalIds
from mmntp_jax.model.init import bind, graphdef, init_params, param_specs
from mmntp_jax.sharding import batch_sharding
from mmntp_jax.train.guards import guard_step, init_guard
from mmntp_jax.train.optim import global_norm, make_optimizer
from mmntp_jax.train.resume_check import effective_schedule

N_MODALITIES = len(MODALITIES)
UNIT_WEIGHTS = (1.0,) * N_MODALITIES


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    guard: Any  # GuardState (train/guards.py); None when restored from a checkpoint older than the guard


def hidden_states(model, batch, noised=None):
    """The backbone on a PackedBatch; its mask comes from the batch's fields (`mask_kind` optional);
    `noised`: the batch's noised image blocks under the block diffusion form."""
    return model(batch["inputs"], batch["positions"], batch["segment_ids"], batch["block_ids"], batch["loss_mask"], batch.get("mask_kind"), noised)


def noised_blocks(model, batch, key):
    """The batch's noised image blocks (model/diffusion_block.py) when the model has the block
    diffusion form; else None."""
    head = getattr(model, "image_head", None)
    if head is None or head.form != "block":
        return None
    from mmntp_jax.model.diffusion_block import noise_blocks

    return noise_blocks(head.table(), batch["inputs"], batch["loss_mask"], jax.random.fold_in(key, 1))


def modality_weights(loss_weights) -> tuple[float, ...]:
    """`train.loss_weights` pairs → one weight per modality in MODALITIES order (1 if unlisted)."""
    given = dict(loss_weights)
    return tuple(float(given.get(name, 1.0)) for name in MODALITIES)


def token_weights(batch, loss_weights_M=UNIT_WEIGHTS):
    """w(modality of the target) · loss_mask, float32 [B, T]."""
    weight_M = jnp.asarray(loss_weights_M, jnp.float32)
    return batch["loss_mask"].astype(jnp.float32) * weight_M[batch["modality"]]


def _sums(stats, batch, weights_BT, ce_weights_BT=None, ce_mask_BT=None):
    """Summed terms of the train loss (weighted, trained softmax) and, per modality,
    of the full (and restricted) softmax's loss and accuracy over `loss_mask`.

    `ce_weights_BT` / `ce_mask_BT`: the cross-entropy's share of the weights and
    of `loss_mask` when image targets take a continuous loss (default: all of them);
    `weight` is always Σ weights_BT, the train loss's denominator.
    """
    stats = jax.lax.stop_gradient(stats)
    loss_BT, lse_BT = trained(stats)
    ce_weights_BT = weights_BT if ce_weights_BT is None else ce_weights_BT
    mask_BT = batch["loss_mask"].astype(jnp.float32) if ce_mask_BT is None else ce_mask_BT
    onehot_BTM = jax.nn.one_hot(batch["modality"], N_MODALITIES, dtype=jnp.float32) * mask_BT[..., None]
    per_modality = lambda x_BT: jnp.einsum("BT,BTM->M", x_BT, onehot_BTM)
    sums = {
        "loss_sum": jnp.sum(loss_BT * ce_weights_BT),
        "z_sum": jnp.sum(jnp.square(lse_BT) * ce_weights_BT),
        "weight": jnp.sum(weights_BT),
        "tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
        "modality_tokens": jnp.sum(onehot_BTM, axis=(0, 1)),
    }
    for suffix in ("", RESTRICTED) if f"loss{RESTRICTED}" in stats else ("",):
        sums[f"modality_loss{suffix}_sum"] = per_modality(stats[f"loss{suffix}"])
        sums[f"modality_correct{suffix}_sum"] = per_modality(stats[f"correct{suffix}"])
    return sums


def continuous_terms(model, hidden_BTD, batch, weights_BT, key, noised=None):
    """(cross-entropy weights [B, T], Σ w·continuous loss, sums) under `model.image_output`.

    Discrete output: (weights_BT, 0, {}). Otherwise each target that is an image
    code takes its continuous loss (model/continuous_output.py) with its weight
    instead of the cross-entropy; `key` draws the diffusion noise. Under the block
    form (`noised`) the loss sits at the code's own position, one after its target
    position, and takes that target's weight.
    """
    head = getattr(model, "image_head", None)
    if head is None:
        return weights_BT, jnp.zeros((), jnp.float32), {}
    mask_BT = batch["loss_mask"].astype(jnp.float32)
    if noised is not None:
        _, flag_BT = table_rows(head.table(), batch["targets"])
        loss_BT, on_BT = head.block.losses(hidden_BTD, noised)
        shift = lambda x_BT: jnp.pad(x_BT[:, :-1], ((0, 0), (1, 0)))
        loss_weights_BT, loss_mask_BT = shift(weights_BT) * on_BT, shift(mask_BT) * on_BT
    else:
        loss_BT, flag_BT = head.losses(hidden_BTD, batch["targets"], key)
        loss_weights_BT, loss_mask_BT = weights_BT * flag_BT, mask_BT * flag_BT
    total = jnp.sum(loss_BT * loss_weights_BT)
    sums = {
        "continuous_sum": jax.lax.stop_gradient(total),
        "continuous_loss_sum": jax.lax.stop_gradient(jnp.sum(loss_BT * loss_mask_BT)),
        "continuous_tokens": jnp.sum(loss_mask_BT),
        "ce_mask": mask_BT * (1.0 - flag_BT),
    }
    return weights_BT * (1.0 - flag_BT), total, sums


def _all_sums(stats, batch, weights_BT, ce_weights_BT, extra):
    extra = dict(extra)
    sums = _sums(stats, batch, weights_BT, ce_weights_BT, extra.pop("ce_mask", None))
    return sums | extra


EVAL_KEY = 0  # the eval loss of a diffusion head draws its noise from this fixed seed


def _legal_per_token(legal, batch):
    return None if legal is None else legal.per_token(batch["targets"])


def loss_sums(params, graph, batch, *, loss_chunk: int, legal: LegalIds | None = None, loss_weights=UNIT_WEIGHTS, key=None):
    """Summed token loss, z-loss term and token weight, in total and per modality."""
    model = bind(graph, params)
    key = jax.random.key(EVAL_KEY) if key is None else key
    noised = noised_blocks(model, batch, key)
    hidden_BTD = hidden_states(model, batch, noised)
    stats = token_stats(hidden_BTD, model.head_kernel(), batch["targets"], loss_chunk, _legal_per_token(legal, batch))
    weights_BT = token_weights(batch, loss_weights)
    ce_weights_BT, _, extra = continuous_terms(model, hidden_BTD, batch, weights_BT, key, noised)
    return _all_sums(stats, batch, weights_BT, ce_weights_BT, extra)


def training_objective(params, graph, batch, *, loss_chunk: int, z_loss: float, fused: bool = True,
                       legal: LegalIds | None = None, loss_weights=UNIT_WEIGHTS, key=None):
    """(Σ w·mask·loss + z·Σ w·mask·lse², sums): the differentiable numerator of the train loss.

    `fused` uses the fused linear cross-entropy (gradients formed chunk by chunk);
    otherwise plain autodiff through `token_stats`. `legal` restricts each
    target's softmax to its legal ids (None: the full softmax). With continuous
    image output, image targets add Σ w·continuous loss instead (`continuous_terms`;
    `key` draws its noise).
    """
    model = bind(graph, params)
    key = jax.random.key(EVAL_KEY) if key is None else key
    noised = noised_blocks(model, batch, key)
    hidden_BTD = hidden_states(model, batch, noised)
    weights_BT = token_weights(batch, loss_weights)
    ce_weights_BT, continuous, extra = continuous_terms(model, hidden_BTD, batch, weights_BT, key, noised)
    legal_BT = _legal_per_token(legal, batch)
    if fused:
        total, stats = fused_cross_entropy(hidden_BTD, model.head_kernel(), batch["targets"], ce_weights_BT, z_loss, loss_chunk, legal_BT)
    else:
        stats = token_stats(hidden_BTD, model.head_kernel(), batch["targets"], loss_chunk, legal_BT)
        loss_BT, lse_BT = trained(stats)
        total = jnp.sum(loss_BT * ce_weights_BT) + z_loss * jnp.sum(jnp.square(lse_BT) * ce_weights_BT)
    return total + continuous, _all_sums(stats, batch, weights_BT, ce_weights_BT, extra)


def data_vocab(config):
    """The Vocab of `config`'s training data (when the caller has none at hand)."""
    from mmntp_jax.data.pipeline import make_documents

    return make_documents(config, "train")[0]


class StepBuilder:
    """Builds the optimizer, state shardings and jitted steps for one config and mesh.

    `vocab` (the data's Vocab) gives the id ranges of `train.modality_softmax`;
    without it they are read from the data source when that option is on.
    `guard=False` applies every step unconditionally (to measure the guard's cost).
    """

    def __init__(self, config, mesh, vocab=None, *, guard: bool = True):
        self.config, self.mesh = config, mesh
        self.loss_weights = modality_weights(config.train.loss_weights)
        self.legal = LegalIds.from_vocab(vocab if vocab is not None else data_vocab(config)) if config.train.modality_softmax else None
        self.graph = graphdef(config.model)
        self.optimizer = make_optimizer(config.optim, config.train.steps)
        self.schedule = effective_schedule(config.optim, config.train.steps)
        self.guard = guard
        self.loss_chunk = pick_chunk(config.train.seq_len, config.model.vocab_size, config.train.loss_chunk)
        self.fused_loss = True
        self.state_shardings = self._state_shardings()
        self.batch_shardings = batch_sharding(mesh)  # every PackedBatch field, whichever are present

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
        guard = jax.tree.map(lambda _: replicated, jax.eval_shape(init_guard))
        return TrainState(step=replicated, params=named(specs), opt_state=named(opt_specs), rng=replicated, guard=guard)

    def restart_schedule(self, origin: int) -> None:
        """A new learning-rate schedule from step `origin` on (before the first train step is traced)."""
        if "train_step" in self.__dict__:
            raise RuntimeError("restart_schedule after the train step was built")
        self.schedule = effective_schedule(self.config.optim, self.config.train.steps, origin)

    def init_state(self, seed: int) -> TrainState:
        def create():
            key = jax.random.key(seed)
            params = init_params(self.config.model, jax.random.fold_in(key, 0))
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params),
                rng=jax.random.key_data(jax.random.fold_in(key, 1)), guard=init_guard(),
            )

        return jax.jit(create, out_shardings=self.state_shardings)()

    def abstract_state(self) -> TrainState:
        shapes = jax.eval_shape(lambda: self.init_state(0))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, self.state_shardings)

    # -- steps ---------------------------------------------------------------
    def _grads(self, params, batch, key=None):
        """(gradients, sums) of the train loss; `key` draws a diffusion head's noise (default: the eval key)."""
        key = jax.random.key(EVAL_KEY) if key is None else key
        accum = self.config.optim.grad_accum
        total_weight = jnp.sum(token_weights(batch, self.loss_weights))
        total_weight = jnp.where(total_weight > 0, total_weight, 1.0)
        z = self.config.train.z_loss

        def objective(p, micro, micro_key):
            total, sums = training_objective(p, self.graph, micro, loss_chunk=self.loss_chunk, z_loss=z, fused=self.fused_loss,
                                             legal=self.legal, loss_weights=self.loss_weights, key=micro_key)
            return total / total_weight, sums

        grad_fn = jax.grad(objective, has_aux=True)
        if accum == 1:
            return grad_fn(params, batch, key)
        micro_batches = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)
        micro_keys = jax.random.split(key, accum)

        def body(carry, micro_and_key):
            grads, sums = grad_fn(params, *micro_and_key)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = (jax.tree.map(lambda x: x[0], micro_batches), micro_keys[0])
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, *first))
        (grads, sums), _ = jax.lax.scan(body, zeros, (micro_batches, micro_keys))
        return grads, sums

    def _train_step(self, state: TrainState, batch):
        grads, sums = self._grads(state.params, batch, step_key(state))
        lr = self.schedule(state.step)
        optimizer = make_optimizer(self.config.optim, self.config.train.steps, schedule=lambda _: lr)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = summarize(sums)
        metrics["grad_norm"] = global_norm(grads)
        metrics["lr"] = lr
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if self.guard:
            new_state, guard_metrics = guard_step(state, new_state, metrics["loss"], metrics["grad_norm"], spike_factor=self.config.train.spike_factor)
            metrics |= guard_metrics
        return new_state, metrics

    def _on_mesh(self, fn):
        """`fn` traced with the mesh as the ambient (abstract) mesh, so the model's logical
        sharding constraints (`sharding.constrain`) take effect instead of being no-ops."""

        @functools.wraps(fn)
        def traced(*args):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                return fn(*args)

        return traced

    @functools.cached_property
    def train_step(self):
        return jax.jit(
            self._on_mesh(self._train_step),
            in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, None),
            donate_argnums=(0,),
        )

    @functools.cached_property
    def eval_step(self):
        fn = lambda params, batch: loss_sums(params, self.graph, batch, loss_chunk=self.loss_chunk, legal=self.legal, loss_weights=self.loss_weights)
        return jax.jit(self._on_mesh(fn), in_shardings=(self.state_shardings.params, self.batch_shardings))


def step_key(state: TrainState):
    """The step's random key (the diffusion head's noise): the run's key folded with the step."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def summarize(sums) -> dict:
    """Means from summed terms.

    `loss`, `z_loss`: the train objective's weighted means (trained softmax);
    `tokens`: the count of `loss_mask` targets; per modality m (NaN where the
    batch has no m target), unweighted means over `loss_mask` under the full
    softmax: `loss/m` (nats), `accuracy/m` (argmax == target),
    `bits_per_token/m` (loss / ln 2); with `train.modality_softmax` also
    `loss_restricted/m`, `accuracy_restricted/m`, `bits_per_token_restricted/m`.
    With continuous image output, image targets leave those cross-entropy means
    (NaN for image) and `continuous_loss/image` is their mean continuous loss;
    `loss` includes their weighted share.
    """
    weight = jnp.where(sums["weight"] > 0, sums["weight"], 1.0)
    metrics = {"loss": (sums["loss_sum"] + sums.get("continuous_sum", 0.0)) / weight, "z_loss": sums["z_sum"] / weight, "tokens": sums["tokens"]}
    if "continuous_sum" in sums:
        count = sums["continuous_tokens"]
        metrics["continuous_loss/image"] = jnp.where(count > 0, sums["continuous_loss_sum"] / jnp.maximum(count, 1.0), jnp.nan)
    count_M = sums["modality_tokens"]
    mean = lambda x_M: jnp.where(count_M > 0, x_M / jnp.maximum(count_M, 1.0), jnp.nan)
    for suffix in ("", RESTRICTED) if f"modality_loss{RESTRICTED}_sum" in sums else ("",):
        loss_M, accuracy_M = mean(sums[f"modality_loss{suffix}_sum"]), mean(sums[f"modality_correct{suffix}_sum"])
        for i, name in enumerate(MODALITIES):
            metrics[f"loss{suffix}/{name}"] = loss_M[i]
            metrics[f"accuracy{suffix}/{name}"] = accuracy_M[i]
            metrics[f"bits_per_token{suffix}/{name}"] = loss_M[i] / math.log(2)
    return metrics
