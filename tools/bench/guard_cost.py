"""What the non-finite-step guard costs: the library's default train step with and without it, in one run.

    python tools/bench/guard_cost.py                  # the default config's model and batch, one device
    python tools/bench/guard_cost.py --rounds 20 --steps 10 --d-model 512

Both steps are built from the same config (`StepBuilder(guard=True)` is what
training runs; `guard=False` applies every step unconditionally) and driven as
the loop drives them: the guarded one reads the previous step's `bad_steps`
right after dispatching the next step (`train/guards.py`), the plain one only
blocks at the end of a round. Rounds of `--steps` steps alternate between the
two, in alternating order (the step that runs first in a round is measured
slower by a few percent, whichever it is), so load on a shared machine and
that order effect hit both alike; each round's time / steps is
one sample, in wall-clock time and in this process's CPU time (user + system,
all threads: the fair clock when other work shares the machine). Prints one
JSON object: median and best step time of each, and the guard's overhead in
percent of the plain step by each (the budget is 2%).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

from mmntp_jax.config import Config, MeshConfig
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.step import StepBuilder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import random_batch  # noqa: E402 — the same random batch as the train-step benchmark


def make_config(args) -> Config:
    config = Config(mesh=MeshConfig(data=1))
    model = config.model if not args.d_model else dataclasses.replace(config.model, d_model=args.d_model, d_ff=4 * args.d_model)
    return dataclasses.replace(config, model=model)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_round(step, state, batch, steps: int, guarded: bool):
    """(state, wall seconds per step, CPU seconds per step)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    previous = None
    for _ in range(steps):
        state, metrics = step(state, batch)
        if guarded:
            if previous is not None:
                int(np.asarray(previous["bad_steps"]))  # the loop's one-step-late read
            previous = metrics
    jax.block_until_ready(state)
    return state, (time.perf_counter() - t0) / steps, (cpu_seconds() - c0) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--d-model", type=int, default=0, help="d_model (d_ff = 4×) instead of the default config's")
    args = parser.parse_args(argv)
    config = make_config(args)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    batch = shard_batch(random_batch(config), mesh)
    runs = {}
    for name, guard in (("guarded", True), ("plain", False)):
        builder = StepBuilder(config, mesh, guard=guard)
        state = builder.init_state(0)
        t0 = time.perf_counter()
        step = builder.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        state, _, _ = run_round(step, state, batch, 2, guard)  # warm-up
        runs[name] = {"step": step, "state": state, "wall": [], "cpu": [], "compile_s": compile_s, "guard": guard}
    for index in range(args.rounds):
        order = list(runs.values()) if index % 2 == 0 else list(runs.values())[::-1]
        for run in order:
            run["state"], wall, cpu = run_round(run["step"], run["state"], batch, args.steps, run["guard"])
            run["wall"].append(wall)
            run["cpu"].append(cpu)
    figures = {}
    for clock in ("wall", "cpu"):
        median = {name: statistics.median(run[clock]) for name, run in runs.items()}
        best = {name: min(run[clock]) for name, run in runs.items()}
        figures |= {
            f"guarded_{clock}_s_median": median["guarded"], f"plain_{clock}_s_median": median["plain"],
            f"guarded_{clock}_s_best": best["guarded"], f"plain_{clock}_s_best": best["plain"],
            f"overhead_pct_{clock}_median": 100 * (median["guarded"] / median["plain"] - 1),
            f"overhead_pct_{clock}_best": 100 * (best["guarded"] / best["plain"] - 1),
        }
    m = config.model
    print(json.dumps({
        "model": {"d_model": m.d_model, "n_layers": m.n_layers, "d_ff": m.d_ff, "vocab_size": m.vocab_size},
        "batch_size": config.train.batch_size, "seq_len": config.train.seq_len, "device": jax.devices()[0].device_kind,
        "rounds": args.rounds, "steps_per_round": args.steps, **figures,
        "compile_s": {name: run["compile_s"] for name, run in runs.items()},
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
