"""Train step with the projections' explicit backward (`model.layers.dense`, the library's) vs einsum autodiff.

    python tools/bench/projection_backward.py                       # the captioned job's step, 2 CPU devices
    python tools/bench/projection_backward.py --devices 1 --set model.d_model=256

Both variants are built in one process on the same batch and timed in
alternation (median of `--rounds` × 2 steps each); their first losses must be
equal. Prints one JSON object per variant and one with the speed ratio.
Autodiff of `einsum("BTD,DF->BTF")` makes XLA's CPU backend transpose every
[B·T, F] gradient before the weight-gradient dot; `dense` compiles to none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def einsum_variants():
    """The projections as plain einsums (what `dense` replaced), to patch in."""
    import jax
    import jax.numpy as jnp

    from mmntp_jax.model.layers import apply_rope
    from mmntp_jax.sharding import constrain

    def mlp(self, x_BTD):
        dtype = x_BTD.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_proj[...].astype(dtype))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_proj[...].astype(dtype))
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
        return jnp.einsum("BTF,FD->BTD", h_BTF, self.down_proj[...].astype(dtype))

    def project(self, x_BTD, cos_BTE, sin_BTE):
        dtype = x_BTD.dtype
        q_BTHE = jnp.einsum("BTD,DHE->BTHE", x_BTD, self.q_proj[...].astype(dtype))
        k_BTKE = jnp.einsum("BTD,DKE->BTKE", x_BTD, self.k_proj[...].astype(dtype))
        v_BTKE = jnp.einsum("BTD,DKE->BTKE", x_BTD, self.v_proj[...].astype(dtype))
        if self.qk_norm:
            q_BTHE, k_BTKE = self.q_norm(q_BTHE), self.k_norm(k_BTKE)
        return apply_rope(q_BTHE, cos_BTE, sin_BTE), apply_rope(k_BTKE, cos_BTE, sin_BTE), v_BTKE

    def output(self, out_BTHE):
        return jnp.einsum("BTHE,HED->BTD", out_BTHE, self.o_proj[...].astype(out_BTHE.dtype))

    return mlp, project, output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/captioned.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--devices", type=int, default=2, help="CPU devices (data-parallel), as train.cpu_devices")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    from mmntp_jax.config import load_config
    from mmntp_jax.model import attention, layers
    from mmntp_jax.model.flops import training_flops_per_step
    from mmntp_jax.sharding import make_mesh, shard_batch
    from mmntp_jax.train.step import StepBuilder

    config = load_config(args.config, args.overrides)
    mesh = make_mesh(config.mesh)
    b, t, v = config.train.batch_size, config.train.seq_len, config.model.vocab_size
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, v, size=(b, t + 1), dtype=np.int32)
    segments = (np.cumsum(rng.random((b, t)) < 1 / 90, axis=1) + 1).astype(np.int32)  # ~90-token documents
    batch = shard_batch({
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segments,
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(), "loss_mask": np.ones((b, t), np.float32),
        "modality": np.zeros((b, t), np.int32), "block_ids": np.zeros((b, t), np.int32),
    }, mesh)
    library = (layers.MLP.__call__, attention.Attention.project, attention.Attention.output)
    runs = {}
    for name, fns in (("einsum_autodiff", einsum_variants()), ("dense", library)):
        layers.MLP.__call__, attention.Attention.project, attention.Attention.output = fns
        builder = StepBuilder(config, mesh)
        state = builder.init_state(config.train.seed)
        t0 = time.perf_counter()
        step = builder.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        state, metrics = step(state, batch)
        runs[name] = {"step": step, "state": state, "times": [], "loss": float(metrics["loss"]), "compile_s": compile_s}
    layers.MLP.__call__, attention.Attention.project, attention.Attention.output = library
    for _ in range(args.rounds):
        for run in runs.values():
            for _ in range(2):
                t0 = time.perf_counter()
                run["state"], metrics = run["step"](run["state"], batch)
                jax.block_until_ready(metrics)
                run["times"].append(time.perf_counter() - t0)
    flops = training_flops_per_step(config.model, t, b)
    for name, run in runs.items():
        step_s = statistics.median(run["times"])
        print(json.dumps({"variant": name, "devices": args.devices, "step_s": round(step_s, 4), "gflop_per_s": round(flops / step_s / 1e9, 1),
                          "first_loss": run["loss"], "compile_s": round(run["compile_s"], 1)}))
    ratio = statistics.median(runs["einsum_autodiff"]["times"]) / statistics.median(runs["dense"]["times"])
    same = runs["einsum_autodiff"]["loss"] == runs["dense"]["loss"]
    print(json.dumps({"speedup_dense": round(ratio, 3), "first_losses_equal": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
