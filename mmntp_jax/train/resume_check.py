"""Whether a workdir may be resumed with a given config, and with which learning-rate schedule.

A resumed run compares its config with the workdir's `config.json`:

- keys a client lists as resumable (logging, checkpoint cadence, the guards'
  settings, …) may differ freely;
- the schedule keys (`SCHEDULE_KEYS`: `optim.lr, optim.schedule,
  optim.warmup_steps, optim.decay_fraction, optim.min_lr_ratio, train.steps`)
  may differ when the learning rate stays the same at every step the run will
  still train (from the resumed step S to `train.steps`), e.g. a constant
  schedule made longer; otherwise `train.on_schedule_change` decides:
  `refuse` (the default) is a `RunConflict` naming the keys and the first step
  whose learning rate would change; `restart_schedule` starts a new schedule of
  the current config at S — warmup over `optim.warmup_steps`, then the decay
  over the remaining `train.steps − S` steps — and keeps the parameters and the
  optimizer moments. S is recorded in `WORKDIR/schedule.json` (`ORIGIN_FILE`),
  so later resumes, with the same command or without the choice, continue that
  schedule. Nothing is compared before the first checkpoint after step 0;
- any other difference is a `RunConflict`: use a new workdir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from etils import epath

from mmntp_jax.errors import RunConflict
from mmntp_jax.train.optim import learning_rate_schedule

SCHEDULE_KEYS = ("optim.lr", "optim.schedule", "optim.warmup_steps", "optim.decay_fraction", "optim.min_lr_ratio", "train.steps")
GUARD_KEYS = ("train.max_bad_steps", "train.spike_factor", "train.on_schedule_change")  # resumable for every client
ORIGIN_FILE = "schedule.json"


@dataclass(frozen=True)
class RunSpec:
    """What resuming compares: the flattened config, its optim section, train.steps and the choice."""

    flat: dict
    optim: Any
    steps: int
    on_schedule_change: str = "refuse"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_origin(workdir) -> int:
    """The step at which the run's current learning-rate schedule started (0 unless restarted)."""
    path = epath.Path(workdir) / ORIGIN_FILE
    return int(json.loads(path.read_text())["start_step"]) if path.exists() else 0


def write_origin(workdir, step: int, changes: str) -> None:
    """Records a restart at `step`; earlier restarts stay listed under "history", oldest first."""
    path = epath.Path(workdir) / ORIGIN_FILE
    history = []
    if path.exists():
        previous = json.loads(path.read_text())
        history = previous.pop("history", []) + [previous]
    path.write_text(json.dumps({"start_step": int(step), "changes": changes, "history": history}, indent=1))


def effective_schedule(optim, total_steps: int, origin: int = 0) -> Callable:
    """The learning rate as a function of the train step: the config's schedule, started at `origin`."""
    if origin <= 0:
        return learning_rate_schedule(optim, total_steps)
    base = learning_rate_schedule(optim, max(total_steps - origin, 1))
    return lambda step: base(jnp.maximum(step - origin, 0))


def _details(saved: RunSpec, current: RunSpec, keys) -> str:
    return ", ".join(f"{k}: {saved.flat.get(k)!r} → {current.flat.get(k)!r}" for k in keys)


def check_resume(workdir, saved: RunSpec | None, current: RunSpec, resumable, what: str, latest_step: Callable[[], int]) -> int | None:
    """Raises RunConflict when `current` may not resume `saved`; returns the step at which a new
    schedule starts (`restart_schedule` chosen and needed), else None."""
    if saved is None:
        return None
    keys = set(saved.flat) | set(current.flat)
    changed = sorted(k for k in keys if saved.flat.get(k) != current.flat.get(k) and k not in resumable and k not in GUARD_KEYS and k not in SCHEDULE_KEYS)
    if changed:
        raise RunConflict(f"workdir {workdir} holds a {what} with a different config ({_details(saved, current, changed[:5])}); use a new --workdir")
    schedule_changed = [k for k in SCHEDULE_KEYS if saved.flat.get(k) != current.flat.get(k)]
    if not schedule_changed:
        return None
    return schedule_decision(workdir, saved, current, latest_step(), _details(saved, current, schedule_changed))


def schedule_decision(workdir, saved: RunSpec, current: RunSpec, step: int, details: str) -> int | None:
    """None when the learning rate of steps [step, current.steps) is unchanged, `step` for a restart, else RunConflict."""
    if step <= 0 or step >= current.steps:
        return None
    origin = read_origin(workdir)
    steps = jnp.arange(step, current.steps)
    old = np.asarray(effective_schedule(saved.optim, saved.steps, origin)(steps))
    new = np.asarray(effective_schedule(current.optim, current.steps, origin)(steps))
    if np.array_equal(old, new):
        return None
    if current.on_schedule_change == "restart_schedule":
        return step
    first = int(np.argmax(old != new))
    raise RunConflict(
        f"workdir {workdir}: resuming at step {step} with {details} changes the learning rate from step {step + first} on "
        f"({old[first]:.4g} → {new[first]:.4g}); set train.on_schedule_change=restart_schedule for a new schedule from step {step} "
        f"(warmup, then decay to step {current.steps}), or use a new --workdir"
    )


def describe_restart(current: RunSpec, step: int, details: str) -> str:
    o = current.optim
    warmup = max(0, min(o.warmup_steps, current.steps - step))
    return (f"schedule change ({details}): a new learning-rate schedule starts at step {step}: {warmup} warmup steps to lr {o.lr:g}, "
            f"then {o.schedule} to step {current.steps}; parameters and optimizer moments carry on")


def changed_schedule_keys(saved: RunSpec, current: RunSpec) -> str:
    return _details(saved, current, [k for k in SCHEDULE_KEYS if saved.flat.get(k) != current.flat.get(k)])
