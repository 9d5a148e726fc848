"""The input pipeline: source → shard by process → shuffle → pack → batch.

`make_dataset(config, split)` returns a grain `IterDataset` of `PackedBatch`
dicts with the process-local batch `[B / process_count, T]`; its iterator's
`get_state()` / `set_state()` are saved with each checkpoint, so a resumed run
sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import grain

from mmntp_jax.data.packing import SequentialPackIterDataset
from mmntp_jax.data.sources import get_source


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def make_dataset(config, split: str = "train", *, process_index: int = 0, process_count: int = 1, batch_size: int | None = None):
    """PackedBatch stream for `split`; train repeats forever, eval is finite and fixed."""
    vocab, docs = get_source(config.data.source)(config, split)
    if len(docs) < process_count:
        raise ValueError(f"data.source={config.data.source}: {len(docs)} {split} documents cannot be split over {process_count} processes")
    docs = docs[process_index::process_count]
    if split == "train":
        docs = docs.shuffle(seed=config.train.seed).repeat()
    read = grain.ReadOptions(num_threads=config.data.read_threads, prefetch_buffer_size=32)
    rows = SequentialPackIterDataset(docs.to_iter_dataset(read), config.train.seq_len)
    batch = batch_size or local_batch_size(config.train.batch_size, process_count)
    return vocab, rows.batch(batch, drop_remainder=True)


def source_vocab(config):
    """The vocabulary of the configured source (without building a pipeline)."""
    vocab, _ = get_source(config.data.source)(config, "train")
    return vocab
