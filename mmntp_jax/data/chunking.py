"""Block-aware cutting of long documents into chunks of at most T pairs.

A document of n tokens gives n-1 (input, target) pairs; pair j is
tokens[j] → tokens[j+1]. A chunk (start, length) holds pairs start … start+length-1,
i.e. inputs tokens[start : start+length] and targets one further. Consecutive
chunks share one token (the last target of one is the first input of the next),
so every pair lands in exactly one chunk.

A modality block `<boi> c1 … cN <eoi>` at tokens [b, e] is never split: a chunk
may start at token p only if no block has b < p ≤ e, so all of a block's tokens
are inputs of one chunk and all its codes and its end marker are targets of that
same chunk. Cuts happen at text boundaries (or right before a block's begin
marker). A block of more than T tokens cannot fit and is an error.
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS


class BlockTooLongError(ValueError):
    """A modality block has more tokens than a packed row holds."""


def block_spans(tokens) -> np.ndarray:
    """`[K, 2]` inclusive (begin, end) token indices of the blocks of a document."""
    tokens = np.asarray(tokens)
    begins = np.flatnonzero(np.isin(tokens, BEGIN_IDS))
    ends = np.flatnonzero(np.isin(tokens, END_IDS))
    ok = begins.size == ends.size and bool(np.all(begins < ends)) and bool(np.all(ends[:-1] < begins[1:]))
    if ok and begins.size:
        ok = bool(np.all(tokens[ends] == tokens[begins] + 1))  # <boi>/<eoi> etc. are consecutive ids
    if not ok:
        raise ValueError(f"malformed blocks: begin markers at {begins[:8].tolist()}, end markers at {ends[:8].tolist()}")
    return np.stack([begins, ends], axis=1) if begins.size else np.zeros((0, 2), np.int64)


def max_block_len(tokens) -> int:
    spans = block_spans(tokens)
    return int((spans[:, 1] - spans[:, 0] + 1).max()) if len(spans) else 0


def chunk_spans(tokens, seq_len: int, where: str = "document") -> list[tuple[int, int]]:
    """(start pair, n pairs) of each chunk; one chunk if the document fits in a row."""
    n_pairs = len(tokens) - 1
    if n_pairs <= 0:
        return []
    if n_pairs <= seq_len:
        return [(0, n_pairs)]
    spans = block_spans(tokens)
    if len(spans):
        longest = int((spans[:, 1] - spans[:, 0] + 1).max())
        if longest > seq_len:
            raise BlockTooLongError(f"{where}: a block of {longest} tokens is longer than seq_len={seq_len}; blocks are never split")
    begins, ends = spans[:, 0], spans[:, 1]
    chunks, start = [], 0
    while n_pairs - start > seq_len:
        cut = start + seq_len
        k = int(np.searchsorted(begins, cut, side="left")) - 1  # last block beginning before the cut
        if k >= 0 and ends[k] >= cut:
            cut = int(begins[k])
        chunks.append((start, cut - start))
        start = cut
    chunks.append((start, n_pairs - start))
    return chunks


def blocks_cut(tokens, chunks: list[tuple[int, int]]) -> int:
    """How many blocks straddle a chunk boundary (0 for `chunk_spans` output)."""
    spans = block_spans(tokens)
    starts = np.array([s for s, _ in chunks[1:]], np.int64)
    if not len(spans) or not starts.size:
        return 0
    inside = (starts[None, :] > spans[:, :1]) & (starts[None, :] <= spans[:, 1:])
    return int(inside.any(axis=1).sum())
