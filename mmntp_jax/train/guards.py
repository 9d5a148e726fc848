"""Fault guards of the train step: a step that would break the run is not applied, and too many in a row stop it.

In the jitted step (`guard_step`, backbone and tokenizers alike) a step is
*bad* when its loss, its gradient norm or any updated parameter is not finite,
or, with `train.spike_factor` k > 0, when its loss exceeds k × the running mean
of the applied steps' losses (an exponential average with decay `SPIKE_DECAY`,
judged once `SPIKE_WARMUP` steps have been applied). A bad step keeps the old
parameters and optimizer state, selected inside the step by `jnp.where` on
the step's flag (no host round trip; a good step's result is bitwise the
unguarded step's). The step counter still advances, so the batch is consumed.
The state's `GuardState` counts bad steps in a row and in all; metrics carry
both (`bad_steps`, `skipped_steps`).

On the host (`GuardMonitor`) the loop reads each step's `bad_steps`, a scalar,
one step late: after dispatching the next step, so the host never waits for
the step it has just queued. A skipped step is logged with its step number and
the reason, and recorded in metrics.jsonl as `skipped/…`. When `bad_steps`
reaches `train.max_bad_steps` the run stops with a `DivergenceError` (one line,
exit code 3 from the CLI): the batches of the streak's first and last steps
are saved as `WORKDIR/bad_batches/step_<N>.npz`, no checkpoint is written, and
the newest checkpoint is one from before the streak, since the loop defers
periodic saves while a streak is running.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import struct

from mmntp_jax.errors import DivergenceError

SPIKE_DECAY = 0.99
SPIKE_WARMUP = 20
NOT_SELECTED = ("step", "guard")  # state fields a bad step still advances or updates


@struct.dataclass
class GuardState:
    """The guard's counters, part of the train state (checkpointed and resumed with it)."""

    bad_steps: jax.Array  # int32: steps in a row not applied (0 after an applied step)
    skipped_steps: jax.Array  # int32: steps not applied, in all
    loss_mean: jax.Array  # float32: running mean of the applied steps' losses
    loss_steps: jax.Array  # int32: applied steps in that mean


def init_guard() -> GuardState:
    zero = jnp.zeros((), jnp.int32)
    return GuardState(bad_steps=zero, skipped_steps=zero, loss_mean=jnp.zeros((), jnp.float32), loss_steps=zero)


