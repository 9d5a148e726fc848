"""Packing benchmark: our block-aware best-fit packer against grain's packers and concat-and-split.

    PYTHONPATH=. python tools/bench/packing.py                 # 200k documents, T = 2048 and 8192 (minutes)
    PYTHONPATH=. python tools/bench/packing.py --docs 20000    # quick run

Documents have log-normal lengths (median 400 tokens, σ = 1, clipped to 2 … 20 000).
In the `multimodal` variant 30% of them also hold 1–4 image blocks of 256 codes
(258 tokens with <boi>/<eoi>) at random text positions. Packers, all on the same
documents and the same T:

    mmntp            WindowPackIterDataset (block-aware chunks, best-fit-decreasing,
                     window of --window rows, half carried over)
    grain_first_fit  grain's FirstFitPackIterDataset, 128 bins
    grain_best_fit   grain's BestFitPackIterDataset, 128 bins
    concat_split     all pairs concatenated and split every T

grain's packers cannot take documents longer than T, so they get our block-aware
chunks, cut beforehand and outside their timing; they run on the first
--grain-docs documents (they are slow). Prints JSON lines with `packer`,
`variant`, `seq_len`, `tokens_per_s` (document pairs packed per second),
`padding_fraction`, `docs_cut` and `blocks_cut` (blocks whose codes do not all
sit in one segment, counted from the output rows). Then `packer: "pipeline"`
lines: the whole input pipeline (ArrayRecord shards → shuffled, packed,
batched `PackedBatch`) against the train step of tools/bench/train_step.py
(shape `peer`, same T and B).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import grain
import numpy as np

from mmntp_jax.data.pack_iter import WindowPackIterDataset
from mmntp_jax.data.packing import chunk_spans, write_row
from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS, Vocab

IMAGE_TOKENS = 256
TEXT_VOCAB = 32000


def make_documents(n: int, variant: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, n).astype(np.int64), 2, 20000)
    pool = rng.integers(16, 16 + TEXT_VOCAB, int(lengths.max()) + 4 * (IMAGE_TOKENS + 2) + 2).astype(np.int32)
    zeros, ones = np.zeros(pool.size, np.uint8), np.ones(pool.size, np.uint8)
    image_start = 16 + TEXT_VOCAB
    docs = []
    for i, n_tokens in enumerate(lengths.tolist()):
        offset = int(rng.integers(0, 64))
        if variant == "multimodal" and rng.random() < 0.3:
            text = pool[offset : offset + n_tokens].copy()
            text[0], text[-1] = 1, 2
            cuts = np.sort(rng.integers(1, n_tokens, int(rng.integers(1, 5))))
            parts, mods, prev = [], [], 0
            for c in cuts.tolist():
                block = np.concatenate([[3], rng.integers(image_start, image_start + 1024, IMAGE_TOKENS), [4]]).astype(np.int32)
                parts += [text[prev:c], block]
                mods += [np.zeros(c - prev, np.uint8), np.ones(block.size, np.uint8)]
                prev = c
            parts.append(text[prev:])
            mods.append(np.zeros(n_tokens - prev, np.uint8))
            tokens = np.concatenate(parts)
            docs.append({"tokens": tokens, "modality": np.concatenate(mods), "loss": np.ones(tokens.size, np.uint8)})
        else:
            docs.append({"tokens": pool[offset : offset + n_tokens], "modality": zeros[:n_tokens], "loss": ones[:n_tokens]})
    return docs


def count_blocks_cut(row, seg_key="segment_ids") -> int:
    """Blocks whose begin marker is an input of a segment that does not also hold its end marker as a target."""
    inputs, targets, seg = row["inputs"], row["targets"], row[seg_key]
    begins = np.flatnonzero(np.isin(inputs, BEGIN_IDS) & (seg > 0))
    if not begins.size:
        return 0
    ends = np.flatnonzero(np.isin(targets, END_IDS) & (seg > 0))
    if not ends.size:
        return int(begins.size)
    k = np.searchsorted(ends, begins)  # the first end marker target at or after each begin
    end = ends[np.minimum(k, ends.size - 1)]
    next_begin = np.append(begins[1:], inputs.size)
    intact = (k < ends.size) & (seg[end] == seg[begins]) & (end < next_begin)
    return int((~intact).sum())


def measure(packer, variant, seq_len, docs, rows, docs_cut, seg_key="segment_ids") -> dict:
    """Times only the packer's `next` calls; checks and counts each row outside the timing."""
    seconds, n_rows, used, blocks_cut = 0.0, 0, 0, 0
    rows = iter(rows)
    while True:
        start = time.perf_counter()
        try:
            row = next(rows)
        except StopIteration:
            break
        finally:
            seconds += time.perf_counter() - start
        n_rows += 1
        used += int((row[seg_key] > 0).sum())
        blocks_cut += count_blocks_cut(row, seg_key)
    pairs = sum(len(d["tokens"]) - 1 for d in docs)
    if used != pairs:
        raise AssertionError(f"{packer}: {used} pairs in the rows, {pairs} in the documents")
    return {"packer": packer, "variant": variant, "seq_len": seq_len, "docs": len(docs), "tokens": pairs, "rows": n_rows,
            "seconds": round(seconds, 3), "tokens_per_s": round(pairs / seconds), "padding_fraction": round(1 - used / (n_rows * seq_len), 6),
            "docs_cut": docs_cut, "blocks_cut": blocks_cut}


