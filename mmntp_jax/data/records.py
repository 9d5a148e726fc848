"""Shard records read with validation; a bad one is named (shard, record, manifest line), then stopped on or counted.

`RecordReader(shards, on_error)` gives random access to a prepared data set's
documents (`.dataset()`: as a grain MapDataset). A record (layout in
`shards.py`) is accepted only if

  - its byte size is exactly what its header gives, 8 + n × (itemsize + 2) + m:
    a truncated or padded record, or one written with another token dtype, fails;
  - n is at most the shard's longest document (`max_len` in the index, when recorded);
  - every token id is in [0, vocab.size), every modality id names a modality,
    every loss flag is 0 or 1, and the block markers pair up.

That costs a table lookup per token and a few C-speed scans per record
(`RecordCheck`; figures in docs/reliability.md). When the reader opens:
`token_dtype` must be one of `TOKEN_DTYPES` and hold every id of the vocabulary
(a uint16 data set of more than 65 536 ids is refused); the first records must
have the sizes the declared dtype gives (records that fit another dtype are
refused, naming the field); each shard file must open as ArrayRecord and hold
as many records as the index says.

A failure names the shard file, the record (its index in the shard) and the
document's manifest line: from the shard's statistics (`lines`, written by
`mmntp data prepare`), else from the record's own metadata, else "manifest
line unknown" (sets written by `write_documents`, or older shards whose record
is unreadable).

`on_error`:
    stop   raise `DataError` (a `RunError`: the CLI prints it as one line and
           exits 2); a shard file that cannot be read is refused at open.
    skip   return a *dropped document* in its place: empty arrays plus `error`,
           the entry (shard, record, manifest, line, reason). The pipeline's
           packer hands it to a `DataErrors`, which counts it and lists it in
           the workdir's report (`REPORT_FILE`); nothing else sees it. Every
           record of an unreadable shard is such a document.

Whether a record is dropped depends only on its bytes and the vocabulary, so a
resumed run drops the same records as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
from pathlib import Path

import numpy as np

from mmntp_jax.data.shards import HEADER
from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS, MODALITIES
from mmntp_jax.errors import RunError

TOKEN_DTYPES = {"uint16": 2**16, "int32": 2**31}  # declared dtype → how many ids it holds
ON_ERROR = ("stop", "skip")
REPORT_FILE = "data_errors.jsonl"
PROBE_SHARDS = 8  # shards whose first record is checked against token_dtype at open


class DataError(RunError):
    """A shard or record cannot be used; the message names the shard file, record and manifest line."""


class RecordFault(ValueError):
    """Why one record is invalid (the reader adds where it is)."""


def check_token_dtype(token_dtype, vocab_size: int, where: str) -> None:
    """Refuses a declared `token_dtype` that is unknown or cannot hold every id of the vocabulary."""
    if token_dtype not in TOKEN_DTYPES:
        raise DataError(f"{where}: token_dtype={token_dtype!r} is not one of {', '.join(TOKEN_DTYPES)}")
    if vocab_size > TOKEN_DTYPES[token_dtype]:
        raise DataError(f"{where}: token_dtype={token_dtype!r} holds {TOKEN_DTYPES[token_dtype]} ids but the vocabulary has {vocab_size}; "
                        "the records cannot hold its ids (prepare the data set again)")


def expected_size(data: bytes, itemsize: int) -> int | None:
    """The byte size a record's header gives for tokens of `itemsize` bytes (None: no header)."""
    if len(data) < HEADER.size:
        return None
    n, m = HEADER.unpack_from(data, 0)
    return HEADER.size + n * (itemsize + 2) + m


PLAIN, BEGIN, END, OUTSIDE = 0, 1, 2, 3  # what an id is, per `RecordCheck.table`
BEGIN_SET, END_SET = frozenset(BEGIN_IDS), frozenset(END_IDS)
MODALITY_BYTES, LOSS_BYTES = bytes(range(len(MODALITIES))), b"\x00\x01"  # the valid values of those bytes


