"""Chunks → fixed-length `PackedBatch` rows: best-fit-decreasing bin packing.

A chunk (see `chunking.py`) of `length` pairs fills `length` slots of a row of
T slots. `best_fit_decreasing(lengths, T)` sorts the chunks longest first and
puts each into the open row whose free space is smallest but still enough,
opening a new row when none fits. Free spaces are kept in a sorted list with a
bucket of rows per space, so each placement is a binary search: O(n log T).

`write_row(chunks, T)` lays chunks out along a row. Each chunk is its own
segment: `segment_ids` count 1, 2, … (0 = padding, only at the end),
`positions` restart at 0, `inputs`/`targets` are the chunk's pairs,
`modality` and `loss_mask` are those of the target token (padding: 0).
"""

from __future__ import annotations

import bisect

import numpy as np

ROW_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "modality")


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
