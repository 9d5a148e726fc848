"""What a continuous image head costs per train step: the captioned job's step under each image input/output mode, in one run.

    python tools/bench/image_output_step.py                       # the default job's shape, 10 rounds of 4 steps
    python tools/bench/image_output_step.py --rounds 20 --steps 8

The shape is the multimodal default job's (`experiments/captioned.py`: d_model
192, 4 layers, vocab 1528, sequence 512, batch 8, blockwise attention), on one
device. Every variant trains on the same rows: documents of a 40-token caption
followed by a 66-token image block (`<boi>`, 64 codes, `<eoi>`), so 60% of the
targets are image codes, as in the job's draw documents. The code latents are a
random 4-wide table (the FSQ width of the job's tokenizer), so no tokenizer is
needed. Variants:

    discrete     image codes through lm_head (the default)
    regression   model.image_output=regression (a linear latent head, MSE)
    diffusion    model.image_output=diffusion (per-token flow-matching denoiser,
                 model.diffusion_samples noise draws per target)
    block        the same with model.diffusion_form=block (each image block noised
                 in the sequence, bidirectional inside, a linear velocity head)
    continuous   model.image_input=continuous, image_output=diffusion (the issue's job)

Rounds alternate the variants' order (the first step of a round measures a
few percent slower, whichever it is). Prints one JSON object: median step
time of each and its ratio to discrete (the diffusion target is ≤ 1.3×).
Measured: docs/benchmarks.md, "Discrete, regression and diffusion images".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

from mmntp_jax.config import MeshConfig
from mmntp_jax.experiment_file import load_module
from mmntp_jax.model.continuous_input import fill_latents, latent_modules
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.step import StepBuilder

FEATURES = 4  # the job tokenizer's FSQ latent width
CODES = 1000  # its codebook
CAPTION, IMAGE = 40, 64
VARIANTS = {
    "discrete": dict(),
    "regression": dict(image_output="regression"),
    "diffusion": dict(image_output="diffusion"),
    "block": dict(image_output="diffusion", diffusion_form="block"),
    "continuous": dict(image_input="continuous", image_output="diffusion"),
}


def job_config(variant: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments", "captioned.py")
    config = load_module(path).get_config()
    model = dataclasses.replace(config.model, image_feature_dim=FEATURES, **VARIANTS[variant])
    return dataclasses.replace(config, model=model, mesh=MeshConfig(data=1))


def image_range(config) -> tuple[int, int]:
    """The last CODES ids of the vocabulary stand for image codes (the job's layout: specials, text, image)."""
    return config.model.vocab_size - CODES, config.model.vocab_size


def rows(config) -> dict:
    """Packed rows of caption + image documents; image targets are flagged by the table."""
    rng = np.random.default_rng(0)
    b, t = config.train.batch_size, config.train.seq_len
    lo, hi = image_range(config)
    doc = CAPTION + IMAGE + 2
    tokens = np.zeros((b, t + 1), np.int32)
    modality = np.zeros((b, t), np.int32)
    for r in range(b):
        row = []
        while len(row) < t + 1:
            row += [1, *rng.integers(16, lo, CAPTION), 3, *rng.integers(lo, hi, IMAGE), 4]
        tokens[r] = row[: t + 1]
    is_image = (tokens[:, 1:] >= lo)
    modality[is_image] = 1
    positions = np.tile(np.arange(t) % doc, (b, 1)).astype(np.int32)
    segments = np.tile(np.arange(t) // doc + 1, (b, 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions, "segment_ids": segments,
            "loss_mask": np.ones((b, t), np.float32), "modality": modality, "block_ids": np.zeros((b, t), np.int32)}


def table(config) -> np.ndarray:
    lo, hi = image_range(config)
    t = np.zeros((config.model.vocab_size, FEATURES + 1), np.float32)
    t[lo:hi, :FEATURES] = np.random.default_rng(1).uniform(-1, 1, (hi - lo, FEATURES))
    t[lo:hi, FEATURES] = 1.0
    return t


def build(variant: str):
    config = job_config(variant)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    builder = StepBuilder(config, mesh, vocab=None)
    state = builder.init_state(0)
    for module in latent_modules(config.model):
        state = state.replace(params=fill_latents(state.params, table(config), FEATURES, module=module))
    return dict(compiled(builder, state, shard_batch(rows(config), mesh)), config=config)


def compiled(builder, state, batch) -> dict:
    """The train step compiled for `batch` and run twice: {step, state, batch, compile_s}."""
    t0 = time.perf_counter()
    step = builder.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return {"step": step, "state": state, "batch": batch, "compile_s": compile_s}


def median_step_times(built: dict, names, rounds: int, steps: int) -> dict:
    """Median seconds per step of each variant over `rounds` rounds of `steps` steps, the order alternating."""
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            b = built[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                b["state"], metrics = b["step"](b["state"], b["batch"])
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "discrete" not in names:
        print(f"--variants {args.variants}: expected a subset of {','.join(VARIANTS)} including discrete", file=sys.stderr)
        return 2
    built = {name: build(name) for name in names}
    median = median_step_times(built, names, args.rounds, args.steps)
    config = built["discrete"]["config"]
    print(json.dumps({
        "shape": {"d_model": config.model.d_model, "n_layers": config.model.n_layers, "vocab_size": config.model.vocab_size,
                  "seq_len": config.train.seq_len, "batch_size": config.train.batch_size,
                  "diffusion_samples": config.model.diffusion_samples, "diffusion_width": config.model.diffusion_width,
                  "diffusion_depth": config.model.diffusion_depth},
        "step_s_median": median,
        "ratio_to_discrete": {name: median[name] / median["discrete"] for name in names},
        "compile_s": {name: built[name]["compile_s"] for name in names},
        "rounds": args.rounds, "steps": args.steps, "load_avg_1m": os.getloadavg()[0],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