class RecordCheck:
    """Decodes one record and checks it (see module doc). One table lookup per token
    sorts the ids into plain, block begin, block end and outside the vocabulary, so a
    text record costs a gather and three `bytes.translate` beyond decoding."""

    def __init__(self, token_dtype: str, vocab_size: int):
        self.dtype = np.dtype(token_dtype).newbyteorder("<")
        self.vocab_size = int(vocab_size)
        self.bounded = self.dtype.itemsize == 2  # every uint16 id indexes the table
        table = np.full(2**16 if self.bounded else self.vocab_size, OUTSIDE, np.int8)
        table[: self.vocab_size] = PLAIN
        table[list(BEGIN_IDS)], table[list(END_IDS)] = BEGIN, END
        self.table = table

    def __call__(self, data: bytes, max_len: int | None = None, with_meta: bool = False) -> dict:
        size = len(data)
        if size < HEADER.size:
            raise RecordFault(f"record is {size} bytes, shorter than its {HEADER.size}-byte header (truncated)")
        n, m = HEADER.unpack_from(data, 0)
        want = HEADER.size + n * (self.dtype.itemsize + 2) + m
        if size != want:
            what = "truncated" if size < want else "longer than its header says"
            raise RecordFault(f"record is {size} bytes but its header (n={n} tokens of token_dtype={self.dtype.name}, m={m} meta bytes) gives {want}: {what}")
        if max_len is not None and n > max_len:
            raise RecordFault(f"record holds {n} tokens, more than the shard's longest document per the index ({max_len})")
        at = HEADER.size + n * self.dtype.itemsize
        tokens = np.frombuffer(data, self.dtype, n, HEADER.size)
        modality, loss = np.frombuffer(data, np.uint8, n, at), np.frombuffer(data, np.uint8, n, at + n)
        if n:
            if not self.bounded and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
                self._outside(tokens, np.flatnonzero((tokens < 0) | (tokens >= self.vocab_size)))
            codes = self.table.take(tokens)
            if codes.tobytes().translate(None, b"\x00"):  # any id that is not plain (C speed, no numpy call)
                self._check_marks(tokens, codes.nonzero()[0])
            if data[at : at + n].translate(None, MODALITY_BYTES):  # bytes.translate: C speed, no numpy call
                pos = int(np.argmax(modality >= len(MODALITIES)))
                raise RecordFault(f"modality id {int(modality[pos])} at position {pos} is not one of 0…{len(MODALITIES) - 1} ({', '.join(MODALITIES)})")
            if data[at + n : at + 2 * n].translate(None, LOSS_BYTES):
                pos = int(np.argmax(loss > 1))
                raise RecordFault(f"loss flag {int(loss[pos])} at position {pos} is not 0 or 1")
        doc = {"tokens": tokens.astype(np.int32), "modality": modality, "loss": loss}
        if with_meta:
            try:
                doc["meta"] = json.loads(data[at + 2 * n :]) if m else {}
            except (ValueError, UnicodeDecodeError):
                raise RecordFault(f"its {m} metadata bytes are not JSON") from None
        return doc

    def _outside(self, tokens, bad) -> None:
        raise RecordFault(f"token id {int(tokens[bad[0]])} at position {int(bad[0])} is outside the vocabulary [0, {self.vocab_size})"
                          + (f" ({bad.size} such ids)" if bad.size > 1 else ""))

    def _check_marks(self, tokens, marks) -> None:
        """Ids outside the vocabulary, or block markers that do not pair up as `<boi> … <eoi>`."""
        opened = None  # a handful of markers per document: plain Python is cheapest
        for token in tokens[marks].tolist():
            if token in BEGIN_SET and opened is None:
                opened = token
            elif token in END_SET and opened == token - 1:
                opened = None
            else:
                break
        else:
            if opened is None:
                return
        kinds = self.table.take(tokens[marks])
        if (kinds == OUTSIDE).any():
            self._outside(tokens, marks[kinds == OUTSIDE])
        begins, ends = marks[kinds == BEGIN], marks[kinds == END]
        raise RecordFault(f"malformed blocks: begin markers at {begins[:8].tolist()}, end markers at {ends[:8].tolist()}")


