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

from mmntp_jax.errors import FileFormatError

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


def _weight_map(index: Path) -> dict[str, str]:
    """{tensor: file name} of a `model.safetensors.index.json`, checked to be that."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError) as err:  # bad JSON, bad UTF-8, not an object
        raise FileFormatError(f"{index}: not a safetensors index ({err or type(err).__name__})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FileFormatError(f"{index}: 'weight_map' must map tensor names to file names")
    return weight_map


def _read_header(path: Path) -> tuple[dict, int]:
    """(the tensors of a safetensors file's header, its length N), every entry checked against the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (None,)
        if n is None or n > size - 8:
            raise FileFormatError(f"{path}: not a safetensors file (header length {n} does not fit the file's {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as err:
            raise FileFormatError(f"{path}: not a safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise FileFormatError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if dtype not in CODE_DTYPES:
            raise FileFormatError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * CODE_DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= size - 8 - n and end - begin == expected):
            raise FileFormatError(f"{path}: tensor {name} has data_offsets {[begin, end]}, which do not hold its {expected} bytes inside the file")
    return header, n


class SafetensorsReader:
    """Lazy reader of one file or a sharded set (folder with an index); arrays are memory-mapped.

    A header that does not fit its file, is not JSON, or places a tensor outside
    the data is refused with a FileFormatError (a ValueError) naming the file and the tensor.
    `from_folder` opens only files inside the folder (`mmntp_jax.paths.inside`):
    an index entry naming `../…` or an absolute path, or a file that is a
    symbolic link out of the folder, is refused naming the entry.
    """

    def __init__(self, files: Iterable):
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            path = Path(path)
            header, n = _read_header(path)
            for name, info in header.items():
                self._entries[name] = (path, info, 8 + n)

    @classmethod
    def from_folder(cls, folder, *, root=None) -> "SafetensorsReader":
        """The model in `folder` (`root`: a folder holding it whose files count as inside, see `inside`)."""
        from mmntp_jax.paths import inside

        folder = Path(folder)
        index = inside(folder, INDEX_NAME, root=root)
        if index.exists():
            first_tensor = {}
            for tensor, name in _weight_map(index).items():
                first_tensor.setdefault(name, tensor)
            entry = lambda name, tensor: f"{index.name} weight_map entry {tensor!r} → {name!r}"
            return cls(inside(folder, name, root=root, what=entry(name, tensor)) for name, tensor in sorted(first_tensor.items()))
        single = inside(folder, SINGLE_NAME, root=root)
        if single.exists():
            return cls([single])
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
