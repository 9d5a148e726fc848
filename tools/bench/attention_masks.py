"""Train-step tokens/s of the attention masks (causal, prefix, block) × implementations (xla, blockwise).

    python tools/bench/attention_masks.py                  # all six, prints one JSON object
    python tools/bench/attention_masks.py --steps 5 --block 256

Rows: captioned-shapes-like documents packed into rows of 2048 tokens (the
full rows whose bidirectional regions cross the most tile boundaries):
"caption" = <bos> [context image: <boi> 64 codes <eoi>] trained caption (20–40
tokens) <eos> and "draw" = <bos> [context caption + "\\n"] trained image <eos>,
as mmntp_jax/data/captioned.py writes them. Model: d_model 256, 4 layers, 4
heads, MLP 1024, float32, batch 2 (the defaults). tokens/s from the median
step (`tokens_per_s`) and from the fastest (`tokens_per_s_best`, the steadier
one on a shared machine); `ratios` are against the same implementation's
causal mask; the three masks' steps are timed round-robin. `tile_work_vs_causal`
counts the attention tiles blockwise computes for these rows against causal's
(load-independent). For each case the compiled
train step's HLO is scanned for a [.., T, T]-shaped buffer (`tt_buffers`,
blockwise must have none) and `memory_analysis()` gives its temp bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmntp_jax.config import MASK_KINDS, Config, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.packing import best_fit_decreasing, chunk_spans, write_row
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.step import StepBuilder

VOCAB = Vocab.build(text=256, image=1024)
KINDS = ("causal", "prefix", "block")
IMPLS = ("xla", "blockwise")


def crossings(row: dict, block: int) -> int:
    """Tile boundaries that a prefix or block region of the row crosses (extra blockwise work)."""
    from mmntp_jax.model.attention import bidirectional_groups

    fields = [jnp.asarray(row[k])[None] for k in ("segment_ids", "block_ids", "loss_mask")]
    count = 0
    for kind in ("prefix", "block"):
        g = np.asarray(bidirectional_groups(*fields, MASK_KINDS.index(kind)))[0]
        count += sum(int(g[b - 1] != 0 and g[b - 1] == g[b]) for b in range(block, len(g), block))
    return count


def captioned_rows(n_rows: int, seq_len: int, block: int, seed: int = 0) -> dict:
    """[n_rows, T] PackedBatch of packed caption / draw documents: of the rows at
    most 1% padding, those whose regions cross the most tile boundaries (blockwise's worst case)."""
    rng = np.random.default_rng(seed)
    text = lambda n: VOCAB.offset("text") + rng.integers(0, 256, n)
    image = lambda: VOCAB.offset("image") + rng.integers(0, 1024, 64)
    docs = {}
    while sum(len(d["tokens"]) - 1 for d in docs.values()) < 16 * n_rows * seq_len:
        caption = text(rng.integers(20, 41))
        parts = [("image", image(), False), ("text", caption, True)] if rng.random() < 0.5 else [("text", caption, False), ("image", image(), True)]
        docs[len(docs)] = assemble_document(parts, VOCAB)
    items = [(k, s, n) for k, d in docs.items() for s, n in chunk_spans(d["tokens"], seq_len)]
    bins, fill = best_fit_decreasing([n for _, _, n in items], seq_len)
    rows = [write_row([items[i] for i in bins[b]], docs, seq_len) for b in range(len(bins)) if fill[b] >= 0.99 * seq_len]
    rows = sorted(rows, key=lambda r: -crossings(r, block))[:n_rows]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_config(impl: str, kind: str, args) -> Config:
    model = ModelConfig(vocab_size=VOCAB.size, d_model=args.d_model, n_layers=args.n_layers, n_heads=4, n_kv_heads=4, d_ff=4 * args.d_model,
                        attention=impl, attention_block=args.block, attention_mask=kind, max_seq_len=args.seq_len)
    train = TrainConfig(batch_size=args.batch, seq_len=args.seq_len, steps=1000)
    return Config(name=f"bench_{impl}_{kind}", model=model, optim=OptimConfig(), mesh=MeshConfig(data=1), train=train)


def tt_buffers(hlo: str, t: int) -> int:
    """How many HLO shapes end in [.., T, T] (a materialised score or mask matrix)."""
    return len(re.findall(rf"\[[0-9,]*\b{t},{t}\]", hlo))


def compile_step(impl: str, kind: str, batch: dict, args):
    """(compiled train step, state, sharded batch, facts about the compiled program)."""
    config = make_config(impl, kind, args)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    builder = StepBuilder(config, mesh)
    state = builder.init_state(0)
    batch = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = builder.train_step.lower(state, batch).compile()
    facts = {"compile_s": time.perf_counter() - t0, "tt_buffers": tt_buffers(compiled.as_text(), args.seq_len),
             "temp_mb": getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0) / 2**20}
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return compiled, state, batch, facts


