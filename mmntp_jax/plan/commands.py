"""`mmntp plan`: compile the train step for N devices ahead of time and report what one device needs.

Nothing is materialised: the train state and batch are `jax.ShapeDtypeStruct`s
carrying their shardings, and `StepBuilder.train_step` is lowered and compiled
for a mesh of N devices (simulated CPU devices when this process has fewer;
the command then re-runs itself in a subprocess with
`--xla_force_host_platform_device_count=N`). docs/planning.md says where each
figure comes from:

  params, opt_state   Σ over the state's arrays of shard_shape × itemsize (exact)
  activations         XLA's temp_size_in_bytes (activations kept for the
                      backward pass, gradients and intermediates, one figure)
  temp                argument + output − alias − params − opt_state: the batch,
                      step and rng, and outputs not aliased to donated state
  total               argument + output − alias + temp_size (the four above)
  flops               2 × multiply-adds of every dot in the compiled program,
                      loops × their trip count, conditionals at their costliest
                      branch; per device × devices = per step
  collective bytes    result bytes of every all-reduce, all-gather,
                      reduce-scatter, all-to-all and collective-permute one
                      device runs, loops × their trip count
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

from mmntp_jax.config import MeshConfig
from mmntp_jax.plan.hlo import count_program

MESH_AXES = tuple(MeshConfig().axis_sizes())
DEVICE_FLAG = "--xla_force_host_platform_device_count"
CHILD_ENV = "MMNTP_PLAN_SIMULATED"
BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BATCH_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "modality", "block_ids", "mask_kind")


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", help="experiment file experiments/<name>.py (default: the embedded default job)")
    parser.add_argument("--devices", type=int, required=True, metavar="N", help="devices the job will run on")
    parser.add_argument("--mesh", default="", metavar="AXIS=SIZE,…", help="mesh axes data, fsdp, tensor, sequence (-1 fills); axes left out keep the config's mesh.*")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--hbm", default=None, metavar="SIZE", help="memory of one device, e.g. 80GiB; reports whether the step fits")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line (the last line)")
    parser.set_defaults(func=run_plan)


# -- arguments -------------------------------------------------------------------

def parse_mesh(text: str) -> dict[str, int]:
    """`data=2,fsdp=4` → {"data": 2, "fsdp": 4}."""
    from mmntp_jax.cli import CommandError

    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        axis, _, value = item.partition("=")
        axis = axis.strip()
        if axis not in MESH_AXES:
            raise CommandError(f"--mesh: unknown axis {axis!r}; axes: {', '.join(MESH_AXES)}")
        try:
            sizes[axis] = int(value)
        except ValueError:
            raise CommandError(f"--mesh: {item!r} is not AXIS=SIZE with an integer size") from None
    return sizes


def parse_bytes(text: str) -> int:
    """`80GiB`, `141GB`, `1.5TiB`, `1000000` → bytes."""
    from mmntp_jax.cli import CommandError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in BYTE_UNITS:
        raise CommandError(f"--hbm {text!r}: expected a size such as 80GiB, 141GB or a byte count")
    return int(float(match.group(1)) * BYTE_UNITS[unit])


def planned_config(args):
    """The experiment with --set overrides and --mesh applied, validated for --devices."""
    from mmntp_jax.cli import CommandError
    from mmntp_jax.config import load_config, validate

    if args.devices < 1:
        raise CommandError(f"--devices: expected a device count ≥ 1, got {args.devices}")
    mesh_sizes = parse_mesh(args.mesh)
    config = load_config(args.config, args.overrides)
    config = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, **mesh_sizes))
    validate(config, device_count=args.devices)
    return config


# -- simulated devices -----------------------------------------------------------

def child_argv(args) -> list[str]:
    argv = ["plan", "--devices", str(args.devices)]
    argv += ["--config", args.config] if args.config else []
    argv += ["--mesh", args.mesh] if args.mesh else []
    argv += [word for item in args.overrides for word in ("--set", item)]
    argv += ["--hbm", args.hbm] if args.hbm else []
    return argv + (["--json"] if args.json else [])


def simulate(args) -> int:
    """Re-runs this command in a process with `args.devices` simulated CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{CHILD_ENV: "1"})
    flags = re.sub(rf"{DEVICE_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_FLAG}={args.devices}"])
    return subprocess.run([sys.executable, "-m", "mmntp_jax.cli", *child_argv(args)], env=env).returncode


# -- the plan --------------------------------------------------------------------

