"""The zero-download text corpus: the Python standard library's own source.

Every machine that runs this package has it. A document is one `.py` file of
the running interpreter's stdlib (tests, idlelib, lib2to3 and site-packages
left out), read as bytes. The train/eval split is a deterministic hash of the
file's relative path, so it is the same on every host and every run.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=None)
def stdlib_files() -> tuple[str, ...]:
    """Relative paths of the corpus files, sorted."""
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not EXCLUDED_DIRS.intersection(rel.parts) and path.is_file():
            files.append(rel.as_posix())
    if not files:
        raise FileNotFoundError(f"no Python source files under the stdlib directory {root}")
    return tuple(sorted(files))


def is_eval_file(rel_path: str, eval_fraction: float) -> bool:
    digest = hashlib.sha256(rel_path.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < eval_fraction


def split_files(split: str, eval_fraction: float) -> list[str]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    return [f for f in stdlib_files() if is_eval_file(f, eval_fraction) == want_eval]


def read_file(rel_path: str) -> bytes:
    return (stdlib_root() / rel_path).read_bytes()


def file_pieces(files: list[str], piece_bytes: int) -> list[tuple[str, int, int]]:
    """(path, start, stop) byte ranges that cut every file into pieces of at most
    `piece_bytes` bytes, split at line ends where a line end falls in the piece's
    second half. Every byte of every file is in exactly one piece."""
    if piece_bytes < 1:
        raise ValueError(f"data.piece_bytes must be ≥ 1, got {piece_bytes}")
    pieces = []
    for rel in files:
        data = read_file(rel)
        start = 0
        while start < len(data):
            stop = min(start + piece_bytes, len(data))
            if stop < len(data):
                cut = data.rfind(b"\n", start + piece_bytes // 2, stop)
                stop = cut + 1 if cut >= 0 else stop
            pieces.append((rel, start, stop))
            start = stop
    return pieces


def read_piece(piece) -> bytes:
    rel, start, stop = piece
    with (stdlib_root() / rel).open("rb") as f:
        f.seek(int(start))
        return f.read(int(stop) - int(start))
