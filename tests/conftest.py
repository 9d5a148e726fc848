"""Test set-up: 8 simulated CPU devices, set before jax is imported.

Tests marked `slow` (long training runs, full benchmarks-as-tests) are left out
of the default run by pytest.ini; run them with `pytest -m slow`.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
