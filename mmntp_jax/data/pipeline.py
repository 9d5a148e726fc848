"""The input pipeline: source → shuffle → shard by process → pack → batch → prefetch.

`make_dataset(config, split)` returns a grain `IterDataset` of `PackedBatch`
dicts with the process-local batch `[B / process_count, T]`:

    source     `data.source` (see `sources.py`): a MapDataset of documents
    shuffle    train: a fresh permutation of the documents every epoch (seed
               `train.seed`), repeated forever; eval: in order, once
    dropout    train, `data.cfg_dropout` > 0: a document's context text before a
               trained media block is dropped with that probability
               (`documents.ContextDropout`, for classifier-free guidance)
    shard      process p of n takes documents p, p+n, p+2n, … of that stream, so
               the processes' documents are disjoint and together are the stream
    pack       `WindowPackIterDataset`: best-fit-decreasing over windows of
               `data.pack_window` rows, half of them carried over; documents are
               read by `data.num_workers` processes (0: in this one, with
               `data.read_threads` threads) and packed here
    batch      `B / process_count` rows; train drops the remainder (the stream is
               endless), eval fills its last batch with empty rows (`segment_ids`
               0, `loss_mask` 0), so no held-out row is left out
    prefetch   a background thread keeps 2 batches ready

Its iterator's `get_state()` (JSON) / `set_state()` are saved with each
checkpoint, so a resumed run sees exactly the batches an uninterrupted one
would have seen. The output does not depend on `data.num_workers`.

Bad records (`records.py`): with `data.on_error=stop` the first one raises
`DataError` naming shard, record and manifest line; with `skip` it is dropped
and counted in the returned data set's `data_errors` (`records.DataErrors`:
`.count`, `.write_report(path)`), which the training loop logs as
`data/skipped_records` and writes to WORKDIR/data_errors.jsonl. The count is
part of the iterator state, so it resumes with the run; it runs ahead of
training by what the packer and the prefetch have read.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from mmntp_jax.config import ConfigError
from mmntp_jax.data.documents import ContextDropout
from mmntp_jax.data.pack_iter import WindowPackIterDataset
from mmntp_jax.data.packing import empty_row
from mmntp_jax.data.records import DataErrors
from mmntp_jax.data.vocab import BEGIN_IDS
from mmntp_jax.data.sources import get_source

PREFETCH_BATCHES = 2


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def make_documents(config, split: str = "train", *, process_index: int = 0, process_count: int = 1):
    """(vocab, MapDataset of this process's documents): shuffled and endless for train."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    vocab, docs = get_source(config.data.source)(config, split)
    endless = len(docs) >= sys.maxsize
    if not endless and len(docs) < process_count:
        raise ValueError(f"data.source={config.data.source}: {len(docs)} {split} documents cannot be split over {process_count} processes")
    if split == "train" and not endless:
        docs = docs.shuffle(seed=config.train.seed).repeat()
    if split == "train" and config.data.cfg_dropout > 0:
        docs = docs.random_map(ContextDropout(config.data.cfg_dropout, BEGIN_IDS), seed=config.train.seed)
    if process_count > 1:
        docs = docs[process_index::process_count]
    return vocab, docs


def make_dataset(config, split: str = "train", *, process_index: int = 0, process_count: int = 1, batch_size: int | None = None,
                 prefetch: bool = True, errors: DataErrors | None = None):
    """PackedBatch stream for `split`; train repeats forever, eval is finite and fixed.
    Dropped records are counted in `errors` (a new `DataErrors` when None), which the
    returned data set also holds as `data_errors`."""
    try:
        vocab, docs = make_documents(config, split, process_index=process_index, process_count=process_count)
        vocab.check_model_vocab(config.model.vocab_size)
    except (ValueError, KeyError) as err:
        raise ConfigError(str(err)) from None
    window = max(2, config.data.pack_window)
    errors = errors if errors is not None else DataErrors()
    rows = WindowPackIterDataset(
        docs, config.train.seq_len, window_rows=window, carry_rows=window // 2, seed=config.train.seed,
        shuffle=split == "train", num_workers=config.data.num_workers,
        read_options=grain.ReadOptions(num_threads=config.data.read_threads, prefetch_buffer_size=32 if config.data.read_threads else 0),
        errors=errors,
    )
    batch = batch_size or local_batch_size(config.train.batch_size, process_count)
    if split == "train":
        batches = rows.batch(batch, drop_remainder=True)
    else:  # eval keeps every row: the last batch is filled with empty rows
        batches = rows.batch(batch, drop_remainder=False).map(FillBatch(batch))
    if prefetch:
        batches = ThreadPrefetch(batches)
    batches.data_errors = errors
    return vocab, batches


class FillBatch:
    """Pads a batch of fewer than `rows` rows with empty rows (`packing.empty_row`: padding, no loss)."""

    def __init__(self, rows: int):
        self.rows = rows

    def __call__(self, batch: dict) -> dict:
        missing = self.rows - len(batch["inputs"])
        if missing <= 0:
            return batch
        empty = empty_row(batch["inputs"].shape[1])
        return {k: np.concatenate([v, np.broadcast_to(empty[k].astype(v.dtype), (missing,) + v.shape[1:])]) for k, v in batch.items()}


class _PrefetchIterator(grain.experimental.ThreadPrefetchDatasetIterator):
    def __del__(self):  # grain's clean-up fails once the interpreter tears modules down
        if not sys.is_finalizing():
            self.close()


class ThreadPrefetch(grain.IterDataset):
    """grain's thread prefetch (state = that of the last batch handed out)."""

    def __init__(self, parent: grain.IterDataset, buffer: int = PREFETCH_BATCHES):
        super().__init__(parent)
        self._buffer = buffer

    def __iter__(self):
        return _PrefetchIterator(self._parent.__iter__(), self._buffer)
