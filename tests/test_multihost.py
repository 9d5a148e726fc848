"""Two processes on localhost (jax.distributed, 4 CPU devices each) train like one
process that sees the same global batches."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.metrics import read_metrics
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    sys.path.insert(0, sys.argv[4])
    from tiny import tiny_config
    from mmntp_jax.train.loop import train
    config = tiny_config(train=dict(steps=3, eval_every=3), checkpoint=dict(every=3), mesh=dict(data=4, fsdp=2))
    summary = train(config, sys.argv[3], log=lambda _: None)
    print("DONE", jax.process_index(), jax.process_count(), jax.device_count(), summary["step"])
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_losses(steps: int):
    """One process, 8 devices; global batch = process 0's rows then process 1's."""
    config = tiny_config(train=dict(steps=3), mesh=dict(data=4, fsdp=2))
    mesh = make_mesh(config.mesh)
    builder = StepBuilder(config, mesh)
    state = builder.init_state(config.train.seed)
    iterators = [iter(make_dataset(config, process_index=p, process_count=2)[1]) for p in range(2)]
    losses = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, metrics = builder.train_step(state, shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses


def test_two_processes_match_one(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests_dir), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen([sys.executable, str(worker), address, str(i), str(tmp_path / "run"), tests_dir], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(o[0].split("DONE")[1].split()[0] for o in outputs) == ["0", "1"]
    assert all(o[0].split("DONE")[1].split()[1:3] == ["2", "8"] for o in outputs)
    logged = [r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    np.testing.assert_allclose(logged, reference_losses(3), rtol=1e-5)
    assert (tmp_path / "run" / "checkpoints" / "3" / "data" / "process_1-of-2.json").exists()
