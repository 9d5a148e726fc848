"""Reading manifests: JSONL (one document per line) or Parquet (one per row).

`Manifest(path)` counts the documents once and can then read any range of them
without rereading the file from the start: JSONL keeps the byte offset of every
`stride`-th document, Parquet reads only the row groups that overlap. Blank
JSONL lines are not documents; line numbers in errors are the file's own
(1-based physical lines; Parquet rows count from 1).

A Parquet manifest has either a `segments` column (list of structs with the
segment fields) plus any metadata columns, or a `json` column holding each
document as a JSON string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mmntp_jax.data.schema import ManifestError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


class Manifest:
    """A manifest file, indexed for reading document ranges."""

    def __init__(self, path: str | Path, stride: int = 1024):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path}: not found")
        suffix = self.path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            self.format = "jsonl"
        elif suffix in PARQUET_SUFFIXES:
            self.format = "parquet"
        else:
            raise ValueError(f"manifest {self.path}: unknown format {suffix!r}; expected {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}")
        self.stride = max(1, int(stride))
        self.base_dir = self.path.parent
        if self.format == "jsonl":
            self._index_jsonl()
        else:
            self._index_parquet()

    def __len__(self) -> int:
        return self._count

    def __str__(self) -> str:
        return str(self.path)

    # -- JSONL -----------------------------------------------------------------
    def _index_jsonl(self) -> None:
        checkpoints, count, offset = [], 0, 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    if count % self.stride == 0:
                        checkpoints.append((offset, line_no))
                    count += 1
                offset += len(raw)
        self._checkpoints, self._count = checkpoints, count

    def _read_jsonl(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        if start >= stop:
            return
        offset, line_no = self._checkpoints[start // self.stride]
        index = (start // self.stride) * self.stride
        with open(self.path, "rb") as f:
            f.seek(offset)
            for raw in f:
                if raw.strip():
                    if index >= stop:
                        return
                    if index >= start:
                        yield line_no, self._parse_line(raw, line_no)
                    index += 1
                line_no += 1

    def _parse_line(self, raw: bytes, line_no: int):
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return ManifestError(self.path, line_no, f"malformed JSON ({err})")

    # -- Parquet ---------------------------------------------------------------
    def _index_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
            meta, names = pf.metadata, set(pf.schema_arrow.names)
        except Exception as err:  # pyarrow raises its own ArrowInvalid
            raise ValueError(f"manifest {self.path}: not a readable Parquet file ({err})") from None
        if "segments" not in names and "json" not in names:
            raise ValueError(f"manifest {self.path}: a Parquet manifest needs a 'segments' or a 'json' column; it has {', '.join(sorted(names))}")
        self._row_groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._count = meta.num_rows

    def _read_parquet(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        first = 0
        for group, n in enumerate(self._row_groups):
            if first + n > start and first < stop:
                rows = pf.read_row_group(group).to_pylist()
                for i in range(max(start, first), min(stop, first + n)):
                    yield i + 1, self._parse_row(rows[i - first], i + 1)
            first += n

    def _parse_row(self, row: dict, row_no: int):
        if "json" in row and "segments" not in row:
            text = row["json"]
            if not isinstance(text, (str, bytes)):
                return ManifestError(self.path, row_no, f"expected a JSON string, got {type(text).__name__}", "json")
            return self._parse_line(text.encode() if isinstance(text, str) else text, row_no)
        return row

    # -- both ------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yields (line, parsed object or ManifestError) for documents [start, stop)."""
        stop = self._count if stop is None else min(stop, self._count)
        reader = self._read_jsonl if self.format == "jsonl" else self._read_parquet
        yield from reader(max(0, start), stop)

    def resolve(self, path: str) -> Path:
        """A media path as written in the manifest, relative to its folder."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p
