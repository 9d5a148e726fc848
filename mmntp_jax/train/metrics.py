"""Run records: metrics.jsonl, TensorBoard events, provenance and the progress bar."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from importlib import metadata

import jax
import numpy as np
from etils import epath

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorstore", "numpy", "mmntp_jax")


def _jsonable(value):
    value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard and "://" not in str(workdir):
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, values: dict, *, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}{k}": _jsonable(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def write_image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
        """An image (uint8 or [0, 1] float, [H, W, 3]) to TensorBoard."""
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, np.asarray(image_HWC), step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> str | None:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(extra: dict | None = None) -> dict:
    devices = jax.devices()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)},
        "process": {"index": jax.process_index(), "count": jax.process_count()},
        "command": sys.argv,
        **(extra or {}),
    }


def measure_matmul_peak(n: int = 1024, repeats: int = 8, seconds: float = 1.0) -> float:
    """FLOP/s of a jitted float32 [n, n] @ [n, n] on the default device: the best of at least
    `repeats` runs spread over at least `seconds`, so that a moment when another process
    holds a core (a previous stage's workers winding down) does not halve the peak."""
    x = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < repeats or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best, runs = min(best, time.perf_counter() - t0), runs + 1
    return 2 * n**3 / best
