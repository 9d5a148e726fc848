"""`mmntp train`, `mmntp sample`, `mmntp eval` as a user runs them, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmntp_jax.train.metrics import read_metrics

EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py").read_text()  # the tiny experiment the CLI tests share


def mmntp(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mmntp_jax.cli", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "cli_tiny.py"
    path.write_text(EXPERIMENT)
    return path


def test_train_then_sample_then_eval(experiment, tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "xla_cache"
    out = mmntp("train", "--config", experiment, "--workdir", workdir, "--profile-steps", "1:2", "--set", f"train.compilation_cache={cache}")
    assert out.returncode == 0, out.stderr
    assert "step/s" in out.stderr or "s/step" in out.stderr  # the progress bar
    assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace written"
    assert any(cache.iterdir()), "the persistent compilation cache stayed empty"
    sample = mmntp("sample", "--workdir", workdir, "--prompt", "def ", "--max-new-tokens", "8")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("def ") and len(sample.stdout) > len("def ")
    hot = mmntp("sample", "--workdir", workdir, "--prompt", "x", "--temperature", "1.0", "--top-k", "5", "--num-samples", "2")
    assert hot.returncode == 0, hot.stderr
    assert len((workdir / "samples" / "samples.jsonl").read_text().splitlines()) == 3
    evaluated = mmntp("eval", "--workdir", workdir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    record = json.loads(evaluated.stdout)
    logged = [r["eval/loss"] for r in read_metrics(workdir) if "eval/loss" in r and r["step"] == 4]
    assert record["step"] == 4 and record["loss"] == pytest.approx(logged[0], rel=1e-5)
    again = mmntp("train", "--config", experiment, "--workdir", workdir)
    assert again.returncode == 0 and "complete" in again.stderr


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_ctrl_c_saves_and_the_same_command_resumes(experiment, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmntp_jax.cli", "train", "--config", str(experiment), "--workdir", str(workdir), "--set", "train.steps=400", "--set", "checkpoint.every=1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.get("step", 0) >= 2 for r in read_metrics(workdir)):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT: stopped at step" in err
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 2 <= saved[-1] < 400
    shorter = ["--set", "train.steps=" + str(saved[-1] + 2), "--set", "checkpoint.every=1000"]
    refused = mmntp("train", "--config", experiment, "--workdir", workdir, *shorter)  # another learning-rate schedule
    assert refused.returncode == 2 and "train.on_schedule_change=restart_schedule" in refused.stderr, refused.stderr
    resumed = mmntp("train", "--config", experiment, "--workdir", workdir, *shorter, "--set", "train.on_schedule_change=restart_schedule")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {saved[-1]}" in resumed.stderr and f"a new learning-rate schedule starts at step {saved[-1]}" in resumed.stderr


def test_errors_are_one_line(tmp_path):
    out = mmntp("sample", "--workdir", tmp_path / "nothing")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mmntp sample: error: {tmp_path / 'nothing'} is not a training workdir: config.json is missing"]
    missing = mmntp("train", "--config", tmp_path / "nope.py")
    assert missing.returncode == 2 and "nope.py: not found" in missing.stderr
    assert mmntp("--help").returncode == 0


def test_cpu_devices_sets_the_mesh_size(experiment):
    """`--cpu-devices 3` gives a 3-device mesh: batch 8 no longer divides it; 0 is refused."""
    three = mmntp("train", "--config", experiment, "--cpu-devices", "3", "--print-config")
    assert three.returncode == 2
    assert "train.batch_size': micro-batch 8 is not divisible by mesh data×fsdp=3" in three.stderr
    two = mmntp("train", "--config", experiment, "--cpu-devices", "2", "--print-config")
    assert two.returncode == 0 and json.loads(two.stdout)["train"]["batch_size"] == 8
    image_fsq = Path(__file__).parents[1] / "experiments" / "tokenizers" / "image_fsq.py"
    tokenizer = mmntp("tokenizer", "train", "--config", image_fsq, "--cpu-devices", "3", "--print-config")
    assert tokenizer.returncode == 2 and "'train.batch_size': 16 is not divisible by mesh data×fsdp=3" in tokenizer.stderr
    zero = mmntp("tokenizer", "train", "--config", image_fsq, "--cpu-devices", "0", "--print-config")
    assert zero.returncode == 2 and "--cpu-devices: expected a device count ≥ 1, got 0" in zero.stderr
