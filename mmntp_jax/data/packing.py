"""Documents → fixed-length `PackedBatch` rows.

A document of n tokens gives n-1 (input, target) pairs. A row of length T holds
the pairs of one or more document chunks; a chunk that ends mid-document is
continued in the next row starting at its last input token's successor, so every
pair appears exactly once. Each chunk is its own segment: `segment_ids` count
1, 2, … along the row (0 = padding) and `positions` restart at 0.

`SequentialPackIterDataset` fills rows in stream order (no reordering). Its
state is (parent state before the current document, cursor inside it), so a
restored iterator yields exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

ROW_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask", "modality")


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


class _SequentialPackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._doc = None
        self._cursor = 0
        self._doc_parent_state = None

    def _pairs_left(self) -> int:
        return 0 if self._doc is None else len(self._doc["tokens"]) - 1 - self._cursor

    def _advance_document(self) -> None:
        self._doc_parent_state = self._parent.get_state()
        self._doc = next(self._parent)
        self._cursor = 0

    def __next__(self) -> dict[str, np.ndarray]:
        row, fill, segment = empty_row(self._seq_len), 0, 0
        while fill < self._seq_len:
            if self._pairs_left() <= 0:
                try:
                    self._advance_document()
                except StopIteration:
                    self._doc = None
                    if fill == 0:
                        raise
                    break
                continue
            length = min(self._pairs_left(), self._seq_len - fill)
            segment += 1
            write_chunk(row, self._doc, self._cursor, length, fill, segment)
            self._cursor += length
            fill += length
        return row

    def get_state(self) -> dict[str, Any]:
        if self._pairs_left() <= 0:
            return {"parent": self._parent.get_state(), "cursor": -1}
        return {"parent": self._doc_parent_state, "cursor": self._cursor}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc, self._cursor = None, 0
        if state["cursor"] >= 0:
            self._advance_document()
            self._cursor = state["cursor"]


class SequentialPackIterDataset(grain.IterDataset):
    """Packs a stream of documents into rows of `seq_len` pairs, in order."""

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        if seq_len <= 0:
            raise ValueError(f"seq_len must be > 0, got {seq_len}")
        self._seq_len = seq_len

    def __iter__(self) -> _SequentialPackIterator:
        return _SequentialPackIterator(self._parent.__iter__(), self._seq_len)