def shard_shape(leaf) -> tuple[int, ...]:
    """`sharding.shard_shape`; for a dimension its mesh axes do not divide, the padded (largest) shard."""
    try:
        return leaf.sharding.shard_shape(leaf.shape)
    except ValueError:
        spec, sizes = tuple(leaf.sharding.spec), leaf.sharding.mesh.shape
        axes = [spec[i] if i < len(spec) else None for i in range(len(leaf.shape))]
        parts = [math.prod(sizes[a] for a in ((x,) if isinstance(x, str) else x or ())) for x in axes]
        return tuple(-(-dim // n) for dim, n in zip(leaf.shape, parts))


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    import jax

    return sum(math.prod(shard_shape(leaf)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def abstract_batch(config, sharding) -> dict:
    """One global batch of PackedBatch fields as sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    shape = (config.train.batch_size, config.train.seq_len)
    dtype = lambda name: np.float32 if name == "loss_mask" else np.int32
    return {name: jax.ShapeDtypeStruct(shape, dtype(name), sharding=sharding) for name in BATCH_FIELDS}


def compile_step(config, devices):
    """(compiled train step, abstract state, abstract batch, mesh) for `config` on `devices`."""
    from mmntp_jax.sharding import make_mesh
    from mmntp_jax.train.step import StepBuilder

    mesh = make_mesh(config.mesh, devices)
    builder = StepBuilder(config, mesh)
    state, batch = builder.abstract_state(), abstract_batch(config, builder.batch_shardings)
    return builder.train_step.lower(state, batch).compile(), state, batch, mesh


def xla_cost_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def plan(config, devices, hbm_bytes: int | None = None) -> dict:
    """The figures of one plan as a JSON-ready dict."""
    from mmntp_jax.model.flops import training_flops_per_step

    compiled, state, batch, mesh = compile_step(config, devices)
    memory = compiled.memory_analysis()
    params, opt_state = shard_bytes(state.params), shard_bytes(state.opt_state)
    arguments, outputs, alias, xla_temp = (int(getattr(memory, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp"))
    total = arguments + outputs - alias + xla_temp
    counts = count_program(compiled.as_text())
    n = len(devices)
    return {
        "devices": n,
        "platform": devices[0].platform,
        "mesh": {axis: int(size) for axis, size in mesh.shape.items()},
        "per_device_bytes": {"params": params, "opt_state": opt_state, "activations": xla_temp,
                             "temp": arguments + outputs - alias - params - opt_state, "total": total},
        "flops_per_step": counts.flops * n,
        "flops_per_device": counts.flops,
        "model_flops_per_step": training_flops_per_step(config.model, config.train.seq_len, config.train.batch_size),
        "collective_bytes_per_step": counts.collective_bytes,
        "collective_bytes_by_kind": counts.collective_by_kind,
        "xla": {"argument": arguments, "output": outputs, "alias": alias, "temp": xla_temp,
                "generated_code": int(memory.generated_code_size_in_bytes), "cost_analysis_flops": xla_cost_flops(compiled)},
        "unknown_trip_counts": counts.unknown_loops,
        "hbm_bytes": hbm_bytes,
        "fits": None if hbm_bytes is None else total <= hbm_bytes,
    }


# -- printing --------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def report_lines(result: dict, config_name: str) -> list[str]:
    mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
    per = result["per_device_bytes"]
    lines = [
        f"plan {config_name}: train step compiled for {result['devices']} {result['platform']} devices, mesh {mesh}",
        "per device:",
        f"  params        {human_bytes(per['params']):>12}   sharded state (shard shapes × itemsize)",
        f"  opt_state     {human_bytes(per['opt_state']):>12}   sharded state (shard shapes × itemsize)",
        f"  activations   {human_bytes(per['activations']):>12}   XLA temp: saved activations, gradients, intermediates",
        f"  temp          {human_bytes(per['temp']):>12}   batch, step, rng and outputs not aliased to the state",
        f"  total         {human_bytes(per['total']):>12}   argument + output − alias + XLA temp",
        f"FLOPs per step      {result['flops_per_step']:.4g} (dots of the compiled step; model count {result['model_flops_per_step']:.4g})",
        f"collective bytes    {human_bytes(result['collective_bytes_per_step'])} per device per step"
        + "".join(f", {k} {human_bytes(v)}" for k, v in result["collective_bytes_by_kind"].items() if v),
    ]
    if result["unknown_trip_counts"]:
        lines.append(f"note: {result['unknown_trip_counts']} loop(s) without a known trip count were counted once")
    if result["fits"] is not None:
        verdict = "fits" if result["fits"] else "does NOT fit"
        lines.append(f"{verdict} in {human_bytes(result['hbm_bytes'])} per device ({per['total'] / result['hbm_bytes']:.0%} used)")
    return lines


def run_plan(args) -> int:
    from mmntp_jax.cli import CommandError

    config = planned_config(args)
    hbm_bytes = parse_bytes(args.hbm) if args.hbm else None
    import jax

    if jax.device_count() < args.devices:
        if os.environ.get(CHILD_ENV):
            raise CommandError(f"--devices {args.devices}: could not simulate that many CPU devices (this process has {jax.device_count()})")
        return simulate(args)
    result = plan(config, jax.devices()[: args.devices], hbm_bytes)
    print("\n".join(report_lines(result, config.name)))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0
