"""Hugging Face export throughput and peak memory: is the export really streaming?

Writes a params-only workdir of random float32 parameters for a model of the
given size, then exports it (`mmntp_jax.export.hf.export_hf`) in a fresh
process and reports, as one JSON object: parameter bytes, export seconds,
MB/s, the largest single Hugging Face tensor and the largest stacked parameter
(all layers of one kernel), and the export process's peak resident memory above
its resident memory just before the export (libraries loaded). A streaming
export keeps that increase near one stacked parameter plus a few copies of one
tensor, far below the model's size.

    PYTHONPATH=. python tools/bench/export_hf.py --d-model 768 --n-layers 12 --vocab 32768 --d-ff 3072
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc (Linux).

    VmHWM, unlike getrusage's ru_maxrss, does not inherit the parent's peak across fork + exec.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(workdir: str, out: str, dtype: str) -> None:
    import jax
    import orbax.checkpoint  # noqa: F401  (imported before the baseline: libraries are not the export's memory)
    import tensorstore  # noqa: F401

    from mmntp_jax.export.hf import export_hf
    from mmntp_jax.export.reader import CheckpointReader

    CheckpointReader(workdir).checked_params_info()
    jax.numpy.zeros(1).block_until_ready()
    baseline = status_mb("VmRSS")
    t0 = time.perf_counter()
    summary = export_hf(workdir, out, dtype=dtype)
    seconds = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    print(json.dumps({"export_s": seconds, "baseline_rss_mb": baseline, "peak_rss_mb": peak, "bytes": summary["bytes"]}))


def make_workdir(path: Path, args) -> dict:
    import jax
    import numpy as np

    from mmntp_jax.config import Config, ModelConfig
    from mmntp_jax.data.vocab import Vocab
    from mmntp_jax.export.checkpoint_tools import write_params_workdir
    from mmntp_jax.export.reader import flatten, unflatten
    from mmntp_jax.model.init import init_params

    cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_heads, d_ff=args.d_ff)
    shapes = flatten(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    rng = np.random.default_rng(0)
    params = unflatten({k: rng.standard_normal(s.shape, np.float32) * 0.02 for k, s in shapes.items()})
    path.mkdir(parents=True)
    write_params_workdir(path, Config(model=cfg), Vocab.build(text=256), params, 0)
    largest = max(int(np.prod(s.shape[1:] if k.startswith("layers.") else s.shape)) for k, s in shapes.items())
    stacked = max(int(np.prod(s.shape)) for s in shapes.values())
    return {"params": int(sum(np.prod(s.shape) for s in shapes.values())), "largest_tensor_mb": largest * 4 / 2**20, "largest_stacked_mb": stacked * 4 / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--n-heads", type=int, default=12)
    parser.add_argument("--d-ff", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.dtype)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        info = make_workdir(Path(tmp) / "wd", args)
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, __file__, "--child", str(Path(tmp) / "wd"), str(Path(tmp) / "out"), "--dtype", args.dtype]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    model_mb = info["params"] * 4 / 2**20
    print(json.dumps({
        "bench": "export_hf", "dtype": args.dtype, "params": info["params"], "checkpoint_mb": round(model_mb, 1),
        "export_mb": round(measured["bytes"] / 2**20, 1), "export_s": round(measured["export_s"], 2),
        "mb_per_s": round(measured["bytes"] / 2**20 / measured["export_s"], 1),
        "largest_tensor_mb": round(info["largest_tensor_mb"], 1), "largest_stacked_mb": round(info["largest_stacked_mb"], 1),
        "peak_rss_increase_mb": round(measured["peak_rss_mb"] - measured["baseline_rss_mb"], 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