def meta_line(data: bytes | None):
    """The manifest line a record's own metadata names, if it can be read."""
    try:
        _, m = HEADER.unpack_from(data, 0)
        line = json.loads(data[len(data) - m :]).get("line") if m else None
        return line if isinstance(line, int) else None
    except Exception:  # a damaged record: its line is unknown
        return None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def dropped_document(entry: dict) -> dict:
    """The stand-in for a record dropped under on_error=skip: no tokens, and why."""
    empty = np.zeros(0, np.uint8)
    return {"tokens": np.zeros(0, np.int32), "modality": empty, "loss": empty, "error": entry}


def describe(entry: dict) -> str:
    """`SHARD record R (MANIFEST line L): REASON`, one line."""
    line = f"line {entry['line']}" if entry.get("line") is not None else "manifest line unknown"
    source = f"{entry['manifest']} {line}" if entry.get("manifest") and entry.get("line") is not None else line
    return f"{entry['shard']} record {entry['record']} ({source}): {entry['reason']}"


class RecordReader:
    """Validated random access to the documents of a `ShardSet`, in manifest order (see module doc)."""

    def __init__(self, shards, *, on_error: str = "stop", with_meta: bool = False, hint: str = ""):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r} is not one of {', '.join(ON_ERROR)}")
        self.on_error, self.with_meta, self.hint = on_error, with_meta, hint
        self.index_path = str(shards.folder / "dataset.json")
        self.manifest = shards.info.get("manifest")
        self.vocab_size = shards.vocab.size
        check_token_dtype(shards.token_dtype, self.vocab_size, self.index_path)
        self.check = RecordCheck(shards.token_dtype, self.vocab_size)
        self.dtype = self.check.dtype
        entries = [s for s in shards.info["shards"] if s["docs"] > 0]
        self.paths = [str(shards.folder / s["path"]) for s in entries]
        self.counts = [int(s["docs"]) for s in entries]
        self.max_lens = [s.get("max_len") for s in entries]
        self.starts = [0, *itertools.accumulate(self.counts)]
        self._lines: dict[int, list | None] = {}
        self._lock = threading.Lock()
        self.sources, self.faults = [], {}
        for k, path in enumerate(self.paths):
            source, fault = open_shard(path, self.counts[k])
            self.sources.append(source)
            if fault:
                self.faults[k] = fault
                if on_error == "stop":
                    raise DataError(self._shard_message(k, fault) + hint)
        self._probe_dtype()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        return self.decode(index, self.read(index))

    def dataset(self):
        """A grain MapDataset of the documents: a source stage of raw records (bytes, which
        grain's per-read metrics size cheaply), then `decode` with each record's index."""
        import grain

        return grain.MapDataset.source(RawRecords(self)).map_with_index(self.decode)

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, record in it) of document `index`."""
        index = int(index)
        if not 0 <= index < self.starts[-1]:
            raise IndexError(f"document {index} is not in [0, {self.starts[-1]})")
        k = bisect.bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def read(self, index: int) -> bytes:
        """The bytes of document `index`'s record (empty for a record of an unreadable shard)."""
        k, record = self.locate(index)
        source = self.sources[k]
        return b"" if source is None else source[record]

    def decode(self, index: int, data: bytes) -> dict:
        """The checked document of record bytes `data` read for document `index`."""
        k, record = self.locate(index)
        if self.sources[k] is None:
            return self._fault(k, record, f"the shard file cannot be read: {self.faults[k]}", None)
        try:
            return self.check(data, self.max_lens[k], self.with_meta)
        except RecordFault as fault:
            return self._fault(k, record, str(fault), data)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    # -- naming a failure ---------------------------------------------------------------
    def _fault(self, k: int, record: int, reason: str, data: bytes | None) -> dict:
        entry = {"shard": self.paths[k], "record": record, "manifest": self.manifest, "line": self.line(k, record, data), "reason": reason}
        if self.on_error == "stop":
            raise DataError(describe(entry) + self.hint)
        return dropped_document(entry)

    def line(self, k: int, record: int, data: bytes | None = None):
        """The manifest line of record `record` of shard `k` (None when unknown)."""
        lines = self.shard_lines(k)
        return lines[record] if lines is not None else meta_line(data)

    def shard_lines(self, k: int) -> list | None:
        """The manifest line of each record of shard k, from its statistics (None for older shards)."""
        with self._lock:
            if k not in self._lines:
                try:
                    lines = json.loads(Path(self.paths[k]).with_suffix(".json").read_text()).get("lines")
                except (OSError, ValueError):
                    lines = None
                self._lines[k] = lines if isinstance(lines, list) and len(lines) == self.counts[k] else None
            return self._lines[k]

    def _shard_message(self, k: int, fault: str) -> str:
        lines = self.shard_lines(k)
        span = f"records 0–{self.counts[k] - 1}"
        if lines is not None:
            span += f", {self.manifest or 'manifest'} lines {lines[0]}–{lines[-1]}"
        return f"{self.paths[k]} ({span}): {fault}"

    def _probe_dtype(self) -> None:
        """Refuses a declared token_dtype that the first records of the shards do not fit but another does."""
        declared, samples = self.dtype.name, []
        for k, source in enumerate(self.sources):
            if source is not None and len(samples) < PROBE_SHARDS:
                samples.append((k, source[0]))
        if not samples or any(expected_size(d, self.dtype.itemsize) == len(d) for _, d in samples):
            return
        for other in TOKEN_DTYPES:
            k, data = samples[0]
            if other != declared and expected_size(data, np.dtype(other).itemsize) == len(data):
                raise DataError(f"{self.index_path}: token_dtype={declared!r} does not match the records: {self.paths[k]} record 0 "
                                f"is {len(data)} bytes, which fits token_dtype={other!r}; fix the token_dtype field or prepare the data again")


