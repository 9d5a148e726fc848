"""Where a train step's time goes: a JAX profiler trace of the benchmark's step, as a table.

    python tools/bench/profile_step.py --shape peer            # the library's step at MaxText's shape
    python tools/bench/profile_step.py --shape captioned --cpu-devices 2 --top 15

Builds the step exactly as tools/bench/train_step.py does (same shapes, variants and
batches), runs two warm-up steps, traces `--steps` steps with `jax.profiler`, reads the
trace back with `jax.profiler.ProfileData` and prints one JSON object:

  wall_s_per_step     wall time of the traced steps
  idle_share          share of that wall time in which no XLA operation ran on any thread
  op_s_per_step       summed durations of the XLA operations (threads run operations
                      concurrently, so this can exceed the wall time)
  top                 the `--top` costliest groups: operations grouped by kind (`dot` for
                      matmul fusions, `elementwise` for the rest) and by the JAX operation
                      they came from (`op_name`, e.g. `transpose(jvp())/BCV,DV->BCD/dot_general`
                      is the backward of that einsum), with ms per step and share of op time

The op names come from the compiled HLO's metadata; an XLA fusion is named after its
root operation.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_step  # noqa: E402  (the benchmark's shapes, configs and batches)

SKIPPED = ("ThunkExecutor", "end:", "ThreadpoolListener", "SlinkyThreadPool")


def trace(compiled, state, batch, steps: int, folder: str) -> tuple[float, str]:
    import jax

    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.start_trace(folder)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    return wall, sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1]


def op_events(xplane: str):
    """(start_ns, end_ns, name) of every XLA operation executed on the host's threads."""
    import jax

    data = jax.profiler.ProfileData.from_file(xplane)
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if not event.name.startswith(SKIPPED) and not re.match(r"(while|cond|call)(\.\d+)?$", event.name):
                    yield event.start_ns, event.start_ns + event.duration_ns, event.name


def kind(name: str) -> str:
    """`dot` for XLA's matmul fusions and dots, `elementwise` for the rest."""
    return "dot" if name.startswith(("ynn_fusion", "xnn_fusion", "onednn", "dot")) else "elementwise"


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name → the JAX op_name it came from."""
    names = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text, re.M):
        names[match.group(1)] = re.sub(r"^jit\(\w+\)/", "", match.group(2)).replace("/while/body/closed_call", "")
    return names


def idle_ns(events) -> int:
    """Nanoseconds between the first and last operation during which none ran."""
    idle, busy_until = 0, None
    for start, end, _ in sorted(events):
        if busy_until is not None and start > busy_until:
            idle += start - busy_until
        busy_until = end if busy_until is None else max(busy_until, end)
    return idle


def table(events, names, steps: int, top: int) -> list[dict]:
    groups = collections.Counter()
    for start, end, name in events:
        groups[(kind(name), names.get(name) or name.rstrip("0123456789."))] += end - start
    total = sum(groups.values())
    return [{"kind": k, "op": op, "ms_per_step": round(ns / steps / 1e6, 2), "share": round(ns / total, 4)}
            for (k, op), ns in groups.most_common(top)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*train_step.SHAPES, *train_step.JOBS], default="peer")
    parser.add_argument("--variant", choices=list(train_step.VARIANTS), default="tuned")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--block", type=int, default=0, help="blockwise attention tile (default: the library's)")
    parser.add_argument("--cpu-devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="steps traced")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    from mmntp_jax.sharding import use_cpu_devices

    use_cpu_devices(args.cpu_devices)
    _, _, _, compiled, state, batch, _ = train_step.compile_step(args.shape, args.variant, args.dtype, args.block)
    with tempfile.TemporaryDirectory() as folder:
        wall, xplane = trace(compiled, state, batch, args.steps, folder)
        events = list(op_events(xplane))
    op_ns = sum(end - start for start, end, _ in events)
    print(json.dumps({
        "shape": args.shape, "variant": args.variant, "dtype": args.dtype, "steps": args.steps,
        "wall_s_per_step": round(wall / args.steps, 4), "idle_share": round(idle_ns(events) / 1e9 / wall, 4),
        "op_s_per_step": round(op_ns / args.steps / 1e9, 4),
        "top": table(events, op_names(compiled.as_text()), args.steps, args.top),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
