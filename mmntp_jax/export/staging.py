"""Output folders that are complete or absent: write to a sibling, then swap in.

`staged_output(out, force)` refuses a non-empty `out` unless `force`, lets the
caller write everything into a temporary sibling folder, and only when that
succeeded replaces `out` with it. A failed or interrupted export leaves the
previous contents of `out` untouched and no partial folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def check_output(out, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output folder {out} is not empty; pass --force to replace its contents")
    return out


@contextlib.contextmanager
def staged_output(out, force: bool = False):
    """Yields a temporary folder that becomes `out` when the block finishes without error."""
    out = check_output(out, force).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old)
    else:
        stage.rename(out)
