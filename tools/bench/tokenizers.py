"""Encoding throughput of every tokenizer: jitted, batched `encode` (or `embed`), items per second.

    PYTHONPATH=. python tools/bench/tokenizers.py [--batch 64] [--repeats 5] [--only image_fsq,audio_rvq]
                                                   [--workdir NAME=DIR …]

Prints one JSON object per tokenizer: name, kind, batch, item shape, tokens per
item, best and median seconds per batch, items/s and tokens/s (from the best
run), plus the host's CPU count and 1-minute load average, because on a shared
machine the load decides the figure. Tokenizers are the models of
experiments/tokenizers/*.py (randomly initialised — the cost of a forward pass
does not depend on the weights) unless `--workdir NAME=DIR` points at a trained one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmntp_jax.tokenizers.continuous import ContinuousTokenizerConfig  # noqa: E402
from mmntp_jax.tokenizers.registry import Tokenizer  # noqa: E402


def experiment_model(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "tokenizers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exp = module.get_config()
    return exp.kind, exp.model, exp.data


def item_shape(kind: str, model, data) -> tuple:
    if kind == "image":
        return (model.image_size, model.image_size, model.in_channels)
    if kind == "video":
        return (model.frames, model.image_size, model.image_size, model.in_channels)
    if kind == "audio":
        return (int(data.clip_seconds * model.sample_rate) // model.hop * model.hop,)
    return (model.image_size, model.image_size, model.in_channels)


def tokenizers(workdirs: dict):
    from mmntp_jax.tokenizers.io import load_tokenizer

    for name in ("image_fsq", "image_vq", "audio_rvq", "video_fsq"):
        kind, model, data = experiment_model(name)
        tok = load_tokenizer(Path(workdirs[name]) / "tokenizer") if name in workdirs else Tokenizer.create(kind, model)
        yield name, tok, item_shape(kind, model, data)
    for kind in ("patch", "resampler"):
        config = ContinuousTokenizerConfig(kind=kind, image_size=32, patch_size=4, width=256, queries=16, layers=2, heads=4)
        yield f"continuous_{kind}", Tokenizer.create("continuous", config), (32, 32, 3)


def bench(tok, shape, batch: int, repeats: int) -> dict:
    x = np.random.default_rng(0).uniform(size=(batch,) + shape).astype(np.float32)
    fn = (lambda: tok.encode(tok.params, x)) if tok.discrete else (lambda: tok.embed(tok.params, x))
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    best = min(times)
    tokens = tok.tokens_per_item(shape[:-1] if tok.kind in ("image", "video", "continuous") else shape)
    return {"batch": batch, "item_shape": list(shape), "tokens_per_item": tokens, "best_s": best, "median_s": statistics.median(times),
            "items_per_s": batch / best, "tokens_per_s": batch * tokens / best}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated names")
    parser.add_argument("--workdir", action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args(argv)
    workdirs = dict(item.split("=", 1) for item in args.workdir)
    only = set(filter(None, args.only.split(",")))
    for name, tok, shape in tokenizers(workdirs):
        if only and name not in only:
            continue
        record = {"tokenizer": name, "kind": tok.kind, **bench(tok, shape, args.batch, args.repeats),
                  "device": jax.devices()[0].platform, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
