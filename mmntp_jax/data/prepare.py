"""Manifest → tokenized shards (`mmntp data prepare`): parallel, resumable, deterministic.

The manifest's documents are cut into shards of `docs_per_shard` consecutive
documents; shard s holds documents [s·S, (s+1)·S) in manifest order. Each shard
is written by one worker and committed atomically (see `shards.py`), so:

  - resumable: a rerun skips every shard whose `shard-NNNNN.json` exists;
  - deterministic: a shard's bytes depend only on its documents and the settings;
  - multi-host: process i of n prepares the shards s with s mod n = i, all into
    one shared folder; the process that finds every shard done writes
    `dataset.json` (rerunning any process finishes an interrupted one);
  - parallel: `workers` > 1 prepares shards in that many spawned processes.

The settings (manifest size, shard size, vocabulary, text tokenizer, seq_len)
are recorded in `prepare.json`; resuming with different settings is an error.
With `on_error="skip"` a bad document is left out and reported (line and
reason) in its shard's statistics and in `report.json`; otherwise the first bad
document stops the run with an error naming manifest, line and field. Each
shard's statistics list the manifest line of every record it holds (`lines`),
so a record found bad when read is named by its line even if it is damaged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mmntp_jax.data.manifest import Manifest
from mmntp_jax.data.schema import ManifestError, validate_document
from mmntp_jax.data.shards import ShardWriter, add_doc_stats, new_stats, shard_name, token_dtype_for, write_atomic, write_index
from mmntp_jax.data.tokenize import DocumentTokenizer, as_encoder
from mmntp_jax.data.vocab import MODALITIES, Vocab
from mmntp_jax.tokenizers.text import load_text_tokenizer

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class PrepareOptions:
    text_tokenizer: str = "bytes"  # "bytes" or a tokenizer.json path
    seq_len: int | None = None  # blocks longer than this are errors
    docs_per_shard: int = 1024
    group_size: int = 64  # documents tokenized together
    workers: int = 1
    process_index: int = 0
    process_count: int = 1
    on_error: str = "raise"
    layout: str = "per_level"  # vocab layout of multi-level codes
    progress: bool = True

    def check(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r}; expected one of {', '.join(ON_ERROR)}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"--process-index {self.process_index} is not in [0, --process-count {self.process_count})")
        for name in ("docs_per_shard", "group_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


def prepare_shard(manifest: Manifest, out: Path, shard: int, options: PrepareOptions, tokenizer: DocumentTokenizer, token_dtype: str, progress=None) -> dict:
    """Tokenizes and writes one shard; returns its statistics (also saved as JSON)."""
    start = shard * options.docs_per_shard
    stop = min(len(manifest), start + options.docs_per_shard)
    writer = ShardWriter(out, shard, token_dtype)
    stats = {**new_stats(shard, start, stop), "lines": []}
    try:
        entries = list(manifest.read(start, stop))
        for g in range(0, len(entries), options.group_size):
            group, docs, lines, failed = entries[g : g + options.group_size], [], [], []
            for line, obj in group:
                try:
                    if isinstance(obj, ManifestError):
                        raise obj
                    docs.append(validate_document(obj, str(manifest), line))
                    lines.append(line)
                except ManifestError as err:
                    failed.append((line, err))
            results = tokenizer.tokenize(docs)
            failed += [(line, r) for line, r in zip(lines, results) if isinstance(r, ManifestError)]
            if failed and options.on_error == "raise":
                raise min(failed, key=lambda f: f[0])[1]
            stats["skipped"].extend({"line": line, "error": str(err)} for line, err in failed)
            for line, doc, result in zip(lines, docs, results):
                if isinstance(result, ManifestError):
                    continue
                writer.write(result, {"line": line, **doc.meta})
                add_doc_stats(stats, result)
                stats["lines"].append(line)
            if progress is not None:
                progress(len(group))
    except BaseException:
        writer.abort()
        raise
    stats["skipped"].sort(key=lambda s: s["line"])
    writer.commit(stats)
    return stats


def _worker(args) -> dict:
    """One shard in a spawned worker process."""
    return prepare_shard(*args)


class Preparer:
    """Plans and runs the preparation of one manifest into one folder."""

    def __init__(self, manifest_path, out, options: PrepareOptions = PrepareOptions(), encoders: dict | None = None, text_tokenizer=None):
        options.check()
        self.options, self.out = options, Path(out)
        self.manifest = Manifest(manifest_path, stride=options.docs_per_shard)
        if len(self.manifest) == 0:
            raise ValueError(f"manifest {self.manifest.path}: holds no documents")
        self.num_shards = -(-len(self.manifest) // options.docs_per_shard)
        encoders = {name: as_encoder(e) for name, e in (encoders or {}).items()}
        unknown = sorted(set(encoders) - set(MODALITIES[1:]))
        if unknown:
            raise ValueError(f"no modality {unknown[0]!r}; modality tokenizers are for {', '.join(MODALITIES[1:])}")
        text = text_tokenizer or load_text_tokenizer(options.text_tokenizer)
        self.vocab = Vocab.for_tokenizers(text.size, {n: e.tokenizer for n, e in encoders.items()}, layout=options.layout)
        self.text = text.with_vocab(self.vocab)
        self.tokenizer = DocumentTokenizer(self.vocab, self.text, encoders, seq_len=options.seq_len, resolve=self.manifest.resolve)
        self.token_dtype = token_dtype_for(self.vocab)

    def settings(self) -> dict:
        return {"manifest": str(self.manifest.path.resolve()), "manifest_docs": len(self.manifest),
                "manifest_bytes": self.manifest.path.stat().st_size, "docs_per_shard": self.options.docs_per_shard,
                "seq_len": self.options.seq_len, "text_tokenizer_id": self._text_id(), "vocab": json.loads(self.vocab.to_json()),
                "token_dtype": self.token_dtype}

    def _text_id(self) -> str:
        if self.text.kind == "bytes":
            return "bytes"
        return "bpe-sha256:" + hashlib.sha256(self.text.to_str().encode()).hexdigest()[:16]

    def _record_settings(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path, settings = self.out / "prepare.json", self.settings()
        if path.is_file():
            old = json.loads(path.read_text())
            changed = [k for k in settings if old.get(k) != settings[k]]
            if changed:
                raise ValueError(f"{self.out} was prepared with other settings ({', '.join(changed)} differ: "
                                 f"{old.get(changed[0])!r} then, {settings[changed[0]]!r} now); use a new --out folder or remove it")
        else:
            write_atomic(path, json.dumps(settings, indent=1))
        self.vocab.save(self.out / "vocab.json")
        if self.text.kind == "bpe":
            write_atomic(self.out / "tokenizer.json", self.text.to_str())

    def done(self, shard: int) -> bool:
        return (self.out / f"{shard_name(shard)}.json").is_file() and (self.out / f"{shard_name(shard)}.array_record").is_file()

    def pending(self) -> list[int]:
        mine = range(self.options.process_index, self.num_shards, self.options.process_count)
        return [s for s in mine if not self.done(s)]

    def run(self) -> dict:
        """Prepares this process's pending shards; returns a summary."""
        from tqdm import tqdm

        self._record_settings()
        todo = self.pending()
        total = sum(min(len(self.manifest), (s + 1) * self.options.docs_per_shard) - s * self.options.docs_per_shard for s in todo)
        bar = tqdm(total=total, unit="doc", desc="prepare", disable=not self.options.progress, dynamic_ncols=True)
        try:
            if self.options.workers == 1 or len(todo) <= 1:
                for s in todo:
                    prepare_shard(self.manifest, self.out, s, self.options, self.tokenizer, self.token_dtype, bar.update)
            else:
                self._run_parallel(todo, bar)
        finally:
            bar.close()
        return self.finish(prepared=len(todo))

    def _run_parallel(self, todo: list[int], bar) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with ProcessPoolExecutor(max_workers=min(self.options.workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_worker, (self.manifest, self.out, s, self.options, self.tokenizer, self.token_dtype)) for s in todo]
            try:
                for future in as_completed(futures):
                    stats = future.result()
                    bar.update(stats["stop_doc"] - stats["first_doc"])
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def finish(self, prepared: int = 0) -> dict:
        """Writes dataset.json and report.json once every shard is done."""
        missing = [s for s in range(self.num_shards) if not self.done(s)]
        summary = {"out": str(self.out), "shards": self.num_shards, "prepared_now": prepared, "missing": len(missing), "complete": not missing}
        if missing:
            return summary
        stats = [json.loads((self.out / f"{shard_name(s)}.json").read_text()) for s in range(self.num_shards)]
        info = write_index(self.out, stats, self.settings(), "bytes" if self.text.kind == "bytes" else "tokenizer.json")
        return {**summary, "docs": info["docs"], "tokens": info["tokens"], "skipped": info["skipped"]}


def prepare(manifest, out, options: PrepareOptions = PrepareOptions(), encoders: dict | None = None, text_tokenizer=None) -> dict:
    """Tokenizes `manifest` into shards under `out`; see the module docstring."""
    return Preparer(manifest, out, options, encoders, text_tokenizer).run()


def manifest_texts(manifest_path, on_error: str = "raise"):
    """The text segments of a manifest, in order (for training a BPE tokenizer)."""
    manifest = Manifest(manifest_path)
    for line, obj in manifest.read():
        try:
            if isinstance(obj, ManifestError):
                raise obj
            doc = validate_document(obj, str(manifest), line)
        except ManifestError:
            if on_error == "raise":
                raise
            continue
        yield from (s.text for s in doc.segments if s.type == "text")

