"""Training batches whose order does not depend on the process count: S data streams, each process takes its rows.

The training data of a run is `S` streams. Stream `s` of `S` is what
`make_dataset(config, "train", process_index=s, process_count=S)` yields:
documents `s, s+S, s+2S, …` of the shuffled document stream, packed, in batches
of `B / S` rows. The global batch of step k is the concatenation of the streams'
k-th batches, stream 0's rows first. `S` is the process count of the run's first
segment (so a run that never changes its process count reads each document on
exactly one host, as before) and it is kept in every checkpoint.

Process `p` of `n` trains on rows `[p·B/n, (p+1)·B/n)` of each global batch (the
rows `shard_batch` places on its devices): it runs the streams that overlap
those rows and slices them. With `n == S` that is stream `p` alone; with
`n < S` a process runs several streams; with `n > S` several processes run the
same stream and each keeps its own rows (that stream's documents are then read
on each of them). So a run resumed with any process count that divides
`train.batch_size` trains on exactly the global batches the uninterrupted run
would have, bitwise.

Checkpoint state: each process's `checkpoints/<step>/data/process_<i>-of-<n>.json`
holds `{"streams": S, "stream_states": {"<s>": …}}` for the streams it runs. On a
restore with the same count a process reads its own file (grain's rule); with
another count `ProcessStatesHandler` merges all files of the checkpoint. Files
written before streams existed hold one stream's state each (stream `i` of `n`),
so those checkpoints resume with another process count too.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import grain
import numpy as np
import orbax.checkpoint as ocp

from mmntp_jax.config import ConfigError
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.data.records import DataErrors

STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def stream_slices(batch_size: int, streams: int, process_index: int, process_count: int) -> list[tuple[int, int, int]]:
    """(stream, first row, end row) within each stream's batch that process `process_index` of `process_count` trains on."""
    for count, what in ((process_count, "processes"), (streams, "data streams of the checkpoint")):
        if count < 1 or batch_size % count:
            raise ConfigError(f"train.batch_size={batch_size} is not divisible by the {count} {what}")
    per_stream, per_process = batch_size // streams, batch_size // process_count
    lo, hi = process_index * per_process, (process_index + 1) * per_process
    out = []
    for s in range(streams):
        a, b = max(lo, s * per_stream), min(hi, (s + 1) * per_stream)
        if a < b:
            out.append((s, a - s * per_stream, b - s * per_stream))
    return out


class GlobalBatches:
    """This process's rows of the run's global batches; `get_state`/`set_state` as JSON (see module doc)."""

    def __init__(self, config, *, process_index: int = 0, process_count: int = 1, streams: int | None = None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
        self.config, self.process_index, self.process_count = config, process_index, process_count
        self.vocab = None
        self._parts: list = []
        self._build(streams or process_count)

    def _build(self, streams: int) -> None:
        self.close()
        self.streams = int(streams)
        parts, errors = [], []
        for s, start, stop in stream_slices(self.config.train.batch_size, self.streams, self.process_index, self.process_count):
            vocab, dataset = make_dataset(self.config, "train", process_index=s, process_count=self.streams)
            self.vocab = self.vocab or vocab
            parts.append((s, iter(dataset), start, stop))
            errors.append(dataset.data_errors)
        self._parts = parts
        self.data_errors = DataErrors(parts=errors)  # records its streams dropped (data.on_error=skip)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        pieces = []
        for _, iterator, start, stop in self._parts:
            batch = next(iterator)
            whole = start == 0 and stop == len(batch["inputs"])
            pieces.append(batch if whole else {k: v[start:stop] for k, v in batch.items()})
        if len(pieces) == 1:
            return pieces[0]
        return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}

    def get_state(self) -> dict:
        return {"streams": self.streams, "stream_states": {str(s): iterator.get_state() for s, iterator, _, _ in self._parts}}

    def set_state(self, state: dict) -> None:
        if "stream_states" not in state:  # a file written before streams: this process's stream of as many
            state = {"streams": self.process_count, "stream_states": {str(self.process_index): state}}
        streams = int(state["streams"])
        if streams != self.streams:
            self._build(streams)
        saved = state["stream_states"]
        absent = [s for s, _, _, _ in self._parts if str(s) not in saved]
        if absent:
            raise ValueError(f"the data iterator state holds streams {sorted(saved, key=int)} of {streams}, not {absent}")
        for s, iterator, _, _ in self._parts:
            iterator.set_state(saved[str(s)])

    def close(self) -> None:
        for _, iterator, _, _ in self._parts:
            if hasattr(iterator, "close"):
                iterator.close()
        self._parts = []


def train_batches(config):
    """(vocab, GlobalBatches) for this JAX process: what the training loop iterates."""
    import jax

    batches = GlobalBatches(config, process_index=jax.process_index(), process_count=jax.process_count())
    return batches.vocab, batches


def merge_process_states(directory) -> dict:
    """All streams' states from the `process_<i>-of-<n>.json` files of one checkpoint's `data` folder.

    ValueError (the checkpoint counts as unreadable) when files are missing,
    unparseable or disagree about the number of streams.
    """
    found: dict[int, object] = {}
    counts = set()
    for path in directory.iterdir():
        match = STATE_FILE.fullmatch(path.name)
        if match:
            found[int(match[1])] = path
            counts.add(int(match[2]))
    if len(counts) != 1:
        raise ValueError(f"{directory}: expected the iterator states of one process count, found counts {sorted(counts) or 'none'}")
    count = counts.pop()
    missing = [f"process_{i}-of-{count}.json" for i in range(count) if i not in found]
    if missing:
        raise ValueError(f"{directory}: missing {', '.join(missing)}")
    streams, states = None, {}
    for index in range(count):
        state = json.loads(found[index].read_text())
        if "stream_states" not in state:
            state = {"streams": count, "stream_states": {str(index): state}}
        if streams is not None and int(state["streams"]) != streams:
            raise ValueError(f"{found[index]}: {state['streams']} data streams, other processes saved {streams}")
        streams = int(state["streams"])
        states.update(state["stream_states"])
    absent = [s for s in range(streams) if str(s) not in states]
    if absent:
        raise ValueError(f"{directory}: no process saved the state of data streams {absent}")
    return {"streams": streams, "stream_states": {str(s): states[str(s)] for s in range(streams)}}


class ProcessStatesHandler(grain.checkpoint.CheckpointHandler):
    """grain's iterator-state handler (same files), except that a restore with another process count merges every process's file.

    orbax picks a handler by the class of its arguments: save with
    `DataStateSave(iterator)`, restore with `DataStateRestore(iterator)`.
    """

    def restore(self, directory, item=None, args=None):
        import jax

        item = item or args.item
        own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        state = json.loads(own.read_text()) if own.exists() else merge_process_states(directory)
        item.set_state(state if isinstance(item, grain.DatasetIterator) else json.dumps(state).encode())
        if hasattr(item, "start_prefetch"):
            item.start_prefetch()
        return item


@ocp.args.register_with_handler(ProcessStatesHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessStatesHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any
