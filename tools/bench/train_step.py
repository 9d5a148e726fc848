"""Train-step throughput and MFU on this machine (one JSON object per shape and variant).

    python tools/bench/train_step.py                      # both shapes, tuned and plain variants
    python tools/bench/train_step.py --shape peer --steps 5

    python tools/bench/train_step.py --shape captioned --variant tuned --cpu-devices 2

Shapes:
  d512        d_model 512, 8 layers, 8 heads, MLP 2048, vocab 32000, seq 1024, batch 8
  peer        d_model 256, 4 layers, 4 heads of 64, MLP 1024, vocab 32000, seq 512, batch 8
              (0.3173 TFLOP per step by MaxText's count; MaxText 0.2.5 itself runs beside our
              step in tools/bench/maxtext_peer.py)
  text_stdlib the byte-level job's step (experiments/text_stdlib.py: d192 L4, 2 KV heads,
              MLP 512, vocab 272, seq 256, batch 16)
  captioned   the default job's backbone step (experiments/captioned.py: d192 L4, 2 KV heads,
              MLP 512, vocab 1528, seq 512, batch 8; the job trains it over one CPU device
              per core, here --cpu-devices); its batch carries images: 91-token documents of
              a 24-token caption, <boi>, 64 codes, <eoi>, <eos>
Variants:
  tuned  the defaults the library picks: fused linear cross-entropy in chunks (no
         [B, T, V] logits), blockwise causal attention
  plain  a plain jitted decoder: full logits, XLA attention over the whole [T, T] matrix
FLOPs per step use `mmntp_jax.model.flops` (MaxText's count); MFU is against a float32
matmul peak measured in the same run. Float32 throughout unless --dtype bfloat16.
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

from pathlib import Path

import jax
import numpy as np

from mmntp_jax.config import Config, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from mmntp_jax.data.packing import block_ids
from mmntp_jax.data.vocab import NAMED_SPECIALS
from mmntp_jax.model.attention import tile_size
from mmntp_jax.model.flops import training_flops_per_step
from mmntp_jax.sharding import make_mesh, shard_batch, use_cpu_devices
from mmntp_jax.train.metrics import measure_matmul_peak
from mmntp_jax.train.step import StepBuilder

SHAPES = {
    "d512": dict(model=dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_ff=2048, vocab_size=32000), seq_len=1024, batch=8),
    "peer": dict(model=dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=1024, vocab_size=32000), seq_len=512, batch=8),
}
JOBS = ("text_stdlib", "captioned")  # shapes read from experiments/<name>.py
REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "tuned": dict(attention="blockwise", loss_chunk=0),
    "plain": dict(attention="xla", loss_chunk=-1),
}


def make_config(shape: str, variant: str, dtype: str, block: int) -> Config:
    if shape in JOBS:
        return job_config(shape, variant, dtype, block)
    spec, var = SHAPES[shape], VARIANTS[variant]
    tile = {"attention_block": block} if block else {}
    model = ModelConfig(**spec["model"], dtype=dtype, attention=var["attention"], max_seq_len=spec["seq_len"], **tile)
    train = TrainConfig(batch_size=spec["batch"], seq_len=spec["seq_len"], steps=1000, loss_chunk=max(var["loss_chunk"], 0))
    config = Config(name=f"bench_{shape}_{variant}", model=model, optim=OptimConfig(), mesh=MeshConfig(data=1), train=train)
    return config


def job_config(name: str, variant: str, dtype: str, block: int) -> Config:
    """The job's own config (experiments/<name>.py) with the variant's attention and loss."""
    from mmntp_jax.config_load import load_config

    config = load_config(REPO / "experiments" / f"{name}.py")
    var = VARIANTS[variant]
    model = dataclasses.replace(config.model, dtype=dtype, attention=var["attention"], attention_block=block or config.model.attention_block)
    train = dataclasses.replace(config.train, loss_chunk=max(var["loss_chunk"], config.train.loss_chunk))
    return dataclasses.replace(config, name=f"bench_{name}_{variant}", model=model, train=train, mesh=MeshConfig(data=-1))


def captioned_batch(config: Config) -> dict:
    """Rows packed like the captioned job's: documents of a 24-token caption, <boi>, 64
    image codes, <eoi>, <eos> (91 tokens); a row's tail is one text document."""
    rng = np.random.default_rng(0)
    b, t = config.train.batch_size, config.train.seq_len
    text_ids, image_ids = (16, 16 + 512), (16 + 512, config.model.vocab_size)
    boi, eoi, eos = (NAMED_SPECIALS.index(n) for n in ("<boi>", "<eoi>", "<eos>"))
    fields = {k: np.zeros((b, t + 1), np.int32) for k in ("tokens", "segment_ids", "positions", "modality", "block_ids")}
    for r in range(b):
        at, doc = 0, 0
        while at < t + 1:
            doc, left = doc + 1, t + 1 - at
            if left > 91:
                tokens = [*rng.integers(*text_ids, 24), boi, *rng.integers(*image_ids, 64), eoi, eos]
                modality = [0] * 25 + [1] * 64 + [0, 0]
            else:
                tokens, modality = [*rng.integers(*text_ids, left)], [0] * left
            n = len(tokens)
            fields["tokens"][r, at : at + n] = tokens
            fields["segment_ids"][r, at : at + n] = doc
            fields["positions"][r, at : at + n] = np.arange(n)
            fields["modality"][r, at : at + n] = modality
            fields["block_ids"][r, at : at + n] = block_ids(np.asarray(tokens), first=int(fields["block_ids"][r].max()))
            at += n
    same_doc = fields["segment_ids"][:, :-1] == fields["segment_ids"][:, 1:]
    return {
        "inputs": fields["tokens"][:, :-1], "targets": fields["tokens"][:, 1:], "segment_ids": fields["segment_ids"][:, :-1],
        "positions": fields["positions"][:, :-1], "loss_mask": same_doc.astype(np.float32),
        "modality": fields["modality"][:, 1:], "block_ids": fields["block_ids"][:, :-1],
    }


