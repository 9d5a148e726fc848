"""A damaged checkpoint costs the steps since the previous one, never the run.

Reference: an uninterrupted run of the same configuration. A copy of it, cut
back to step 4 (as if killed before step 6) and with checkpoint 4 damaged, must
resume from step 2, move 4 aside, save 4 again and end with bitwise the same
parameters; a finished run whose final checkpoint was damaged trains its
last steps again instead of reporting itself complete. Also: leftover orbax temporary folders are removed, all
checkpoints unreadable is one CLI error line, `mm.load` skips a damaged
checkpoint without moving it, and a second SIGINT cannot abort the final save.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import mmntp_jax as mm
from mmntp_jax import cli
from mmntp_jax.errors import CheckpointRestoreError
from mmntp_jax.train.backbone import train
from tiny import tiny_config

SMALL = dict(model=dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64),
             train=dict(steps=6, eval_every=6, eval_batches=1), checkpoint=dict(every=2))
EXPERIMENT = f"""from tiny import tiny_config

def get_config():
    return tiny_config(**{SMALL!r})
"""
TMP_SAVE = "5.orbax-checkpoint-tmp-1700000000000000"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_config(**SMALL), workdir, log=lambda _: None)
    return workdir


def killed_before_step_6(reference, workdir) -> Path:
    """A copy of the reference run as a run killed after saving step 4 would leave it."""
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    return workdir / "checkpoints"


def array_files(step_dir: Path) -> list[Path]:
    return sorted(path for path in (step_dir / "state").rglob("*") if path.is_file() and path.parent.name == "d")


def empty(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def half_copied(step_dir: Path) -> None:
    files = array_files(step_dir)
    files[0].write_bytes(files[0].read_bytes()[:7])
    files[-1].unlink()


def garbage_metadata(step_dir: Path) -> None:
    for name in ("_CHECKPOINT_METADATA", "state/_METADATA"):
        (step_dir / name).write_bytes(b"\x00garbage{")
    (step_dir.parent / "4.corrupt").mkdir()  # moved aside by an earlier recovery: the next free name is 4.corrupt.1


def assert_same_params(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("damage, aside", [(empty, "4.corrupt"), (half_copied, "4.corrupt"), (garbage_metadata, "4.corrupt.1")])
def test_resume_falls_back_past_a_damaged_latest_checkpoint(reference, tmp_path, damage, aside):
    checkpoints = killed_before_step_6(reference, tmp_path / "run")
    damage(checkpoints / "4")
    (checkpoints / TMP_SAVE).mkdir()
    (checkpoints / TMP_SAVE / "partial").write_bytes(b"x" * 100)
    lines = []
    summary = train(tiny_config(**SMALL), tmp_path / "run", log=lines.append)
    assert summary["step"] == 6
    assert f"resumed from step 2 in {tmp_path / 'run'}" in lines
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and f"checkpoint {checkpoints / '4'} is unreadable" in warned[0], lines
    assert warned[0].endswith(f"moved to {checkpoints / aside}")
    assert any(TMP_SAVE in line and line.startswith("removed 1 unfinished") for line in lines), lines
    assert not (checkpoints / TMP_SAVE).exists()
    assert (checkpoints / aside).is_dir()
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4", "6"]  # 4 saved again
    resumed, straight = mm.load(tmp_path / "run"), mm.load(reference)
    assert resumed.step == straight.step == 6
    assert_same_params(resumed.params, straight.params)
    assert_same_params(mm.load(tmp_path / "run", step=4).params, mm.load(reference, step=4).params)


def overwritten(step_dir: Path) -> None:
    """Every array file keeps its size but holds random bytes (orbax's metadata files are intact)."""
    rng = np.random.default_rng(0)
    for path in array_files(step_dir):
        path.write_bytes(rng.bytes(path.stat().st_size))


def truncated(step_dir: Path) -> None:
    for path in array_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [overwritten, truncated])