class RawRecords:
    """The record bytes of a `RecordReader`, as a grain data source."""

    def __init__(self, reader: RecordReader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> bytes:
        return self.reader.read(index)


def open_shard(path: str, expected: int):
    """(grain data source, None) for a readable shard of `expected` records, else (None, why not)."""
    import grain

    if not Path(path).is_file():
        return None, "the file is missing"
    try:
        source = grain.sources.ArrayRecordDataSource([path])
    except Exception as err:  # array_record raises RuntimeError (or others) with no file name
        return None, f"not a readable ArrayRecord file ({one_line(err)}); it may be truncated"
    if len(source) != expected:
        return None, f"holds {len(source)} records but the index says {expected}"
    return source, None


class DataErrors:
    """The records a pipeline dropped (data.on_error=skip): `count`, and the entries a report lists.

    The packer calls `record(entry)` for each dropped document; its iterator state
    saves the count, so a resumed run goes on counting where the checkpoint was.
    `DataErrors(parts)` sums several streams' (a process that reads several data
    streams). `write_report(path)` merges the entries into a JSON-lines file, one
    line per record (shard, record, manifest, line, reason), sorted by shard and record.
    """

    def __init__(self, parts=()):
        self.parts = list(parts)
        self._count = 0
        self._entries: dict[tuple[str, int], dict] = {}
        self._lock = threading.Lock()
        self._written = 0

    @property
    def count(self) -> int:
        return self._count + sum(part.count for part in self.parts)

    @property
    def entries(self) -> dict[tuple[str, int], dict]:
        merged = {}
        for part in self.parts:
            merged.update(part.entries)
        with self._lock:
            merged.update(self._entries)
        return merged

    def record(self, entry: dict) -> None:
        with self._lock:
            self._count += 1
            self._entries.setdefault((entry["shard"], int(entry["record"])), entry)

    def restore(self, count: int) -> None:
        with self._lock:
            self._count = int(count)

    def write_report(self, path) -> int:
        """Merges the entries into the report at `path` (written only when there are new ones); returns how many it lists."""
        from etils import epath

        path, entries = epath.Path(path), self.entries
        if len(entries) == self._written:
            return self._written
        merged = {}
        if path.exists():
            for text in path.read_text().splitlines():
                if text.strip():
                    old = json.loads(text)
                    merged[(old["shard"], int(old["record"]))] = old
        merged.update(entries)
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text("".join(json.dumps(merged[key]) + "\n" for key in sorted(merged)))
        tmp.replace(path)
        self._written = len(entries)
        return len(merged)


def report_path(workdir, process_index: int = 0):
    """WORKDIR/data_errors.jsonl (process 0) or WORKDIR/data_errors.process-K.jsonl: the records this process dropped."""
    from etils import epath

    name = REPORT_FILE if process_index == 0 else REPORT_FILE.replace(".jsonl", f".process-{process_index}.jsonl")
    return epath.Path(workdir) / name
