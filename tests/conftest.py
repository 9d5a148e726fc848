"""Test set-up: 8 simulated CPU devices, set before jax is imported, and a
session-wide persistent compilation cache so identical programs compile once.

pytest.ini runs the suite over one pytest-xdist worker per core (at most 4),
each test file whole on one worker (`--dist loadfile`), so a file's module
fixtures are built once; `pytest -n 0` runs everything in one process.

Tests marked `slow` (long training runs, benchmark-sized checks) are left out
of the default run by pytest.ini; run them with `pytest -m slow`, or everything
with `pytest -m "slow or not slow"`.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
_CACHE_DIR = tempfile.mkdtemp(prefix="mmntp_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core this process may use, at most 4 (each holds its own JAX)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))