def random_batch(config: Config) -> dict:
    rng = np.random.default_rng(0)
    b, t, v = config.train.batch_size, config.train.seq_len, config.model.vocab_size
    tokens = rng.integers(0, v, size=(b, t + 1), dtype=np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
        "segment_ids": np.ones((b, t), np.int32), "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
        "loss_mask": np.ones((b, t), np.float32), "modality": np.zeros((b, t), np.int32), "block_ids": np.zeros((b, t), np.int32),
    }


def compile_step(shape: str, variant: str, dtype: str, block: int):
    """(config, mesh, builder, compiled step, state, batch, compile seconds) of a shape and variant."""
    config = make_config(shape, variant, dtype, block)
    mesh = make_mesh(config.mesh, jax.devices() if shape in JOBS else jax.devices()[:1])
    builder = StepBuilder(config, mesh)
    if VARIANTS[variant]["loss_chunk"] < 0:
        builder.loss_chunk, builder.fused_loss = 0, False  # full [B, T, V] logits, plain autodiff
    state = builder.init_state(0)
    batch = shard_batch((captioned_batch if shape == "captioned" else random_batch)(config), mesh)
    t0 = time.perf_counter()
    compiled = builder.train_step.lower(state, batch).compile()
    return config, mesh, builder, compiled, state, batch, time.perf_counter() - t0


def bench(shape: str, variant: str, steps: int, dtype: str, block: int, peak: float) -> dict:
    config, mesh, builder, compiled, state, batch, compile_s = compile_step(shape, variant, dtype, block)
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops = training_flops_per_step(config.model, config.train.seq_len, config.train.batch_size)
    return {
        "config": shape, "variant": variant, "dtype": dtype,
        "attention": config.model.attention, "attention_block": config.model.attention_block,
        "attention_tile": tile_size(config.train.seq_len, config.model.attention_block) if config.model.attention == "blockwise" else 0, "devices": mesh.size, "loss_chunk": builder.loss_chunk, "fused_loss": builder.fused_loss,
        "tokens_per_s": config.train.batch_size * config.train.seq_len / step_s,
        "mfu": flops / step_s / peak, "matmul_peak_flops": peak, "tflop_per_step": flops / 1e12,
        "compile_s": compile_s, "step_s_median": step_s, "step_s_min": min(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": float(metrics["loss"]), "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
    }


def matmul_peak() -> float:
    """The float32 matmul peak (FLOP/s) that MFU is measured against, best of two sizes."""
    return max(measure_matmul_peak(2048, 5), measure_matmul_peak(1024, 10))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, *JOBS, "all"], default="all")
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--block", type=int, default=0, help="blockwise attention tile (default: the library's)")
    parser.add_argument("--cpu-devices", type=int, default=1, help="CPU devices; the job shapes train data-parallel over all of them")
    args = parser.parse_args(argv)
    use_cpu_devices(args.cpu_devices)
    peak = matmul_peak()
    shapes = [*SHAPES, *JOBS] if args.shape == "all" else [args.shape]
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    for shape in shapes:
        for variant in variants:
            print(json.dumps(bench(shape, variant, args.steps, args.dtype, args.block, peak)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
