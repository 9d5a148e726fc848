"""AdamW with decoupled weight decay (masked off norms, biases and frozen tables), schedules, clipping.

Schedules (all start with a linear warm-up from 0 to `lr` over `warmup_steps`):
  cosine    cosine decay from lr to lr·min_lr_ratio at the last step;
  wsd       warmup-stable-decay: constant lr, then a linear decay to
            lr·min_lr_ratio over the last `decay_fraction` of the steps;
  constant  lr after warm-up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NO_DECAY_MARKERS = ("norm", "bias", "latents", "tokenizer_decoder")  # the last two: frozen tables and the pixel reader's decoder


def learning_rate_schedule(optim, total_steps: int):
    lr, warmup = optim.lr, max(0, min(optim.warmup_steps, total_steps))
    final = lr * optim.min_lr_ratio
    warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
    if optim.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=optim.min_lr_ratio)
    elif optim.schedule == "wsd":
        decay_steps = int(round(total_steps * optim.decay_fraction))
        stable = max(total_steps - warmup - decay_steps, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, final, max(decay_steps, 1))], [stable]
        )
    else:
        raise ValueError(f"optim.schedule={optim.schedule!r} is not one of cosine, wsd, constant")
    if warmup == 0:
        return main
    return optax.join_schedules([warm, main], [warmup])


def decay_mask(params):
    """True for parameters that take weight decay: everything but norms and biases."""

    def wants_decay(path, _):
        names = [str(getattr(p, "key", p)) for p in path]
        return not any(marker in name for name in names for marker in NO_DECAY_MARKERS)

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(optim, total_steps: int, schedule=None) -> optax.GradientTransformation:
    """AdamW (+ clipping) with `schedule(count)` as its learning rate (default: `learning_rate_schedule`).

    The train steps pass `lambda _: lr` with lr computed from the train state's
    step: the optimizer state keeps its structure, and a step that is not
    applied (train/guards.py) or a schedule restarted on resume
    (train/resume_check.py) moves the learning rate with the step counter.
    """
    schedule = learning_rate_schedule(optim, total_steps) if schedule is None else schedule
    parts = []
    if optim.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(
        optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts)


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
