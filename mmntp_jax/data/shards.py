"""Token shards on disk: ArrayRecord files, one record per document.

A prepared data set is a folder:

    dataset.json              the index: format, vocab, text tokenizer, shard list, totals
    vocab.json                the unified vocabulary (`Vocab.save`)
    tokenizer.json            the BPE text tokenizer, when one is used
    shard-00000.array_record  documents of manifest range [0, S), in manifest order
    shard-00000.json          that shard's statistics; its presence marks the shard complete
                              (`lines`: the manifest line of each record, when prepared
                              from a manifest)
    …

A record is little-endian binary:

    u32 n | u32 m | tokens (n × token_dtype) | modality (n × u8) | loss (n × u8) | meta (m bytes, UTF-8 JSON)

`token_dtype` is uint16 when the vocabulary has at most 65 536 ids, else int32;
ids that do not fit it (or the vocabulary) are refused when written.
Records are written with ArrayRecord `group_size:1` so any document can be read
directly (grain's random access). Files are written under a temporary name and
renamed when complete, so a crash never leaves a half shard that looks done.

`ShardSet(folder).documents()` reads records through `records.RecordReader`,
which checks each one (size, token dtype, id range) and names a bad one by
shard, record and manifest line; `data.on_error` says whether that stops the
run or drops the record with a count.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from mmntp_jax.data.packing import block_spans
from mmntp_jax.data.vocab import MODALITIES, Vocab
from mmntp_jax.errors import FileFormatError
from mmntp_jax.paths import inside

FORMAT = "mmntp-shards"
VERSION = 1
INDEX_FILE = "dataset.json"
HEADER = struct.Struct("<II")


def token_dtype_for(vocab: Vocab) -> str:
    return "uint16" if vocab.size <= 2**16 else "int32"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def encode_record(doc: dict[str, np.ndarray], token_dtype: str, meta: dict | None = None) -> bytes:
    tokens = np.asarray(doc["tokens"])
    limit = np.iinfo(token_dtype)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > limit.max):
        raise ValueError(f"token ids [{int(tokens.min())}, {int(tokens.max())}] do not fit token_dtype={token_dtype!r} [0, {limit.max}]")
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() if meta else b""
    return b"".join([
        HEADER.pack(tokens.size, len(meta_bytes)),
        tokens.astype("<" + np.dtype(token_dtype).str[1:]).tobytes(),
        np.asarray(doc["modality"], np.uint8).tobytes(),
        np.asarray(doc["loss"], np.uint8).tobytes(),
        meta_bytes,
    ])


def decode_record(data: bytes, token_dtype: str = "uint16", with_meta: bool = False) -> dict:
    n, m = HEADER.unpack_from(data, 0)
    dtype = np.dtype(token_dtype).newbyteorder("<")
    at = HEADER.size
    tokens = np.frombuffer(data, dtype, n, at).astype(np.int32)
    at += n * dtype.itemsize
    doc = {"tokens": tokens, "modality": np.frombuffer(data, np.uint8, n, at), "loss": np.frombuffer(data, np.uint8, n, at + n)}
    if with_meta:
        doc["meta"] = json.loads(data[at + 2 * n : at + 2 * n + m]) if m else {}
    return doc


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_stats(shard: int, first_doc: int, stop_doc: int) -> dict:
    """The statistics a shard's JSON file holds (its presence marks the shard done)."""
    return {"shard": shard, "path": f"{shard_name(shard)}.array_record", "first_doc": first_doc, "stop_doc": stop_doc,
            "docs": 0, "tokens": 0, "loss_tokens": 0, "by_modality": [0] * len(MODALITIES), "max_block": 0, "max_len": 0,
            "log2_lengths": [0] * 33, "skipped": []}


def add_doc_stats(stats: dict, doc: dict) -> None:
    tokens = doc["tokens"]
    spans = block_spans(tokens)
    stats["docs"] += 1
    stats["tokens"] += int(tokens.size)
    stats["loss_tokens"] += int(np.asarray(doc["loss"]).sum())
    counts = np.bincount(np.asarray(doc["modality"]), minlength=len(MODALITIES))
    stats["by_modality"] = [a + int(b) for a, b in zip(stats["by_modality"], counts)]
    stats["max_block"] = max(stats["max_block"], int((spans[:, 1] - spans[:, 0] + 1).max()) if len(spans) else 0)
    stats["max_len"] = max(stats["max_len"], int(tokens.size))
    stats["log2_lengths"][int(tokens.size).bit_length() - 1] += 1


def write_index(folder: Path, stats: list[dict], settings: dict, text_tokenizer: str = "bytes") -> dict:
    """Writes dataset.json (and report.json, the skipped documents) for complete shards."""
    skipped = [s for st in stats for s in st["skipped"]]
    info = {
        "format": FORMAT, "version": VERSION, **settings, "text_tokenizer": text_tokenizer,
        "shards": [{"path": st["path"], "docs": st["docs"], "tokens": st["tokens"], "max_len": st["max_len"]} for st in stats],
        "docs": sum(st["docs"] for st in stats), "tokens": sum(st["tokens"] for st in stats),
        "max_block": max(st["max_block"] for st in stats), "skipped": len(skipped),
    }
    write_atomic(folder / "report.json", json.dumps({"skipped": skipped}, indent=1))
    write_atomic(folder / INDEX_FILE, json.dumps(info, indent=1))
    return info


