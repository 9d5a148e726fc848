"""Documents → fixed-length `PackedBatch` rows: block-aware cutting, best-fit-decreasing packing.

Cutting. A document of n tokens gives n-1 (input, target) pairs; pair j is
tokens[j] → tokens[j+1]. A chunk (start, length) holds pairs start … start+length-1,
i.e. inputs tokens[start : start+length] and targets one further; consecutive
chunks share one token, so every pair lands in exactly one chunk. A modality
block `<boi> c1 … cN <eoi>` at tokens [b, e] is never split: a chunk may start at
token p only if no block has b < p ≤ e, so all of a block's tokens are inputs of
one chunk and all its codes and its end marker are targets of that same chunk.
Cuts happen at text boundaries (or right before a block's begin marker); a block
of more than T tokens cannot fit and is an error.

Packing. `best_fit_decreasing(lengths, T)` sorts the chunks longest first and
puts each into the open row whose free space is smallest but still enough,
opening a new row when none fits. Free spaces are kept in a sorted list with a
bucket of rows per space, so each placement is a binary search: O(n log T).

Rows. `write_row(chunks, docs, T)` lays chunks out along a row. Each chunk is its
own segment: `segment_ids` count 1, 2, … (0 = padding, only at the end),
`positions` restart at 0, `inputs`/`targets` are the chunk's pairs, `modality`
and `loss_mask` are those of the target token (padding: 0). `block_ids` number
the media blocks of the row 1, 2, … on their input tokens, markers included
(0 elsewhere; see `block_ids`); a chunk's last block may lack its end marker,
which is then only a target. `mask_kind` is the document's own attention mask
kind (an index into `config.MASK_KINDS`, set per mixture source) or -1, which
means `model.attention_mask`.
"""

from __future__ import annotations

import bisect

import numpy as np

from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS

ROW_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "modality", "block_ids", "mask_kind")


_MARKER_LO, _MARKER_HI = min(BEGIN_IDS + END_IDS), max(BEGIN_IDS + END_IDS)
_MARKER_KIND = np.zeros(_MARKER_HI + 1, np.int8)  # 1 begin marker, 2 end marker, 0 other id
_MARKER_KIND[list(BEGIN_IDS)], _MARKER_KIND[list(END_IDS)] = 1, 2


class BlockTooLongError(ValueError):
    """A modality block has more tokens than a packed row holds."""


def block_spans(tokens) -> np.ndarray:
    """`[K, 2]` inclusive (begin, end) token indices of the blocks of a document."""
    tokens = np.asarray(tokens)
    near = np.flatnonzero((tokens >= _MARKER_LO) & (tokens <= _MARKER_HI))  # markers are a few small ids: look only there
    if not near.size:
        return np.zeros((0, 2), np.int64)
    kind = _MARKER_KIND[tokens[near]]
    begins, ends = near[kind == 1], near[kind == 2]
    ok = begins.size == ends.size and bool(np.all(begins < ends)) and bool(np.all(ends[:-1] < begins[1:]))
    if ok and begins.size:
        ok = bool(np.all(tokens[ends] == tokens[begins] + 1))  # <boi>/<eoi> etc. are consecutive ids
    if not ok:
        raise ValueError(f"malformed blocks: begin markers at {begins[:8].tolist()}, end markers at {ends[:8].tolist()}")
    return np.stack([begins, ends], axis=1) if begins.size else np.zeros((0, 2), np.int64)


def block_ids(tokens, first=0, xp=np):
    """Of each token of one segment: first+1, first+2, … per media block, markers
    included, 0 elsewhere; a block whose end marker is missing runs to the end.
    `xp` is numpy (packing) or jax.numpy (generation)."""
    begin = xp.isin(tokens, xp.asarray(BEGIN_IDS))
    end = xp.isin(tokens, xp.asarray(END_IDS)).astype(xp.int32)
    count = xp.cumsum(begin.astype(xp.int32), axis=-1)
    inside = count - (xp.cumsum(end, axis=-1) - end) > 0
    return xp.where(inside, first + count, 0).astype(xp.int32)


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


def best_fit_decreasing(lengths, capacity: int) -> tuple[list[list[int]], list[int]]:
    """Packs items of `lengths` (each ≤ capacity) into bins; returns (item ids per bin, fill per bin).

    Deterministic: ties in length keep input order; among rows with equal free
    space the most recently touched is used.
    """
    lengths = [int(x) for x in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    spaces: list[int] = []  # distinct free spaces of open bins, ascending
    buckets: dict[int, list[int]] = {}  # free space → bins with that space
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        size = lengths[i]
        if size > capacity or size <= 0:
            raise ValueError(f"item {i} has length {size}; expected 1 … {capacity}")
        j = bisect.bisect_left(spaces, size)
        if j < len(spaces):
            space = spaces[j]
            bucket = buckets[space]
            b = bucket.pop()
            if not bucket:
                del buckets[space]
                del spaces[j]
        else:
            b, space = len(bins), capacity
            bins.append([])
            fill.append(0)
        bins[b].append(i)
        fill[b] += size
        left = space - size
        if left > 0:
            if left in buckets:
                buckets[left].append(b)
            else:
                buckets[left] = [b]
                bisect.insort(spaces, left)
    return bins, fill


def empty_row(seq_len: int) -> dict[str, np.ndarray]:
    row = {name: np.zeros(seq_len, np.int32) for name in ROW_FIELDS}
    row["loss_mask"] = np.zeros(seq_len, np.float32)
    row["mask_kind"][:] = -1
    return row


def write_chunk(row: dict[str, np.ndarray], doc: dict[str, np.ndarray], start: int, length: int, at: int, segment: int) -> None:
    """Writes pairs start..start+length-1 of `doc` into `row` at offset `at`."""
    tokens = doc["tokens"]
    dst = slice(at, at + length)
    row["inputs"][dst] = tokens[start : start + length]
    row["targets"][dst] = tokens[start + 1 : start + length + 1]
    row["modality"][dst] = doc["modality"][start + 1 : start + length + 1]
    row["loss_mask"][dst] = doc["loss"][start + 1 : start + length + 1]
    row["segment_ids"][dst] = segment
    row["positions"][dst] = np.arange(length, dtype=np.int32)
    row["block_ids"][dst] = block_ids(row["inputs"][dst], first=int(row["block_ids"][:at].max(initial=0)))
    row["mask_kind"][dst] = doc.get("mask_kind", -1)


def write_row(chunks, docs, seq_len: int) -> dict[str, np.ndarray]:
    """A row from [(doc key, start, length), …]; `docs[key]` is the document."""
    row, at = empty_row(seq_len), 0
    for segment, (key, start, length) in enumerate(chunks, start=1):
        if at + length > seq_len:
            raise ValueError(f"chunks of {at + length} pairs overflow a row of {seq_len}")
        write_chunk(row, docs[key], start, length, at, segment)
        at += length
    return row


def padding_fraction(rows) -> float:
    """Share of row slots that hold no pair (segment id 0)."""
    total = sum(r["segment_ids"].size for r in rows)
    return float(sum(int((r["segment_ids"] == 0).sum()) for r in rows) / max(total, 1))