def tile_work(kind: str, batch: dict, args) -> float:
    """Attention tiles the blockwise path computes, relative to the causal mask's (a w×w corner = 1/16)."""
    from mmntp_jax.model import attention
    from mmntp_jax.model.transformer import Transformer

    model = Transformer(make_config("blockwise", kind, args).model, rngs=nnx.Rngs(0))
    ids = attention.row_ids(jnp.asarray(batch["segment_ids"]), model.groups(*(jnp.asarray(batch[k]) for k in ("segment_ids", "block_ids", "loss_mask"))))
    n, w = args.seq_len // args.block, args.block // 4
    work = n * (n + 1) / 2
    for i in range(n):
        for j in range(i + 1, n):
            last, first = (i + 1) * args.block - 1, j * args.block
            if attention.group_crosses(ids, last, first):
                wide = attention.group_crosses(ids, last, first + w) | attention.group_crosses(ids, last - w, first)
                work += 1.0 if wide else 1 / 16
    return work / (n * (n + 1) / 2)


def bench(impl: str, batch: dict, args) -> dict:
    """The three masks' steps timed round-robin (one step each in turn), so load from
    other processes falls on all of them alike."""
    kinds = KINDS if args.kind == "all" else [args.kind]
    runs = {kind: compile_step(impl, kind, batch, args) for kind in kinds}
    times = {kind: [] for kind in kinds}
    for _ in range(args.steps):
        for kind, (compiled, state, sharded, facts) in runs.items():
            t0 = time.perf_counter()
            state, metrics = compiled(state, sharded)
            jax.block_until_ready(metrics)
            times[kind].append(time.perf_counter() - t0)
            runs[kind] = (compiled, state, sharded, facts)
    tokens = args.batch * args.seq_len
    return {f"{impl}/{kind}": {
        "tokens_per_s": tokens / statistics.median(times[kind]), "tokens_per_s_best": tokens / min(times[kind]),
        "step_s_median": statistics.median(times[kind]), "step_s_min": min(times[kind]), **runs[kind][3],
        **({"tile_work_vs_causal": tile_work(kind, batch, args)} if impl == "blockwise" else {}),
    } for kind in kinds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--block", type=int, default=512, help="blockwise attention tile")
    parser.add_argument("--impl", choices=[*IMPLS, "all"], default="all")
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    args = parser.parse_args(argv)
    batch = captioned_rows(args.batch, args.seq_len, args.block)
    results = {}
    for impl in IMPLS if args.impl == "all" else [args.impl]:
        results.update(bench(impl, batch, args))
    ratios = {f"{impl}/{kind}_vs_causal{suffix}": results[f"{impl}/{kind}"][f"tokens_per_s{suffix}"] / results[f"{impl}/causal"][f"tokens_per_s{suffix}"]
              for impl, kind in (k.split("/") for k in results) if kind != "causal" and f"{impl}/causal" in results for suffix in ("", "_best")}
    print(json.dumps({
        "seq_len": args.seq_len, "batch": args.batch, "d_model": args.d_model, "n_layers": args.n_layers, "block": args.block,
        "padding_fraction": float((batch["segment_ids"] == 0).mean()), "trained_fraction": float(batch["loss_mask"].mean()),
        "results": results, "ratios": ratios, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "backend": jax.default_backend(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
