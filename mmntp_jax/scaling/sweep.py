"""Sweep planning: a grid of model sizes × compute budgets (or token counts) → training runs.

Model shape from width d (`model_for_width`, the documented rule):
    n_layers = max(1, round(d / aspect)), n_heads = n_kv_heads = max(1, d // head_dim),
    d_ff = ff_mult · d rounded up to a multiple of 16.
Learning rate and warm-up per size:
    lr(d) = lr_ref · (width_ref / d)^lr_exponent
    warm-up steps = min(max_warmup, max(1, round(warmup_fraction · S_min))), S_min the
    shortest run of that size (so every run's stable phase starts after warm-up).
Steps of a run with D_target tokens: S = max(1, round(D_target / (batch · seq_len)));
with an IsoFLOP budget C, D_target = C / flops_per_token (`model/flops.py`). The recorded
D and C are those of the S steps actually trained.

Warmup-stable-decay reuse (`reuse="wsd"`): all runs of one size (a *family*)
share one constant-lr run. Run k branches off it at step s_k = S_k − c_k,
c_k = round(decay_fraction · S_k), and decays linearly over its last c_k steps
(`optim.schedule="wsd"`, `optim.decay_fraction = c_k / S_k`), so its schedule is
exactly that of a standalone WSD run of S_k steps. Compute of a family:
max s_k + Σ c_k instead of Σ S_k. With `reuse="none"` every run trains from scratch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mmntp_jax.config import Config, ConfigError, DataConfig, validate
from mmntp_jax.model.flops import param_count, training_flops_per_token

REUSE = ("wsd", "none")


@dataclass(frozen=True)
class SweepConfig:
    """A scaling sweep: `base` is the template run; the grid fills in size and length."""

    name: str = "sweep"
    base: Config = field(default_factory=Config)
    widths: tuple = (64, 128)
    budgets: tuple = ()  # IsoFLOP compute budgets (FLOPs); or
    tokens: tuple = ()  # token counts, each trained at every size
    variants: tuple = ()  # ((modalities label, DataConfig), …); () = just base.data
    aspect: int = 32
    head_dim: int = 32
    ff_mult: float = 8 / 3
    lr_ref: float = 3e-3
    width_ref: int = 128
    lr_exponent: float = 0.5
    warmup_fraction: float = 0.1
    max_warmup: int = 100
    decay_fraction: float = 0.2
    reuse: str = "wsd"
    min_steps: int = 20
    max_steps: int = 1_000_000


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    family: str
    variant: str
    width: int
    config: Config  # the complete training config of this run
    steps: int
    branch_step: int  # step at which it leaves the family's constant-lr run (0: from scratch)
    tokens: int
    flops: float
    budget: float  # NaN outside IsoFLOP sweeps
    params: int
    params_non_embedding: int

    def row(self) -> dict:
        """The planned columns of this run's results row."""
        return {
            "run": self.run_id, "family": self.family, "modalities": self.variant, "width": self.width,
            "n_layers": self.config.model.n_layers, "N": self.params, "N_non_embedding": self.params_non_embedding,
            "D": self.tokens, "C": self.flops, "budget": self.budget, "steps": self.steps, "branch_step": self.branch_step,
            "lr": self.config.optim.lr, "warmup_steps": self.config.optim.warmup_steps,
        }