def write_documents(folder, docs, vocab: Vocab, docs_per_shard: int = 1024) -> "ShardSet":
    """Writes already-tokenized documents (e.g. generated data) as a data set folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype, stats, writer = token_dtype_for(vocab), [], None
    for i, doc in enumerate(docs):
        tokens = np.asarray(doc["tokens"])
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab.size):
            raise ValueError(f"{folder}: document {i} has token ids in [{int(tokens.min())}, {int(tokens.max())}], outside the vocabulary [0, {vocab.size})")
        if i % docs_per_shard == 0:
            if writer is not None:
                writer.commit(stats[-1])
            writer = ShardWriter(folder, i // docs_per_shard, dtype)
            stats.append(new_stats(i // docs_per_shard, i, i))
        writer.write(doc)
        add_doc_stats(stats[-1], doc)
        stats[-1]["stop_doc"] = i + 1
    if writer is None:
        raise ValueError(f"{folder}: no documents to write")
    writer.commit(stats[-1])
    vocab.save(folder / "vocab.json")
    write_index(folder, stats, {"vocab": json.loads(vocab.to_json()), "token_dtype": dtype, "docs_per_shard": docs_per_shard})
    return ShardSet(folder)


class ShardWriter:
    """Writes one shard's records to a temporary file; `commit` makes it final."""

    def __init__(self, folder: Path, index: int, token_dtype: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = Path(folder) / f"{shard_name(index)}.array_record"
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = ArrayRecordWriter(str(self._tmp), "group_size:1")
        self.token_dtype = token_dtype

    def write(self, doc: dict, meta: dict | None = None) -> None:
        self._writer.write(encode_record(doc, self.token_dtype, meta))

    def commit(self, stats: dict) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)
        write_atomic(self.path.with_suffix(".json"), json.dumps(stats, indent=1))

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


class ShardSet:
    """A prepared data set folder, opened for reading."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if not index.is_file():
            if self.folder.is_dir() and any(self.folder.glob("shard-*.json")):
                raise FileNotFoundError(f"{self.folder} is incomplete: {INDEX_FILE} is written when every shard is done; "
                                        "rerun `mmntp data prepare` (any process index) to finish it")
            raise FileNotFoundError(f"{index}: not found; create the data set with `mmntp data prepare --out {self.folder}`")
        try:
            self.info = json.loads(index.read_text())
        except ValueError as err:
            raise FileFormatError(f"{index}: not valid JSON ({err}); rerun `mmntp data prepare` to rewrite it") from None
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise ValueError(f"{index}: not a {FORMAT} v{VERSION} index (format={self.info.get('format')!r}, version={self.info.get('version')!r})")
        self.vocab = Vocab.from_json(json.dumps(self.info["vocab"]))
        self.token_dtype = self.info.get("token_dtype")
        from mmntp_jax.data.records import check_token_dtype

        check_token_dtype(self.token_dtype, self.vocab.size, str(index))
        self.paths = [str(self._member(s["path"])) for s in self.info["shards"] if s["docs"] > 0]

    def _member(self, name: str) -> Path:
        """A file the index names, refused when it lies outside the data set's folder."""
        return inside(self.folder, name, what=f"{self.folder / INDEX_FILE}: shard {name!r}")

    def __len__(self) -> int:
        return int(self.info["docs"])

    @property
    def max_block(self) -> int:
        return int(self.info.get("max_block", 0))

    def source(self):
        """Random access to the raw records (grain's ArrayRecordDataSource)."""
        import grain

        return grain.sources.ArrayRecordDataSource(self.paths)

    def documents(self, with_meta: bool = False, on_error: str = "stop", hint: str = ""):
        """A grain MapDataset of validated documents, in manifest order; a bad record raises
        `records.DataError` (on_error="stop") or is a dropped document ("skip"; see records.py)."""
        from mmntp_jax.data.records import RecordReader

        if not self.paths:
            raise ValueError(f"{self.folder}: the data set holds no documents")
        return RecordReader(self, on_error=on_error, with_meta=with_meta, hint=hint).dataset()

    def shard_stats(self) -> list[dict]:
        return [json.loads(self._member(s["path"]).with_suffix(".json").read_text()) for s in self.info["shards"]]

    def text_tokenizer(self):
        from mmntp_jax.tokenizers.text import load_text_tokenizer

        spec = self.info.get("text_tokenizer", "bytes")
        return load_text_tokenizer("bytes" if spec == "bytes" else str(inside(self.folder, spec, what=f"{self.folder / INDEX_FILE}: text tokenizer {spec!r}")), self.vocab)
