"""Several processes on localhost (`mmntp train --distributed`, gloo CPU collectives, simulated CPU
devices) train like one process fed the same global batches, stop together on a signal to one of
them, and resume with another process count."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mmntp_jax.cli import main
from mmntp_jax.config import ConfigError, load_config
from mmntp_jax.data.global_batches import GlobalBatches, merge_process_states, stream_slices
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.distributed import AgreedStop, DistributedError, Launch, initialize, resolve_launch
from mmntp_jax.train.metrics import read_metrics
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py")
SETTINGS = ["train.progress=false", "mesh.fsdp=2", "checkpoint.keep=5", "checkpoint.async_save=false"]
CLUSTER_VARS = ("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "JAX_COORDINATOR", "MMNTP_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARS)}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def launch(workdir, count: int, devices: int, *settings, how: str = "flags"):
    """`count` CLI processes of `devices` CPU devices each; `how`: the settings as flags for process 0
    and MMNTP_* variables for the others ("flags"), or a simulated SLURM step ("slurm")."""
    port, procs = free_port(), []
    sets = [a for s in (*SETTINGS, *settings) for a in ("--set", s)]
    for i in range(count):
        env, cmd = clean_env(devices), [sys.executable, "-m", "mmntp_jax.cli", "train", "--config", str(EXPERIMENT),
                                        "--workdir", str(workdir), *sets]
        if count > 1 and how == "slurm":
            env.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS=str(count), SLURM_PROCID=str(i),
                       SLURM_LOCALID="0", JAX_COORDINATOR_PORT=str(port))
            cmd.append("--distributed")
        elif count > 1 and i == 0:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", "0"]
        elif count > 1:
            env.update(MMNTP_COORDINATOR=f"127.0.0.1:{port}", MMNTP_NUM_PROCESSES=str(count), MMNTP_PROCESS_ID=str(i))
            cmd.append("--distributed")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout: float = 300) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, err))
    return results


def run(workdir, count: int, devices: int, *settings, how: str = "flags") -> list[str]:
    results = finish(launch(workdir, count, devices, *settings, how=how))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    return [err for _, err in results]


def train_losses(workdir) -> dict:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}  # a resumed step's last record wins


def data_state(workdir, step: int) -> dict:
    return merge_process_states(Path(workdir) / "checkpoints" / str(step) / "data")


def reference_losses(steps: int) -> list[float]:
    """One process on 4 devices, fed the global batches of 2 data streams (process 0's rows, then process 1's)."""
    config = load_config(str(EXPERIMENT), SETTINGS)
    mesh = make_mesh(config.mesh, devices=jax.devices()[:4])
    builder = StepBuilder(config, mesh)
    state, batches, losses = builder.init_state(config.train.seed), GlobalBatches(config, streams=2), []
    for _ in range(steps):
        state, metrics = builder.train_step(state, shard_batch(next(batches), mesh))
        losses.append(float(metrics["loss"]))
    return losses


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """4 steps by 2 CLI processes of 2 devices each (a data=2, fsdp=2 mesh over both); checkpoints 2 and 4."""
    workdir = tmp_path_factory.mktemp("two") / "run"
    return workdir, run(workdir, 2, 2)


def test_cli_two_processes_match_one(two_process_run):
    workdir, stderr = two_process_run
    assert all("step 4: train/loss" in err for err in stderr)
    losses = train_losses(workdir)
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3, 4)], reference_losses(4), rtol=1e-5)
    files = sorted(p.name for p in (workdir / "checkpoints" / "4" / "data").glob("process_*.json"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert data_state(workdir, 4)["streams"] == 2


def test_settings_come_from_flags_then_variables_and_are_complete():
    env = {"MMNTP_COORDINATOR": "h0:1234", "MMNTP_NUM_PROCESSES": "4", "MMNTP_PROCESS_ID": "3"}
    assert resolve_launch(process_id=1, environ=env) == Launch("h0:1234", 4, 1)
    assert resolve_launch(environ={}) == Launch()  # none: the cluster's own detection
    with pytest.raises(ConfigError, match=r"--coordinator given but not --num-processes \(or MMNTP_NUM_PROCESSES\), --process-id"):
        resolve_launch("h0:1234", environ={})
    with pytest.raises(ConfigError, match="MMNTP_NUM_PROCESSES: expected an integer"):
        resolve_launch(environ={**env, "MMNTP_NUM_PROCESSES": "four"})
    with pytest.raises(ConfigError, match="process id 4 .* 0 … 3"):
        resolve_launch(process_id=4, environ=env)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        resolve_launch("h0", 2, 0, environ={})


def test_partial_settings_are_one_cli_line(capsys, monkeypatch):
    monkeypatch.delenv("MMNTP_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("MMNTP_PROCESS_ID", raising=False)
    assert main(["train", "--config", str(EXPERIMENT), "--coordinator", "127.0.0.1:1234"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mmntp train: error: --distributed: --coordinator given but not --num-processes")


def test_start_up_failures_are_one_line(tmp_path):
    with pytest.raises(DistributedError, match="could not reach the coordinator 127.0.0.1:.* within 1 s"):
        initialize(Launch(f"127.0.0.1:{free_port()}", 2, 1, init_timeout_s=1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(DistributedError, match="already in use"):
            initialize(Launch(f"127.0.0.1:{taken.getsockname()[1]}", 2, 0))
    env = clean_env(1)
    out = subprocess.run([sys.executable, "-m", "mmntp_jax.cli", "train", "--distributed", "--config", str(EXPERIMENT),
                          "--workdir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mmntp train: error: --distributed found no cluster environment (SLURM")
    assert "Traceback" not in out.stderr


def test_one_process_stops_at_once_on_a_signal():
    stop = AgreedStop()
    with stop.installed():
        assert stop.agree() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agree() == "SIGTERM"


@pytest.mark.parametrize("count", [1, 2, 4])
def test_every_process_count_sees_the_same_global_batches(count):
    config = tiny_config(train=dict(batch_size=8))
    whole = GlobalBatches(config, streams=2)
    expected = [next(whole) for _ in range(3)]
    parts = [GlobalBatches(config, process_index=p, process_count=count, streams=2) for p in range(count)]
    for k in range(2):  # two steps, then a "checkpoint": the merged per-process states
        got = [next(p) for p in parts]
        for key in expected[k]:
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), expected[k][key])
    states = [p.get_state() for p in parts]
    merged = {"streams": 2, "stream_states": {s: v for st in states for s, v in st["stream_states"].items()}}
    resumed = GlobalBatches(config, process_index=0, process_count=1)  # a 1-process run restoring it
    resumed.set_state(merged)
    batch = next(resumed)
    for key in expected[2]:
        np.testing.assert_array_equal(batch[key], expected[2][key])
    assert stream_slices(8, 2, 3, 4) == [(1, 2, 4)]
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        stream_slices(8, 2, 0, 3)


def test_iterator_files_merge_whatever_wrote_them(tmp_path):
    legacy = {"window_start": 0, "carry": [], "window": 1, "emitted": 3}  # written before data streams: stream i of n
    for i in range(2):
        (tmp_path / f"process_{i}-of-2.json").write_text(json.dumps({**legacy, "emitted": i}))
    assert merge_process_states(tmp_path) == {"streams": 2, "stream_states": {"0": {**legacy, "emitted": 0}, "1": {**legacy, "emitted": 1}}}
    (tmp_path / "process_1-of-2.json").unlink()
    with pytest.raises(ValueError, match="missing process_1-of-2.json"):
        merge_process_states(tmp_path)
    one = tmp_path / "one"
    one.mkdir()
    (one / "process_0-of-1.json").write_text(json.dumps({"streams": 2, "stream_states": {"0": legacy}}))
    with pytest.raises(ValueError, match=r"no process saved the state of data streams \[1\]"):
        merge_process_states(one)


def copy_up_to(workdir, step: int, destination):
    """The workdir as a run interrupted right after checkpoint `step` left it."""
    shutil.copytree(workdir, destination)
    for path in (destination / "checkpoints").iterdir():
        if int(path.name) > step:
            shutil.rmtree(path)
    records = [r for r in read_metrics(destination) if r["step"] <= step]
    (destination / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return destination


@pytest.mark.slow
@pytest.mark.parametrize("count,devices", [(1, 4), (4, 1)])
def test_two_process_checkpoint_resumes_with_another_count(two_process_run, tmp_path, count, devices):
    workdir, _ = two_process_run
    resumed = copy_up_to(workdir, 2, tmp_path / "resumed")
    stderr = run(resumed, count, devices)
    assert "resumed from step 2" in stderr[0]
    expected, got = train_losses(workdir), train_losses(resumed)
    np.testing.assert_allclose([got[3], got[4]], [expected[3], expected[4]], rtol=1e-5)
    assert data_state(resumed, 4) == data_state(workdir, 4)  # the iterators continued exactly
    files = sorted(p.name for p in (resumed / "checkpoints" / "4" / "data").glob("process_*.json"))
    assert files == [f"process_{i}-of-{count}.json" for i in range(count)]


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_one_step_and_the_rerun_resumes(tmp_path):
    workdir, settings = tmp_path / "run", ("train.steps=200", "checkpoint.every=1000", "train.log_every=1")
    procs = launch(workdir, 2, 2, *settings, how="slurm")
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.get("step", 0) >= 3 for r in read_metrics(workdir)):
        assert all(p.poll() is None for p in procs), finish(procs)
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    results = finish(procs, timeout=120)
    assert [rc for rc, _ in results] == [130, 130], [err[-2000:] for _, err in results]
    stopped = {line.split("stopped at step ")[1].split(";")[0] for _, err in results for line in err.splitlines() if "stopped at step" in line}
    assert len(stopped) == 1 and all("SIGTERM: stopped at step" in err for _, err in results)
    step = int(stopped.pop())
    assert [p.name for p in (workdir / "checkpoints").iterdir()] == [str(step)]
    stderr = run(workdir, 2, 2, *settings, how="slurm")
    assert f"resumed from step {step}" in stderr[0] and "step 200: train/loss" in stderr[0]
