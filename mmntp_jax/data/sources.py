"""Registry of training data sources, selected by `data.source`.

A source turns a `Config` and a split ("train" or "eval") into the `Vocab` and a
grain `MapDataset` of tokenized documents (see `documents.py`):

    stdlib    byte-level documents from the Python standard library's source files
              (whole files, or pieces of at most `data.piece_bytes` bytes each)
    shards    a folder made by `mmntp data prepare` (`data.path`); each record is
              validated when read, and a bad one stops the run or is dropped
              per `data.on_error` (see `records.py`)
    mixture   several sources with weights (`data.mixture`, see below)

`data.mixture` lists `(source, weight)` or `(source, weight, path)` entries,
e.g. `(("stdlib", 0.7), ("shards", 0.3, "data/shapes"))`. For training, each
source is shuffled and repeated on its own (seed `train.seed + k`) and the
streams are interleaved in proportion to the weights, so the mixture is an
endless stream; for eval the sources' eval splits are concatenated. A fourth
element gives that source its own attention mask kind (`causal`, `prefix` or
`block`, see `model.attention_mask`), e.g. `("stdlib", 0.7, None, "causal")`
next to `("shards", 0.3, "data/shapes", "block")` (path None or "" = `data.path`);
its documents carry it as `mask_kind`, which packing writes to every token. All sources
of a mixture must share one vocabulary, up to ranges that only some of them
use: the mixture's vocabulary is the one that extends all the others.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import grain
import numpy as np

from mmntp_jax.config import MASK_KINDS
from mmntp_jax.data import stdlib
from mmntp_jax.data.documents import text_document
from mmntp_jax.data.markov import markov_source
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.tokenizers.text import ByteTokenizer


def stdlib_source(config, split: str):
    """Byte-level documents from the Python standard library's source files."""
    vocab = Vocab.build(text=256)
    tokenizer = ByteTokenizer(vocab)
    files = stdlib.split_files(split, config.data.eval_fraction)
    if not files:
        raise ValueError(f"data.source=stdlib: the {split} split is empty; adjust data.eval_fraction={config.data.eval_fraction}")

    if config.data.piece_bytes > 0:
        pieces = stdlib.file_pieces(files, config.data.piece_bytes)
        return vocab, grain.MapDataset.source(pieces).map(lambda piece: text_document(tokenizer.encode(stdlib.read_piece(piece)), vocab))

    def load(rel_path: str):
        return text_document(tokenizer.encode(stdlib.read_file(rel_path)), vocab)

    return vocab, grain.MapDataset.source(files).map(load)


def eval_mask(n: int, eval_fraction: float) -> np.ndarray:
    """Deterministic per-index split: True for eval documents (a hash of the index).
    With eval_fraction > 0 and at least two documents, at least one is eval (the
    lowest hash), so a small set still has a held-out loss."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    u = (x >> np.uint64(11)).astype(np.float64) / 2.0**53
    mask = u < eval_fraction
    if eval_fraction > 0 and n > 1 and not mask.any():
        mask[np.argmin(u)] = True
    return mask


class _WithMaskKind:
    """Picklable `doc → doc` with the source's attention mask kind (a MASK_KINDS index)."""

    def __init__(self, kind: int):
        self.kind = kind

    def __call__(self, doc):
        return {**doc, "mask_kind": self.kind}


class _Take:
    """Picklable `i → docs[indices[i]]` for a MapDataset over an index list."""

    def __init__(self, docs):
        self.docs = docs

    def __call__(self, index):
        return self.docs[int(index)]


SKIP_HINT = "; `--set data.on_error=skip` drops bad records (counted, listed in WORKDIR/data_errors.jsonl)"


def shards_source(config, split: str):
    """Documents of a prepared folder; eval = a hashed `data.eval_fraction` of them."""
    from mmntp_jax.data.shards import ShardSet

    if not config.data.path:
        raise ValueError("data.source=shards needs data.path, the folder written by `mmntp data prepare`")
    shards = ShardSet(config.data.path)
    if shards.max_block > config.train.seq_len:
        raise ValueError(f"data.path={config.data.path} holds blocks of {shards.max_block} tokens, longer than "
                         f"train.seq_len={config.train.seq_len}; blocks are never split")
    docs = shards.documents(on_error=config.data.on_error, hint=SKIP_HINT if config.data.on_error == "stop" else "")
    mask = eval_mask(len(docs), config.data.eval_fraction)
    indices = np.flatnonzero(mask if split == "eval" else ~mask)
    if indices.size == 0:
        raise ValueError(f"data.source=shards: the {split} split of {config.data.path} is empty; adjust data.eval_fraction={config.data.eval_fraction}")
    return shards.vocab, grain.MapDataset.source(indices).map(_Take(docs))


def union_vocab(named_vocabs: list[tuple[str, Vocab]]) -> Vocab:
    """The vocabulary that extends every other one, or a ValueError naming the misfit."""
    widest = max((v for _, v in named_vocabs), key=lambda v: v.size)
    for name, vocab in named_vocabs:
        if not widest.extends(vocab):
            raise ValueError(f"data.mixture: source {name} has vocab ranges {vocab.ranges}, incompatible with {widest.ranges}")
    return widest


def mixture_source(config, split: str):
    entries = config.data.mixture
    if not entries:
        raise ValueError("data.source=mixture needs data.mixture, e.g. (('stdlib', 0.7), ('shards', 0.3, 'data/shapes'))")
    parts, weights = [], []
    for k, entry in enumerate(entries):
        if not 2 <= len(entry) <= 4 or entry[0] in ("mixture", None):
            raise ValueError(f"data.mixture[{k}]={entry!r}: expected (source, weight), (source, weight, path) or (source, weight, path, mask kind)")
        if len(entry) == 4 and entry[3] not in MASK_KINDS:
            raise ValueError(f"data.mixture[{k}]: mask kind {entry[3]!r} is not one of {', '.join(MASK_KINDS)}")
        name, weight = entry[0], float(entry[1])
        if weight <= 0:
            raise ValueError(f"data.mixture[{k}]: weight must be > 0, got {weight}")
        data = dataclasses.replace(config.data, source=name, mixture=(), path=entry[2] if len(entry) >= 3 and entry[2] else config.data.path)
        vocab, docs = get_source(name)(dataclasses.replace(config, data=data), split)
        if len(entry) == 4:
            docs = docs.map(_WithMaskKind(MASK_KINDS.index(entry[3])))
        if split == "train":
            docs = docs.shuffle(seed=config.train.seed + k).repeat()
        parts.append((f"{k} ({name})", vocab, docs))
        weights.append(weight)
    vocab = union_vocab([(name, v) for name, v, _ in parts])
    datasets = [d for _, _, d in parts]
    if split == "train":
        return vocab, grain.MapDataset.mix(datasets, weights)
    return vocab, grain.MapDataset.concatenate(datasets)


SOURCES: dict[str, Callable] = {
    "stdlib": stdlib_source,
    "shards": shards_source,
    "mixture": mixture_source,
    "markov": markov_source,
}


def get_source(name: str) -> Callable:
    if name not in SOURCES:
        raise ValueError(f"data.source={name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name]