def mmntp_rows(docs, seq_len, window):
    return iter(WindowPackIterDataset(grain.MapDataset.source(docs), seq_len, window_rows=window, carry_rows=window // 2, seed=0))


def chunk_elements(docs, seq_len):
    elements = []
    for d in docs:
        t = d["tokens"]
        for s, n in chunk_spans(t, seq_len):
            elements.append({"inputs": t[s : s + n], "targets": t[s + 1 : s + n + 1],
                             "loss": d["loss"][s + 1 : s + n + 1].astype(np.float32), "modality": d["modality"][s + 1 : s + n + 1].astype(np.int32)})
    return elements


def grain_rows(elements, seq_len, cls):
    return iter(cls(grain.MapDataset.source(elements).to_iter_dataset(), length_struct={k: seq_len for k in elements[0]}, num_packing_bins=128, seed=0))


def concat_split_rows(docs, seq_len):
    """Pairs of all documents end to end, cut every T pairs (segments restart at each document)."""
    chunks, fill = [], 0
    for key, d in enumerate(docs):
        at, n = 0, len(d["tokens"]) - 1
        while at < n:
            take = min(n - at, seq_len - fill)
            chunks.append((key, at, take))
            at, fill = at + take, fill + take
            if fill == seq_len:
                yield write_row(chunks, docs, seq_len)
                chunks, fill = [], 0
    if chunks:
        yield write_row(chunks, docs, seq_len)


def concat_split_docs_cut(docs, seq_len) -> int:
    ends = np.cumsum([len(d["tokens"]) - 1 for d in docs])
    starts = ends - np.array([len(d["tokens"]) - 1 for d in docs])
    return int(((starts // seq_len) != ((ends - 1) // seq_len)).sum())


def bench_packers(args, variant, docs):
    from grain.experimental import BestFitPackIterDataset, FirstFitPackIterDataset

    for seq_len in args.seq_lens:
        docs_cut = sum(len(chunk_spans(d["tokens"], seq_len)) > 1 for d in docs)
        yield measure("mmntp", variant, seq_len, docs, mmntp_rows(docs, seq_len, args.window), docs_cut)
        few = docs[: args.grain_docs]
        few_cut = sum(len(chunk_spans(d["tokens"], seq_len)) > 1 for d in few)
        elements = chunk_elements(few, seq_len)
        for name, cls in (("grain_first_fit", FirstFitPackIterDataset), ("grain_best_fit", BestFitPackIterDataset)):
            yield measure(name, variant, seq_len, few, grain_rows(elements, seq_len, cls), few_cut, seg_key="inputs_segment_ids")
        yield measure("concat_split", variant, seq_len, docs, concat_split_rows(docs, seq_len), concat_split_docs_cut(docs, seq_len))


def pipeline_tokens_per_s(config, batches: int) -> float:
    from mmntp_jax.data.pipeline import make_dataset

    it = iter(make_dataset(config, "train")[1])
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * config.train.batch_size * config.train.seq_len / (time.perf_counter() - start)


def train_step_tokens_per_s(steps: int) -> float:
    """The foundation's train-step benchmark (tools/bench/train_step.py), shape `peer`, tuned."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_step_bench", Path(__file__).with_name("train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bench("peer", "tuned", steps, "float32", 256, peak=1.0)["tokens_per_s"]


def bench_pipeline(args, docs_by_variant):
    import dataclasses

    from mmntp_jax.config import load_config
    from mmntp_jax.data.shards import write_documents

    base = load_config("experiments/text_stdlib.py")
    with tempfile.TemporaryDirectory() as tmp:
        for variant, seq_len, batch in (("text", 512, 8), ("multimodal", 2048, 8)):  # text: the `peer` train-step shape
            if variant not in docs_by_variant:
                continue
            docs = docs_by_variant[variant][: args.pipeline_docs]
            vocab = Vocab.build(text=TEXT_VOCAB, image=1024)
            write_documents(f"{tmp}/{variant}", docs, vocab, docs_per_shard=1024)
            config = dataclasses.replace(
                base, data=dataclasses.replace(base.data, source="shards", path=f"{tmp}/{variant}", eval_fraction=0.0, pack_window=args.window),
                model=dataclasses.replace(base.model, vocab_size=vocab.size, max_seq_len=seq_len),
                train=dataclasses.replace(base.train, seq_len=seq_len, batch_size=batch))
            line = {"packer": "pipeline", "variant": variant, "seq_len": seq_len, "batch_size": batch, "docs": len(docs),
                    "tokens_per_s": round(pipeline_tokens_per_s(config, args.pipeline_batches))}
            if variant == "text" and args.train_steps:
                line["train_tokens_per_s"] = round(train_step_tokens_per_s(args.train_steps))
                line["pipeline_over_train"] = round(line["tokens_per_s"] / line["train_tokens_per_s"], 1)
            yield line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--grain-docs", type=int, default=20_000, help="documents given to grain's (slow) packers")
    parser.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["text", "multimodal"])
    parser.add_argument("--window", type=int, default=256, help="rows per packing window (data.pack_window)")
    parser.add_argument("--pipeline-docs", type=int, default=20_000)
    parser.add_argument("--pipeline-batches", type=int, default=200)
    parser.add_argument("--skip-packers", action="store_true", help="only the pipeline lines")
    parser.add_argument("--train-steps", type=int, default=3, help="train steps timed for the ratio (0: skip)")
    args = parser.parse_args(argv)
    docs_by_variant = {}
    for variant in args.variants:
        docs_by_variant[variant] = docs = make_documents(args.docs, variant)
        for line in [] if args.skip_packers else bench_packers(args, variant, docs):
            print(json.dumps(line), flush=True)
    for line in bench_pipeline(args, docs_by_variant):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
