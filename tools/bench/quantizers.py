"""Quantizer benchmark: forward+backward step time of mmntp_jax quantizers vs vector-quantize-pytorch.

Run:  PYTHONPATH=. python tools/bench/quantizers.py [--rows fsq,lfq,vq,rvq] [--threads N] [--no-torch]

Prints one JSON object per row: quantizer, shape, ms_per_step, torch_ms_per_step,
speedup (torch / ours), plus the settings. Each row times one training step on
input (16, 1024, D): quantize (codes included), loss = Σ w·z_q + aux_loss,
gradient w.r.t. the input, and for EMA codebooks the EMA update, in both
libraries with the same settings (straight-through estimator, commitment
weight 0.25, EMA decay 0.99, LFQ entropy weight 0.1 at inverse temperature 100). Both are warmed up; torch runs with OMP_WAIT_POLICY=PASSIVE and the
same thread count as XLA. The figure is the median of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="fsq,lfq,vq,rvq", help="comma-separated subset of fsq,lfq,vq,rvq")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for XLA and torch")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (compilation, allocator)")
    p.add_argument("--min-reps", type=int, default=3, help="timed steps per row at least")
    p.add_argument("--min-seconds", type=float, default=3.0, help="time each row at least this long")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--no-torch", action="store_true", help="time only mmntp_jax")
    return p.parse_args(argv)


ARGS = parse_args()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={ARGS.threads}"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mmntp_jax.tokenizers.quantizers import ema_update, fsq, lfq, rvq, rvq_ema_update, vq, vq_state  # noqa: E402

DECAY = 0.99
BETA = 0.25


def median_ms(step, min_reps, min_seconds):
    for _ in range(ARGS.warmup):
        step()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times), len(times)


# ---------------------------------------------------------------- mmntp_jax steps


def jax_step(name, z, w, rng):
    """A jitted training step with its state held in a closure, so the caller only calls it.

    The step quantizes, takes the gradient of Σ w·z_q + aux_loss w.r.t. z,
    returns the codes and, for EMA codebooks, the updated state.
    """
    if name == "fsq":
        quantize, update, state = (lambda z, s: fsq(z, [8, 5, 5, 5])), None, None
    elif name == "lfq":
        quantize, update, state = (lambda z, s: lfq(z, entropy_weight=0.1, commitment_weight=BETA)), None, None
    elif name == "vq":
        quantize, update = partial(vq, beta=BETA), partial(ema_update, decay=DECAY)
        state = vq_state(jnp.asarray(rng.randn(8192, 256), jnp.float32))
    elif name == "rvq":
        quantize, update = partial(rvq, beta=BETA), partial(rvq_ema_update, decay=DECAY)
        state = jax.tree.map(lambda *x: jnp.stack(x), *[vq_state(jnp.asarray(rng.randn(1024, 128), jnp.float32)) for _ in range(8)])
    else:
        raise ValueError(f"unknown row {name!r}")

    @jax.jit
    def step(state, z):
        def loss(z):
            out = quantize(z, state)
            return jnp.sum(out.z_q * w) + out.aux_loss, out.codes

        (_, codes), grad = jax.value_and_grad(loss, has_aux=True)(z)
        return (state if update is None else update(state, z, codes)), grad, codes

    held = [state]

    def run():
        held[0], grad, codes = step(held[0], z)
        jax.block_until_ready((grad, codes))

    return run


# ---------------------------------------------------------------- vector-quantize-pytorch steps


def torch_step(name, z_np, w_np):
    import torch
    import vector_quantize_pytorch as vqp

    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    if name == "fsq":
        module = vqp.FSQ([8, 5, 5, 5])
    elif name == "lfq":
        module = vqp.LFQ(codebook_size=2**14, dim=14, entropy_loss_weight=0.1, commitment_loss_weight=BETA)
    elif name == "vq":
        module = vqp.VectorQuantize(dim=256, codebook_size=8192, decay=DECAY, commitment_weight=BETA, rotation_trick=False)
    else:
        module = vqp.ResidualVQ(dim=128, num_quantizers=8, codebook_size=1024, decay=DECAY, commitment_weight=BETA, rotation_trick=False)
    module.train()
    z, w = torch.tensor(z_np), torch.tensor(w_np)

    def run():
        x = z.clone().requires_grad_(True)
        out = module(x)
        loss = (out[0] * w).sum()
        if len(out) > 2:
            loss = loss + out[2].sum()
        loss.backward()

    return run


ROWS = {"fsq": ("fsq [8,5,5,5]", 4), "lfq": ("lfq 2^14 +entropy", 14), "vq": ("vq 8192x256 ema", 256), "rvq": ("rvq 8x1024x128 ema", 128)}


def main():
    rng = np.random.RandomState(0)
    for name in [r.strip() for r in ARGS.rows.split(",") if r.strip()]:
        if name not in ROWS:
            sys.exit(f"quantizers bench: unknown row {name!r}; expected a subset of {','.join(ROWS)}")
        label, d = ROWS[name]
        shape = (ARGS.batch, ARGS.length, d)
        scale = 0.1 if name == "lfq" else 1.0
        z_np = (rng.randn(*shape) * scale).astype(np.float32)
        w_np = rng.randn(*shape).astype(np.float32)
        ours, reps = median_ms(jax_step(name, jnp.asarray(z_np), jnp.asarray(w_np), rng), ARGS.min_reps, ARGS.min_seconds)
        row = {"quantizer": label, "shape": list(shape), "ms_per_step": round(ours, 2), "reps": reps}
        if not ARGS.no_torch:
            theirs, treps = median_ms(torch_step(name, z_np, w_np), ARGS.min_reps, ARGS.min_seconds)
            row.update(torch_ms_per_step=round(theirs, 2), torch_reps=treps, speedup=round(theirs / ours, 2))
        row.update(threads=ARGS.threads, devices=str(jax.devices()[0].platform), omp_wait_policy=os.environ["OMP_WAIT_POLICY"])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
