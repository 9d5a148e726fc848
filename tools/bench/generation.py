"""Generation benchmark: KV-cache sampling of image blocks (and captions) under the block grammar.

    PYTHONPATH=. python tools/bench/generation.py                         # the default job's model shape, random weights
    PYTHONPATH=. python tools/bench/generation.py --workdir workdirs/default   # a trained captioned run

A batch of `--batch` caption → image prompts (each block: 64 codes + its end
marker, greedy, the grammar enforced) and the same batch of image → caption
prompts (`--caption-tokens` new tokens). Each is timed after one warm-up call
(compilation excluded; reported separately). Prints one JSON object:
`image_tokens_per_s`, `caption_tokens_per_s` (new tokens of the whole batch per
second), `compile_s`, the shape and the device.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.config import load_config, repo_experiment
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.model.block_rules import BlockRules
from mmntp_jax.model.generate import generate_ids, left_pad
from mmntp_jax.model.init import graphdef, init_params

CAPTION = 24  # BPE tokens of a typical caption (about 125 bytes)


def model_and_vocab(workdir: str | None):
    if workdir:
        import mmntp_jax as mm

        run = mm.load(workdir)
        return run.graph, run.params, run.config.model, run.vocab, run.media.block_length("image")
    cfg = load_config(repo_experiment("captioned")).model
    return graphdef(cfg), init_params(cfg, jax.random.key(0)), cfg, Vocab.build(text=cfg.vocab_size - 16 - 1000, image=1000), 64


def timed(fn, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return compile_s, (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    graph, params, cfg, vocab, n_codes = model_and_vocab(args.workdir)
    rules = BlockRules.from_vocab(vocab, {"image": n_codes})
    rng = np.random.default_rng(0)
    boi, eoi = vocab.markers("image")
    text = lambda: rng.integers(vocab.offset("text"), vocab.offset("text") + vocab.range_size("text"), CAPTION)
    codes = lambda: rng.integers(vocab.offset("image"), vocab.offset("image") + vocab.range_size("image"), n_codes)
    draw = [np.array([vocab.bos_id, *text(), boi]) for _ in range(args.batch)]
    caption = [np.array([vocab.bos_id, boi, *codes(), eoi]) for _ in range(args.batch)]
    out = {"batch": args.batch, "d_model": cfg.d_model, "n_layers": cfg.n_layers, "image_tokens": n_codes + 1,
           "device": jax.devices()[0].device_kind, "attention": cfg.attention}
    for name, prompts, new in (("image", draw, n_codes + 1), ("caption", caption, args.caption_tokens)):
        ids, seg, pos = (jnp.asarray(x) for x in left_pad(prompts, vocab.pad_id))
        block, filled = (jnp.asarray(x) for x in rules.state_after(prompts))
        fn = lambda: generate_ids(graph, params, ids, seg, pos, jax.random.key(0), max_new_tokens=new, rules=rules, block_B=block, filled_B=filled)
        compile_s, seconds = timed(fn, args.repeats)
        out.update({f"{name}_tokens_per_s": round(args.batch * new / seconds, 1), f"{name}_seconds": round(seconds, 3), f"{name}_compile_s": round(compile_s, 1)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