def test_a_finished_run_with_a_damaged_final_checkpoint_trains_its_last_steps_again(reference, tmp_path, damage):
    shutil.copytree(reference, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    damage(checkpoints / "6")
    lines = []
    summary = train(tiny_config(**SMALL), tmp_path / "run", log=lines.append)
    assert summary["step"] == 6 and not summary.get("complete"), lines
    assert not any("is complete" in line for line in lines), lines
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and f"checkpoint {checkpoints / '6'} is unreadable" in warned[0], lines
    assert f"resumed from step 4 in {tmp_path / 'run'}" in lines
    assert (checkpoints / "6.corrupt").is_dir()
    assert_same_params(mm.load(tmp_path / "run").params, mm.load(reference).params)
    again = []
    assert train(tiny_config(**SMALL), tmp_path / "run", log=again.append)["complete"]
    assert again[-1] == f"run in {tmp_path / 'run'} is complete: step 6 of 6", again


def test_all_checkpoints_unreadable_is_one_cli_line(reference, tmp_path, monkeypatch, capfd):
    checkpoints = killed_before_step_6(reference, tmp_path / "run")
    for step in ("2", "4"):
        half_copied(checkpoints / step)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    code = cli.main(["train", "--config", "exp.py", "--workdir", "run"])
    err = capfd.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"mmntp train: error: no readable checkpoint in {checkpoints} (step 4: ")
    assert "; step 2: ValueError: " in err and "Traceback" not in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]  # nothing moved: the user decides


def test_never_committed_checkpoints_start_fresh(reference, tmp_path):
    checkpoints = killed_before_step_6(reference, tmp_path / "run")
    shutil.rmtree(checkpoints / "2")
    empty(checkpoints / "4")
    lines = []
    train(tiny_config(**SMALL), tmp_path / "run", log=lines.append)
    assert not any(line.startswith("resumed") for line in lines)
    assert sum(line.startswith("warning:") for line in lines) == 1 and (checkpoints / "4.corrupt").is_dir()
    assert_same_params(mm.load(tmp_path / "run").params, mm.load(reference).params)


def test_load_skips_a_damaged_checkpoint_read_only(reference, tmp_path):
    checkpoints = killed_before_step_6(reference, tmp_path / "run")
    half_copied(checkpoints / "4")
    with pytest.warns(RuntimeWarning, match=f"checkpoint {checkpoints / '4'} is unreadable .*; skipped, left in place"):
        run = mm.load(tmp_path / "run")
    assert run.step == 2
    assert_same_params(run.params, mm.load(reference, step=2).params)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]
    with pytest.raises(CheckpointRestoreError, match=f"^checkpoint {checkpoints / '4'} cannot be read \\(ValueError: "):
        mm.load(tmp_path / "run", step=4)


SIGNALS = """import os, signal, sys
from mmntp_jax import cli
from mmntp_jax.train.checkpoint import Checkpointer

check, save, wait = Checkpointer.check, Checkpointer.save, Checkpointer.wait
sent = []

def interrupt():
    sent.append(signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # delivered before the next line runs

def check_after_step_1(self, **kwargs):  # the first Ctrl-C, during step 1
    if not sent:
        interrupt()
    return check(self, **kwargs)

def save_interrupted(self, *args, **kwargs):  # more while the final save is in flight
    saved = save(self, *args, **kwargs)
    interrupt()
    return saved

def wait_interrupted(self):
    interrupt()
    return wait(self)

Checkpointer.check, Checkpointer.save, Checkpointer.wait = check_after_step_1, save_interrupted, wait_interrupted
code = cli.main(sys.argv[1:])
print(f"signals sent: {len(sent)}", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_second_sigint_cannot_abort_the_final_save(tmp_path):
    (tmp_path / "driver.py").write_text(SIGNALS)
    experiment = Path(__file__).with_name("cli_tiny_experiment.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [sys.executable, str(tmp_path / "driver.py"), "train", "--config", str(experiment), "--workdir", str(tmp_path / "run"),
               "--set", "train.compilation_cache=", "--set", "train.progress=false", "--set", "checkpoint.async_save=true"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "signals sent: 3" in done.stderr
    assert f"SIGINT: stopped at step 1; checkpoint saved in {tmp_path / 'run'}" in done.stderr
    assert "interrupted" not in done.stderr and "Traceback" not in done.stderr
    assert mm.load(tmp_path / "run").step == 1
