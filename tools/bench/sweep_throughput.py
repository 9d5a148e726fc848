"""Training throughput of a scaling sweep's model sizes, measured before the sweep is run.

    PYTHONPATH=. python tools/bench/sweep_throughput.py --config experiments/scaling/stdlib_isoflop.py [--steps 150]

For every width of the sweep: trains the family's first run for `--steps`
steps in a temporary workdir (the run's own data, batch and model), and prints
one JSON object: width, N, FLOPs per token, tokens/s and achieved GFLOP/s over
the steps after the first logging window (compilation excluded), process CPU
seconds, and the 1-minute load average. The last line estimates the whole
sweep's wall time from its planned FLOPs (`mmntp scaling run --dry-run` prints
the same total) and the measured GFLOP/s of each size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mmntp_jax.config import load_experiment  # noqa: E402
from mmntp_jax.model.flops import training_flops_per_token  # noqa: E402
from mmntp_jax.scaling.sweep import plan, total_flops  # noqa: E402
from mmntp_jax.train.backbone import train  # noqa: E402


def measure(run, steps: int) -> dict:
    config = dataclasses.replace(
        run.config, train=dataclasses.replace(run.config.train, steps=steps, log_every=max(1, steps // 5), eval_every=10**9),
        optim=dataclasses.replace(run.config.optim, schedule="constant", decay_fraction=0.0),
    )
    per_token = training_flops_per_token(config.model, config.train.seq_len)
    with tempfile.TemporaryDirectory() as workdir:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        train(config, workdir, log=lambda *a, **k: None)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r][1:]
    tokens_per_s = sum(rates) / len(rates)
    return {
        "width": run.width, "n_layers": config.model.n_layers, "N": run.params, "flops_per_token": per_token,
        "tokens_per_step": config.train.batch_size * config.train.seq_len, "steps": steps,
        "tokens_per_s": round(tokens_per_s), "gflop_per_s": round(tokens_per_s * per_token / 1e9, 2),
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_1min": os.getloadavg()[0],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a scaling experiment (experiments/scaling/*.py)")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    sweep = load_experiment(args.config)
    runs, _ = plan(sweep)
    first = {}
    for run in runs:
        first.setdefault(run.family, run)
    rates = {}
    for family, run in first.items():
        result = measure(run, args.steps)
        rates[family] = result["gflop_per_s"]
        print(json.dumps({"family": family, **result}), flush=True)

    estimate = 0.0
    for family in first:
        members = [r for r in runs if r.family == family]
        estimate += total_flops(members, sweep.reuse) / (rates[family] * 1e9)
    print(json.dumps({"sweep": sweep.name, "total_flops": total_flops(runs, sweep.reuse), "estimated_wall_s": round(estimate)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