def all_finite(tree) -> jax.Array:
    """True when every floating-point leaf of `tree` is finite (a scalar bool)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def guard_step(old, new, loss, grad_norm, *, spike_factor: float = 0.0, checked=lambda state: state.params):
    """(`new` if the step is good else `old` with the step counter advanced, guard metrics).

    `old` and `new` are train states (flax struct dataclasses with `step` and
    `guard` fields); every other field is taken from `new` or `old` as a whole.
    `checked(new)` is the tree whose finiteness is required (the parameters).
    """
    guard = old.guard
    loss = loss.astype(jnp.float32)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(checked(new))
    if spike_factor > 0:
        ok = ok & ~((guard.loss_steps >= SPIKE_WARMUP) & (loss > spike_factor * guard.loss_mean))
    mean = jnp.where(guard.loss_steps == 0, loss, SPIKE_DECAY * guard.loss_mean + (1.0 - SPIKE_DECAY) * loss)
    new_guard = GuardState(
        bad_steps=jnp.where(ok, 0, guard.bad_steps + 1).astype(jnp.int32),
        skipped_steps=guard.skipped_steps + (~ok).astype(jnp.int32),
        loss_mean=jnp.where(ok, mean, guard.loss_mean),
        loss_steps=guard.loss_steps + ok.astype(jnp.int32),
    )
    kept = {
        field.name: jax.tree.map(lambda n, o: jnp.where(ok, n, o), getattr(new, field.name), getattr(old, field.name))
        for field in dataclasses.fields(old) if field.name not in NOT_SELECTED
    }
    metrics = {"bad_steps": new_guard.bad_steps, "skipped_steps": new_guard.skipped_steps}
    if spike_factor > 0:
        metrics["loss_mean"] = guard.loss_mean
    return new.replace(**kept, guard=new_guard), metrics


def fill_guard(state, sharding=None):
    """A state restored from a checkpoint written before the guard existed gets fresh counters."""
    if state.guard is not None:
        return state
    guard = init_guard()
    if sharding is not None:
        guard = jax.device_put(guard, sharding)
    return state.replace(guard=guard)


def _scalar(x) -> float:
    return float(np.asarray(jax.device_get(x)))


def skip_reason(loss: float, grad_norm: float, loss_mean: float | None, spike_factor: float) -> str:
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    if spike_factor > 0 and loss_mean is not None and loss > spike_factor * loss_mean:
        return f"loss {loss:.4g} exceeds {spike_factor:g} × the running mean {loss_mean:.4g}"
    return "updated parameters are not finite"


class GuardMonitor:
    """The host side: reads `bad_steps` one step late, logs skipped steps, stops a diverged run."""

    def __init__(self, workdir, *, max_bad_steps: int, spike_factor: float, writer, checkpointer, log=print):
        self.workdir, self.max_bad_steps, self.spike_factor = epath.Path(workdir), max_bad_steps, spike_factor
        self.writer, self.checkpointer, self.log = writer, checkpointer, log
        self.pending = None  # (step, metrics, host batch) of the newest step, not yet read
        self.first_bad = None  # (step, host batch) of the current streak's first step
        self.bad_steps = 0  # of the newest step read

    def after_step(self, step: int, metrics: dict, host_batch) -> None:
        """Call right after dispatching `step`: reads the step before it."""
        previous, self.pending = self.pending, (step, metrics, host_batch)
        if previous is not None:
            self._read(*previous)

    def flush(self) -> int:
        """Reads the newest step now (the caller is about to wait for it anyway); its `bad_steps`."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._read(*pending)
        return self.bad_steps

    def _read(self, step: int, metrics: dict, host_batch) -> None:
        self.bad_steps = int(_scalar(metrics["bad_steps"]))
        if self.bad_steps == 0:
            self.first_bad = None
            return
        if self.first_bad is None:
            self.first_bad = (step, host_batch)
        loss, grad_norm, total = _scalar(metrics["loss"]), _scalar(metrics["grad_norm"]), int(_scalar(metrics["skipped_steps"]))
        mean = _scalar(metrics["loss_mean"]) if "loss_mean" in metrics else None
        reason = skip_reason(loss, grad_norm, mean, self.spike_factor)
        self.log(f"step {step}: not applied ({reason}); {self.bad_steps} in a row, {total} in all")
        self.writer.write(step, {"reason": reason, "loss": loss, "grad_norm": grad_norm, "in_a_row": self.bad_steps, "total": total}, prefix="skipped/")
        if self.bad_steps >= self.max_bad_steps:
            self._stop(step, host_batch, reason)

    def _stop(self, step: int, host_batch, reason: str):
        first_step, first_batch = self.first_bad
        paths = [save_batch(self.workdir, first_step, first_batch)]
        if first_step != step:
            paths.append(save_batch(self.workdir, step, host_batch))
        self.checkpointer.wait()
        newest = self.checkpointer.latest_step()
        kept = f"the newest checkpoint, step {newest}, holds the last applied parameters" if newest is not None else "no checkpoint was written"
        raise DivergenceError(
            f"steps {first_step}–{step}: {self.bad_steps} steps in a row not applied (train.max_bad_steps={self.max_bad_steps}), "
            f"the last at step {step} (batch {step - 1} of the data stream) because its {reason}; "
            f"batches saved to {', '.join(str(p) for p in paths)}; {kept}; "
            "lower optim.lr and resume with train.on_schedule_change=restart_schedule (docs/reliability.md)"
        )


def save_batch(workdir, step: int, host_batch) -> epath.Path:
    """Writes this process's part of a batch to WORKDIR/bad_batches/step_<step>.npz (one file per process)."""
    directory = epath.Path(workdir) / "bad_batches"
    directory.mkdir(parents=True, exist_ok=True)
    suffix = f".process_{jax.process_index()}" if jax.process_count() > 1 else ""
    path = directory / f"step_{step}{suffix}.npz"
    arrays = dict(host_batch) if isinstance(host_batch, dict) else {"items": host_batch}
    with path.open("wb") as f:
        np.savez(f, **{name: np.asarray(value) for name, value in arrays.items()})
    return path
