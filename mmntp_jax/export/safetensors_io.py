"""safetensors files written one tensor at a time, and read lazily, with numpy only.

Format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header
length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {str: str}}` padded with spaces to a multiple of 8, then the
raw little-endian tensor bytes. Because every tensor's shape and dtype is known
before any data is read, the header is written first and each tensor is then
produced, written and dropped: peak memory is one tensor, never the model.

`plan_shards` splits tensors into files of at most `shard_bytes` (a tensor
larger than that gets a file of its own) named like Hugging Face's
`model-00001-of-00003.safetensors`, with `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPE_CODES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def dtype_code(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in DTYPE_CODES:
        raise ValueError(f"safetensors: unsupported dtype {dtype}; supported: {', '.join(map(str, DTYPE_CODES))}")
    return DTYPE_CODES[dtype]


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: its name, final shape and dtype, and how to produce it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _header(tensors: list[TensorPlan], metadata: dict[str, str]) -> bytes:
    entries, offset = {}, 0
    for t in tensors:
        entries[t.name] = {"dtype": dtype_code(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header = {"__metadata__": dict(metadata), **entries}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def write_file(path, tensors: list[TensorPlan], metadata: dict[str, str] | None = None, *, on_tensor=None) -> int:
    """Writes `tensors` to one file, producing each only when its turn comes; returns bytes of data."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError(f"safetensors: duplicate tensor names in {path}")
    header = _header(tensors, metadata or {"format": "pt"})
    total = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for t in tensors:
            array = np.ascontiguousarray(np.asarray(t.produce()))
            if array.shape != tuple(t.shape):
                raise ValueError(f"safetensors: tensor {t.name} has shape {array.shape}, planned {tuple(t.shape)}")
            if array.dtype != np.dtype(t.dtype):
                array = array.astype(t.dtype)
            f.write(array.reshape(-1).view(np.uint8).data)  # no copy; hosts are little-endian, as the format is
            total += t.nbytes
            if on_tensor is not None:
                on_tensor(t)
    return total


def plan_shards(tensors: list[TensorPlan], shard_bytes: int | None) -> list[list[TensorPlan]]:
    """Groups tensors, in order, into files of at most `shard_bytes` (None: one file)."""
    if not shard_bytes:
        return [list(tensors)]
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return shards


def write_model(folder, tensors: list[TensorPlan], shard_bytes: int | None = None, metadata=None, *, on_tensor=None) -> list[str]:
    """`model.safetensors`, or shards plus `model.safetensors.index.json`; returns the file names."""
    folder = Path(folder)
    shards = plan_shards(tensors, shard_bytes)
    if len(shards) == 1:
        write_file(folder / SINGLE_NAME, shards[0], metadata, on_tensor=on_tensor)
        return [SINGLE_NAME]
    files, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_file(folder / name, shard, metadata, on_tensor=on_tensor)
        weight_map.update({t.name: name for t in shard})
        files.append(name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return files + [INDEX_NAME]


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1024' → bytes (decimal units as Hugging Face uses them)."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    raw = text.strip().upper()
    for unit, factor in units.items():
        if raw.endswith(unit):
            number = raw[: -len(unit)].strip()
            break
    else:
        number, factor = raw, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"size {text!r}: expected a number with an optional unit, e.g. 5GB, 500MB, 2GiB") from None
    if value <= 0:
        raise ValueError(f"size {text!r}: must be > 0")
    return value


class SafetensorsReader:
    """Lazy reader of one file or a sharded set (folder with an index); arrays are memory-mapped."""

    def __init__(self, files: Iterable):
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            path = Path(path)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            for name, info in header.items():
                if info["dtype"] not in CODE_DTYPES:
                    raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
                self._entries[name] = (path, info, 8 + n)

    @classmethod
    def from_folder(cls, folder) -> "SafetensorsReader":
        folder = Path(folder)
        if (folder / INDEX_NAME).exists():
            weight_map = json.loads((folder / INDEX_NAME).read_text())["weight_map"]
            return cls(folder / name for name in sorted(set(weight_map.values())))
        if (folder / SINGLE_NAME).exists():
            return cls([folder / SINGLE_NAME])
        raise FileNotFoundError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors checkpoints are read)")

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][1]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return CODE_DTYPES[self._entries[name][1]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"safetensors: no tensor {name!r}")
        path, info, data_start = self._entries[name]
        begin, end = info["data_offsets"]
        dtype, shape = CODE_DTYPES[info["dtype"]], tuple(info["shape"])
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