def model_for_width(sweep: SweepConfig, width: int):
    """The documented width → shape rule."""
    if width <= 0 or width % sweep.head_dim and width > sweep.head_dim:
        raise ConfigError(f"sweep widths: {width} must be > 0 and a multiple of head_dim={sweep.head_dim}")
    heads = max(1, width // sweep.head_dim)
    d_ff = 16 * math.ceil(sweep.ff_mult * width / 16)
    return dataclasses.replace(
        sweep.base.model, d_model=width, n_layers=max(1, round(width / sweep.aspect)), n_heads=heads, n_kv_heads=heads, head_dim=0, d_ff=d_ff,
    )


def lr_for_width(sweep: SweepConfig, width: int) -> float:
    return sweep.lr_ref * (sweep.width_ref / width) ** sweep.lr_exponent


def check_sweep(sweep: SweepConfig) -> None:
    if not isinstance(sweep, SweepConfig):
        raise ConfigError(f"a scaling experiment's get_config() must return a SweepConfig, got {type(sweep).__name__}")
    if not sweep.widths:
        raise ConfigError("sweep.widths: give at least one model width")
    if bool(sweep.budgets) == bool(sweep.tokens):
        raise ConfigError("sweep: set exactly one of budgets (IsoFLOP) or tokens (sizes × token counts)")
    for name in ("budgets", "tokens"):
        for v in getattr(sweep, name):
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ConfigError(f"sweep.{name}: {v!r} must be a number > 0")
    if sweep.reuse not in REUSE:
        raise ConfigError(f"sweep.reuse: {sweep.reuse!r} is not one of {', '.join(REUSE)}")
    if not 0.0 < sweep.decay_fraction < 1.0:
        raise ConfigError(f"sweep.decay_fraction: must be in (0, 1), got {sweep.decay_fraction}")
    for label, data in sweep.variants:
        if not isinstance(data, DataConfig):
            raise ConfigError(f"sweep.variants: {label!r} needs a DataConfig, got {type(data).__name__}")


def _targets(sweep: SweepConfig, model) -> list[tuple[float, float]]:
    """(budget or NaN, target tokens) of each run of one size."""
    if sweep.budgets:
        per_token = training_flops_per_token(model, sweep.base.train.seq_len)
        return [(float(c), float(c) / per_token) for c in sweep.budgets]
    return [(math.nan, float(t)) for t in sweep.tokens]


def _label(value: float) -> str:
    return f"{value:.2g}".replace("+", "")


def plan(sweep: SweepConfig) -> tuple[list[PlannedRun], list[str]]:
    """Every run of the sweep (ordered by family, then length) and notes on runs left out."""
    check_sweep(sweep)
    base = sweep.base
    per_step = base.train.batch_size * base.train.seq_len
    variants = sweep.variants or (("", base.data),)
    runs, notes = [], []
    for label, data in variants:
        for width in sweep.widths:
            model = model_for_width(sweep, width)
            family = f"w{width}" + (f"_{label}" if label else "")
            wanted = []
            for budget, target in _targets(sweep, model):
                steps = max(1, round(target / per_step))
                name = f"C{_label(budget)}" if sweep.budgets else f"D{_label(target)}"
                if steps < sweep.min_steps or steps > sweep.max_steps:
                    notes.append(f"{family}_{name}: {steps} steps is outside [{sweep.min_steps}, {sweep.max_steps}]; left out")
                    continue
                wanted.append((steps, budget, name))
            if not wanted:
                continue
            warmup = min(sweep.max_warmup, max(1, round(sweep.warmup_fraction * min(s for s, _, _ in wanted))))
            optim = dataclasses.replace(base.optim, lr=lr_for_width(sweep, width), warmup_steps=warmup, schedule="wsd")
            for steps, budget, name in sorted(wanted):
                cool = max(1, round(sweep.decay_fraction * steps))
                branch = steps - cool if sweep.reuse == "wsd" else 0
                config = dataclasses.replace(
                    base, name=f"{sweep.name}/{family}_{name}", model=model, data=data,
                    optim=dataclasses.replace(optim, decay_fraction=cool / steps),
                    train=dataclasses.replace(base.train, steps=steps),
                )
                validate(config)
                runs.append(PlannedRun(
                    run_id=f"{family}_{name}", family=family, variant=label, width=width, config=config, steps=steps,
                    branch_step=branch, tokens=steps * per_step,
                    flops=training_flops_per_token(model, base.train.seq_len) * steps * per_step, budget=budget,
                    params=param_count(model), params_non_embedding=param_count(model, embeddings=False),
                ))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep: two runs share a name ({sorted({i for i in ids if ids.count(i) > 1})}); make budgets/tokens distinct at 2 significant digits")
    return runs, notes


def stable_config(run: PlannedRun, steps: int) -> Config:
    """The family's shared constant-lr run, trained to `steps`."""
    c = run.config
    return dataclasses.replace(
        c, name=f"{c.name.split('/')[0]}/{run.family}_stable", optim=dataclasses.replace(c.optim, schedule="constant", decay_fraction=0.0),
        train=dataclasses.replace(c.train, steps=steps), checkpoint=dataclasses.replace(c.checkpoint, keep=1_000_000),
    )


def total_flops(runs: list[PlannedRun], reuse: str) -> float:
    """Training compute of the whole sweep (shared stable phases counted once)."""
    if reuse == "none":
        return sum(r.flops for r in runs)
    total = 0.0
    for family in {r.family for r in runs}:
        members = [r for r in runs if r.family == family]
        per_step = members[0].flops / members[0].steps
        total += per_step * (max(r.branch_step for r in members) + sum(r.steps - r.branch_step for r in members))
    return total
