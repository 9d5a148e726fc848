"""The packing stage of the grain pipeline: windows of documents → packed rows.

`WindowPackIterDataset(docs, seq_len)` reads a `MapDataset` of documents in
order and packs them a window at a time:

  1. read documents until the window holds `window_rows × T` pairs, cutting each
     into block-aware chunks (`packing.chunk_spans`), after the chunks carried over;
  2. pack all chunks best-fit-decreasing (`packing.py`);
  3. hold back the `carry_rows` least-filled rows that are not full: their chunks
     are carried into the next window, where more chunks fill them; emit the
     rest in a shuffled order (seeded by `seed` and the window number).

At the end of a finite stream the carried rows are emitted too, so every pair
of every document appears in exactly one row.

A *dropped document* (a bad record read with `data.on_error=skip`, see
`records.py`) holds no tokens and an `error` entry: it takes its index in the
stream like any document and is handed to the data set's `errors`
(`records.DataErrors`), which counts and lists it.

State (`get_state`) is small JSON: where the current window started, the chunks
carried into it (as (document index, start, length)), how many of its rows
were emitted and how many documents were dropped before it. `set_state`
re-reads the window's documents (and the carried ones, by index) and packs it
again, which gives the same rows (and count), so a restored iterator continues
exactly as an uninterrupted one. The reading may run in `num_workers` processes
(grain `mp_prefetch`): they only read and decode documents, in order, and
packing stays in this process, so rows do not depend on the worker count.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from mmntp_jax.data.packing import best_fit_decreasing, chunk_spans, write_row
from mmntp_jax.data.records import DataErrors


def ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; mark them parsed when the program did not."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _WindowPackIterator(grain.DatasetIterator):
    def __init__(self, ds: "WindowPackIterDataset"):
        super().__init__()
        self._ds = ds
        self._stream = None
        self._reset(window_start=0, carry=[], window=0, skipped=0)

    # -- reading -----------------------------------------------------------------
    def _open_stream(self, start: int) -> None:
        self._close_stream()
        docs = self._ds.docs
        part = docs if start == 0 else docs[start:]
        stream = part.to_iter_dataset(self._ds.read_options)
        if self._ds.num_workers > 0:
            ensure_absl_flags()
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._ds.num_workers))
        self._stream = iter(stream)

    def _close_stream(self) -> None:
        if self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()
        self._stream = None

    def _reset(self, window_start: int, carry: list, window: int, skipped: int | None) -> None:
        if skipped is not None:
            self._ds.errors.restore(skipped)
        self._next_doc = window_start
        self._carry = [tuple(c) for c in carry]
        self._window = window
        self._cache: dict[int, dict] = {}
        for key, _, _ in self._carry:
            self._cache[key] = self._ds.docs[key]
        self._rows: list[list[tuple[int, int, int]]] = []
        self._emitted = 0
        self._exhausted = False
        self._state = {"window_start": window_start, "carry": [list(c) for c in self._carry], "window": window, "skipped": self._ds.errors.count}
        self._open_stream(window_start)

    # -- packing ----------------------------------------------------------------
    def _pack_window(self) -> None:
        seq_len, budget = self._ds.seq_len, self._ds.window_rows * self._ds.seq_len
        self._state = {"window_start": self._next_doc, "carry": [list(c) for c in self._carry], "window": self._window,
                       "skipped": self._ds.errors.count}
        items = list(self._carry)
        total = sum(length for _, _, length in items)
        while total < budget:
            try:
                doc = next(self._stream)
            except StopIteration:
                self._exhausted = True
                break
            key = self._next_doc
            self._next_doc += 1
            if "error" in doc:
                self._ds.errors.record(doc["error"])
                continue
            chunks = chunk_spans(doc["tokens"], seq_len, where=f"document {key} of the stream")
            if chunks:
                self._cache[key] = doc
                items.extend((key, start, length) for start, length in chunks)
                total += sum(length for _, length in chunks)
        bins, fill = best_fit_decreasing([length for _, _, length in items], seq_len)
        keep = list(range(len(bins)))
        carry = []
        if not self._exhausted:
            open_bins = sorted((f, b) for b, f in enumerate(fill) if f < seq_len)[: self._ds.carry_rows]
            held = {b for _, b in open_bins}
            keep = [b for b in keep if b not in held]
            carry = [items[i] for _, b in open_bins for i in bins[b]]
        order = np.random.default_rng([self._ds.seed, self._window]).permutation(len(keep)) if self._ds.shuffle else range(len(keep))
        self._rows = [[items[i] for i in bins[keep[j]]] for j in order]
        self._emitted = 0
        self._carry = carry
        self._window += 1
        live = {key for row in self._rows for key, _, _ in row} | {key for key, _, _ in carry}
        self._cache = {key: doc for key, doc in self._cache.items() if key in live}

    def __next__(self) -> dict[str, np.ndarray]:
        while self._emitted >= len(self._rows):
            if self._exhausted:
                raise StopIteration
            self._pack_window()
        row = self._rows[self._emitted]
        self._emitted += 1
        return write_row(row, self._cache, self._ds.seq_len)

    # -- checkpointing ------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {**self._state, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._reset(int(state["window_start"]), state["carry"], int(state["window"]), state.get("skipped"))
        emitted = int(state["emitted"])
        if emitted:
            self._pack_window()
            if emitted > len(self._rows):
                raise ValueError(f"packing state emitted={emitted} but the window has {len(self._rows)} rows; was the data or seq_len changed?")
            self._emitted = emitted

    def close(self) -> None:
        self._close_stream()


class WindowPackIterDataset(grain.IterDataset):
    """Packs a MapDataset of documents into rows of `seq_len` pairs (see module doc)."""

    def __init__(self, docs: grain.MapDataset, seq_len: int, *, window_rows: int = 64, carry_rows: int = 4, seed: int = 0,
                 shuffle: bool = True, read_options: grain.ReadOptions | None = None, num_workers: int = 0,
                 errors: DataErrors | None = None):
        super().__init__(docs)
        if seq_len <= 0:
            raise ValueError(f"seq_len must be > 0, got {seq_len}")
        if window_rows < 1 or not 0 <= carry_rows < window_rows:
            raise ValueError(f"need window_rows ≥ 1 and 0 ≤ carry_rows < window_rows; got {window_rows}, {carry_rows}")
        self.docs, self.seq_len, self.seed, self.shuffle = docs, int(seq_len), int(seed), bool(shuffle)
        self.window_rows, self.carry_rows, self.num_workers = int(window_rows), int(carry_rows), int(num_workers)
        self.read_options = read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        self.errors = errors if errors is not None else DataErrors()

    def __iter__(self) -> _WindowPackIterator:
        return _WindowPackIterator(self)
