"""The fault matrix's harness: the CLI runs it drives, and what it reads back from their workdirs."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "tests" / "cli_tiny_experiment.py"
TMP_MARKER = ".orbax-checkpoint-tmp"
CLUSTER_VARS = ("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "JAX_COORDINATOR", "MMNTP_")
ERROR_LINE = "mmntp train: error:"
FAULTS = ("kill9", "sigterm", "corrupt", "corrupt_final", "readonly", "diskfull", "nan", "divergence",
          "truncated_record", "out_of_range_id", "process_count")
NAMES = {"kill9": "kill -9", "sigterm": "SIGTERM", "corrupt": "corrupt latest checkpoint",
         "corrupt_final": "corrupt final checkpoint of a finished run", "readonly": "read-only checkpoint dir",
         "diskfull": "disk full", "nan": "NaN burst", "divergence": "divergence (huge lr)",
         "truncated_record": "truncated record", "out_of_range_id": "out-of-range id",
         "process_count": "process-count change"}
STEADY = ["train.steps=24", "checkpoint.every=2", "checkpoint.keep=3", "checkpoint.async_save=true"]
MULTIHOST = ["mesh.fsdp=2", "checkpoint.keep=5", "checkpoint.async_save=false"]
DOCS, PER_SHARD, EVAL_FRACTION = 16, 4, 0.2
RUN_TIMEOUT = 600

NAN_DRIVER = '''"""mmntp_jax.cli.main with the batches of the steps in FAULT_NAN_STEPS (1-based) given a NaN loss mask."""
import os
import sys

import numpy as np

from mmntp_jax import cli
from mmntp_jax.train.backbone import BackboneClient

steps = {int(s) for s in os.environ["FAULT_NAN_STEPS"].split(",") if s}
fetch = BackboneClient.next_batch


def next_batch(self, index):
    batch = fetch(self, index)
    if index + 1 in steps:
        batch = {**batch, "loss_mask": np.full_like(batch["loss_mask"], np.nan)}
    return batch


BackboneClient.next_batch = next_batch
sys.exit(cli.main(sys.argv[1:]))
'''


# -- processes -------------------------------------------------------------------------------


class Proc:
    """A child process with its stdout/stderr in files (so polling never blocks on a pipe)."""

    def __init__(self, cmd, env, logs: Path, name: str):
        logs.mkdir(parents=True, exist_ok=True)
        self.err_path, self.name, self.t0 = logs / f"{name}.stderr", name, time.monotonic()
        with open(logs / f"{name}.stdout", "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.seconds = self.rc = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait()
            with open(self.err_path, "a") as err:
                err.write(f"\n[fault matrix: killed after {timeout} s]\n")
        if self.rc is None:
            self.seconds, self.rc = time.monotonic() - self.t0, rc
        return rc

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_LINE)]


def one_line_error(stderr: str) -> bool:
    return len(error_lines(stderr)) == 1 and "Traceback" not in stderr


def resumed_from(stderr: str) -> int | None:
    found = re.findall(r"resumed from step (\d+)", stderr)
    return int(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- workdir inspection ----------------------------------------------------------------------


def checkpoint_names(workdir: Path) -> list[str]:
    folder = workdir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def committed_steps(workdir: Path) -> list[int]:
    return sorted(int(n) for n in checkpoint_names(workdir) if n.isdigit())


def tmp_saves(workdir: Path) -> set[str]:
    return {n for n in checkpoint_names(workdir) if TMP_MARKER in n}


def train_records(workdir: Path, offset: int = 0) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "train/step_s" in record:
            records.append(record)
    return records


def metrics_size(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.stat().st_size if path.exists() else 0


def truncate_metrics(workdir: Path, step: int) -> None:
    path = workdir / "metrics.jsonl"
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def cut_back(source: Path, destination: Path, step: int) -> Path:
    """A copy of `source` as a run killed right after checkpoint `step` committed would leave it."""
    shutil.copytree(source, destination)
    for name in checkpoint_names(destination):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(destination / "checkpoints" / name)
    truncate_metrics(destination, step)
    return destination


def array_files(step_dir: Path) -> list[Path]:
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: -p.stat().st_size)


def params(workdir: Path, step: int | None = None):
    """(step, {path: array}, warnings) of `mm.load(workdir, step)`."""
    import warnings

    import jax
    import numpy as np

    import mmntp_jax as mm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = mm.load(workdir, step)
    flat = jax.tree_util.tree_flatten_with_path(run.params)[0]
    return run.step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def compare(a: dict, b: dict) -> dict:
    """Bitwise equality of two parameter dicts and the largest absolute difference."""
    import numpy as np

    if a.keys() != b.keys():
        return {"bitwise": False, "max_abs_diff": None, "why": "different parameter names"}
    bitwise, worst = True, 0.0
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return {"bitwise": False, "max_abs_diff": None, "why": f"{k}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"}
        bitwise &= x.tobytes() == y.tobytes()
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
    return {"bitwise": bool(bitwise), "max_abs_diff": worst}


def all_finite(p: dict) -> bool:
    import numpy as np

    return all(bool(np.isfinite(v).all()) for v in p.values())


# -- the matrix ------------------------------------------------------------------------------
