"""Runs a job's stages in order, skipping each whose output in the workdir is complete.

A stage is a name, a `done()` test of its output and a `run()` that makes it;
`run()` returns False when it was interrupted (Ctrl-C / SIGTERM), which stops
the job so the same command resumes it. The seconds each stage took this time
are logged and kept in `WORKDIR/job.json` ({stage: {"seconds", "status"}}), so a
resumed job's record shows which stages ran when.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[], bool]
    run: Callable[[], bool]


def read_record(workdir) -> dict:
    path = Path(workdir) / "job.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(workdir, record: dict) -> None:
    path = Path(workdir) / "job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def run_stages(stages: list[Stage], workdir, log=print) -> dict:
    """Runs the stages not yet done; returns {"complete": bool, "stages": record}."""
    record = read_record(workdir)
    for stage in stages:
        if stage.done():
            log(f"stage {stage.name}: complete")
            record.setdefault(stage.name, {"status": "complete"})
            continue
        log(f"stage {stage.name}: running")
        t0 = time.perf_counter()
        finished = stage.run()
        seconds = round(time.perf_counter() - t0, 1)
        record[stage.name] = {"seconds": seconds, "status": "done" if finished else "interrupted"}
        _write_record(workdir, record)
        if not finished:
            log(f"stage {stage.name}: interrupted after {seconds:.0f} s; run the same command to resume")
            return {"complete": False, "stages": record}
        log(f"stage {stage.name}: done in {seconds:.0f} s")
    return {"complete": True, "stages": record}
