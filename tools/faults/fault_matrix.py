"""The fault matrix: faults a long run meets, injected into real `mmntp train` runs, and what was lost.

    python tools/faults/fault_matrix.py                       # every fault, ≥ 20 kill -9 trials
    python tools/faults/fault_matrix.py --quick               # fewer trials of each (tests/test_fault_matrix.py)
    python tools/faults/fault_matrix.py --only kill9,sigterm --kill-trials 40 --seed 3 --out /tmp/fm

Every run is the CLI in a subprocess, `nice -n 5 python -m mmntp_jax.cli train --config
tests/cli_tiny_experiment.py --workdir W --set …` on one CPU device, with a persistent
compilation cache (`--cache`, default the library's own ~/.cache/mmntp_jax/xla). A fault is
injected, then the same command is rerun the way a scheduler would, and the result is compared
with an uninterrupted run of the same command: final parameters bitwise (`mm.load(W).params`),
checkpoints, skip counts and reports.

Prints one JSON line per fault — `fault`, `trials`, `survived`, `data_lost`, `simulated`,
`command`, `seconds`, `details`, `failures` — and a last line with `"fault": "summary"` (totals,
`not_run` with the reason for each fault left out, the command line). Every trial is also a line of
OUT/trials.jsonl; the workdirs of failed trials are kept under OUT.

A trial *survives* when the run ends the way docs/reliability.md promises for that fault (a clean
exit code and one error line where an error is due) and the same command, rerun, completes.
*Data lost* counts the trials where anything was lost: final parameters not bitwise equal to the
uninterrupted run's, a checkpoint that should be intact is not, a step or a record dropped without
being counted; a trial that never completes counts as lost too.

Faults (`--only` keys):
  kill9             SIGKILL at random points: a random time after start, a random training step, or
                    while an async checkpoint save is in flight; 1–3 kills per trial, then the same
                    command until exit 0
  sigterm           SIGTERM during training or during a save (half the trials send a second SIGTERM
                    50 ms later): exit 130 with the step saved, then the rerun
  corrupt           the newest checkpoint of a run killed after saving it, damaged (array file
                    truncated, overwritten with random bytes or deleted, metadata garbage, folder
                    emptied): the rerun restores the previous one
  corrupt_final     every array file of a finished run's final checkpoint truncated or overwritten,
                    then the rerun
  readonly          the checkpoint folder (or the whole workdir) read-only: a read-only bind mount
                    in a private mount namespace (`unshare --user --map-root-user --mount`)
  diskfull          the checkpoint folder on a tmpfs with less room than one more checkpoint
                    (same namespace)
  nan               a burst of 1 … max_bad_steps−1 batches whose loss mask is NaN (a driver that
                    wraps the data stream, then calls mmntp_jax.cli.main); one run straight, one
                    killed inside the burst and rerun
  divergence        optim.lr=1e20: exit 3, one line, the newest checkpoint the last applied step
  truncated_record  a shard record cut short, data.on_error=stop and =skip
  out_of_range_id   a token id past the vocabulary, data.on_error=stop and =skip
  process_count     a 2-process run (`--coordinator`, gloo) resumed in 1 process (and in 4)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


class Matrix:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = str(Path(os.path.expanduser(args.cache)).resolve()) if args.cache else ""
        import numpy as np

        self.rng = np.random.default_rng(args.seed)
        self.trials_log = open(self.out / "trials.jsonl", "a")
        self.references: dict[str, Path] = {}
        self.loaded: dict[tuple, tuple] = {}
        self.driver = self.out / "drivers" / "nan_driver.py"
        self.driver.parent.mkdir(exist_ok=True)
        self.driver.write_text(NAN_DRIVER)

    # commands

    def env(self, devices: int = 1, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARS)}
        env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices > 1 else "")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def settings(self, settings) -> list[str]:
        base = ["train.progress=false", f"train.compilation_cache={self.cache}"]
        return [a for s in (*base, *settings) for a in ("--set", s)]

    def command(self, workdir: Path, settings, driver: Path | None = None, extra=()) -> list:
        program = [sys.executable, driver] if driver else [sys.executable, "-m", "mmntp_jax.cli"]
        return ["nice", "-n", "5", *program, "train", "--config", EXPERIMENT, "--workdir", workdir, *self.settings(settings), *extra]

    @staticmethod
    def shown(settings, driver: str | None = None) -> str:
        program = f"python {driver}" if driver else "mmntp"
        return f"{program} train --config tests/cli_tiny_experiment.py --workdir W " + " ".join(f"--set {s}" for s in settings)

    def start(self, workdir: Path, settings, name: str, *, driver=None, env=None, extra=()) -> Proc:
        return Proc(self.command(workdir, settings, driver, extra), env or self.env(), workdir.parent / "logs", name)

    def run(self, workdir: Path, settings, name: str, **kw) -> Proc:
        proc = self.start(workdir, settings, name, **kw)
        proc.rc = proc.wait()
        return proc

    def rerun_until_complete(self, workdir: Path, settings, name: str, attempts: int = 3, **kw) -> tuple[Proc | None, list[int]]:
        """The same command until it exits 0 (at most `attempts` times): (the last run, exit codes)."""
        codes, proc = [], None
        for i in range(attempts):
            proc = self.run(workdir, settings, f"{name}-rerun{i}", **kw)
            codes.append(proc.rc)
            if proc.rc == 0:
                break
        return proc, codes

    def reference(self, key: str, settings, **kw) -> Path:
        """An uninterrupted run of the command (made once per matrix)."""
        if key not in self.references:
            workdir = self.out / f"reference-{key}" / "run"
            if workdir.parent.exists():
                shutil.rmtree(workdir.parent)
            proc = self.run(workdir, settings, "reference", **kw)
            if proc.rc != 0:
                raise RuntimeError(f"the uninterrupted reference run {key} failed (exit {proc.rc}): {proc.stderr[-2000:]}")
            self.references[key] = workdir
        return self.references[key]

    def trial_dir(self, fault: str, index: int) -> Path:
        path = self.out / fault / f"trial-{index:02d}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def record(self, fault: str, trial: dict, folder: Path | None) -> dict:
        trial = {"fault": fault, **trial}
        self.trials_log.write(json.dumps(trial, default=str) + "\n")
        self.trials_log.flush()
        if folder is not None and trial["survived"] and not trial["lost"] and not self.args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return trial

    def reference_params(self, reference: Path, step: int | None = None):
        key = (str(reference), step)
        if key not in self.loaded:
            self.loaded[key] = params(reference, step)
        return self.loaded[key]

    def verdict(self, workdir: Path, reference: Path) -> dict:
        """The final parameters against the reference's: step, bitwise, largest difference."""
        try:
            step, got, warned = params(workdir)
        except Exception as err:  # nothing readable: the trial lost its work
            return {"step": None, "bitwise": False, "load_error": f"{type(err).__name__}: {err}"[:500]}
        ref_step, want, _ = self.reference_params(reference)
        return {"step": step, "reference_step": ref_step, **compare(got, want), "load_warnings": warned}

    # faults

    def fault_kill9(self) -> dict:
        ref = self.reference("steady", STEADY)
        control_dir = self.trial_dir("kill9", 0) / "run"
        control = self.run(control_dir, STEADY, "control")
        control_check = self.verdict(control_dir, ref) if control.rc == 0 else {"bitwise": False}
        run_s, steps = control.seconds, 24
        if control.rc == 0 and control_check["bitwise"] and not self.args.keep:
            shutil.rmtree(control_dir.parent)
        trials, attempts, tally = [], 0, {"kills": 0, "in_flight": 0, "left": 0, "by_mode": {}}
        while len(trials) < self.args.kill_trials and attempts < 2 * self.args.kill_trials + 5:
            attempts += 1
            folder = self.trial_dir("kill9", len(trials) + 1)
            workdir, runs, failures, done = folder / "run", [], [], None
            for k in range(int(self.rng.integers(1, 4))):
                mode = str(self.rng.choice(["time", "step", "save"]))
                delay, target_step, target_save, jitter = (float(self.rng.uniform(0, run_s)), int(self.rng.integers(1, steps)),
                                                           int(self.rng.integers(1, 4)), float(self.rng.uniform(0, 0.04)))
                leftovers, offset = tmp_saves(workdir), metrics_size(workdir)
                proc = self.start(workdir, STEADY, f"run{k}")
                seen = set()
                while proc.alive():
                    elapsed = time.monotonic() - proc.t0
                    if mode == "time" and elapsed >= delay:
                        break
                    if mode == "step" and any(r["step"] >= target_step for r in train_records(workdir, offset)):
                        time.sleep(jitter * 2)
                        break
                    if mode == "save":
                        seen |= tmp_saves(workdir) - leftovers
                        if len(seen) >= target_save:
                            time.sleep(jitter / 4)
                            break
                    time.sleep(0.002 if mode == "save" else 0.01)
                in_flight = tmp_saves(workdir) - leftovers
                if not proc.alive():  # it finished before the kill point: this run was the rerun
                    done = proc
                    runs.append({"killed": False, "exit": proc.wait(), "resumed_from": resumed_from(proc.stderr)})
                    break
                proc.popen.send_signal(signal.SIGKILL)
                proc.wait()
                left = tmp_saves(workdir) - leftovers
                reached = max((r["step"] for r in train_records(workdir, offset)), default=None)
                runs.append({"killed": True, "mode": mode, "at_s": round(proc.seconds, 3), "resumed_from": resumed_from(proc.stderr),
                             "step_reached": reached, "step_folders": committed_steps(workdir), "save_in_flight": sorted(in_flight),
                             "unfinished_save_left": sorted(left)})
            kills = [r for r in runs if r["killed"]]
            if not kills:  # the first run finished before its kill point: draw again
                shutil.rmtree(folder, ignore_errors=True)
                continue
            codes = [runs[-1]["exit"]] if done is not None else []
            if done is None or done.rc != 0:
                done, more = self.rerun_until_complete(workdir, STEADY, "rerun")
                codes += more
                runs += [{"killed": False, "exit": c} for c in more]
                runs[-1]["resumed_from"] = resumed_from(done.stderr)
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            survived = codes[-1] == 0 and codes.count(0) == 1 and len(codes) <= 3
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == steps)
            if not survived:
                failures.append(f"exit codes after the last kill {codes}: {error_lines(done.stderr) or done.stderr.splitlines()[-1:]}")
            tally["kills"] += len(kills)
            tally["in_flight"] += sum(bool(k["save_in_flight"]) for k in kills)
            tally["left"] += sum(bool(k["unfinished_save_left"]) for k in kills)
            for k in kills:
                tally["by_mode"][k["mode"]] = tally["by_mode"].get(k["mode"], 0) + 1
            trials.append(self.record("kill9", {"trial": len(trials) + 1, "survived": survived, "lost": lost, "runs": runs,
                                                "exit_codes_after_last_kill": codes, "final": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "SIGKILL to the CLI process at a random time after start, after a random training step, or while an async save's "
                "*.orbax-checkpoint-tmp-* folder exists (1–3 kills per trial), then the same command until exit 0; final params vs an uninterrupted run",
                "command": self.shown(STEADY) + "; kill -9 PID; rerun until exit 0",
                "details": {"kills": tally["kills"], "kills_during_a_save": tally["in_flight"], "kills_leaving_an_unfinished_save": tally["left"],
                            "kills_by_mode": tally["by_mode"], "uninterrupted_run_s": round(run_s, 1),
                            "control_run_bitwise": control_check.get("bitwise")}}

    def fault_sigterm(self) -> dict:
        ref = self.reference("steady", STEADY)
        trials, attempts, n = [], 0, self.args.sigterm_trials
        while len(trials) < n and attempts < 2 * n + 4:
            attempts += 1
            index = len(trials)
            folder = self.trial_dir("sigterm", index + 1)
            workdir, failures = folder / "run", []
            mode, twice = ("step", "save")[index % 2], index % 4 >= 2
            target_step, target_save = int(self.rng.integers(2, 20)), int(self.rng.integers(1, 6))
            proc, seen = self.start(workdir, STEADY, "signalled"), set()
            while proc.alive():
                if mode == "step" and any(r["step"] >= target_step for r in train_records(workdir)):
                    break
                if mode == "save":
                    seen |= tmp_saves(workdir)
                    if len(seen) >= target_save:
                        break
                time.sleep(0.002 if mode == "save" else 0.01)
            if not proc.alive():
                proc.wait()
                shutil.rmtree(folder, ignore_errors=True)
                continue
            proc.popen.send_signal(signal.SIGTERM)
            if twice:
                time.sleep(0.05)
                if proc.alive():
                    proc.popen.send_signal(signal.SIGTERM)
            rc = proc.wait()
            stopped = re.findall(r"SIGTERM: stopped at step (\d+); checkpoint saved", proc.stderr)
            saved = int(stopped[-1]) if stopped else None
            if rc != 130 or saved is None:
                failures.append(f"exit {rc}, {'no stop line' if saved is None else 'stopped at ' + str(saved)}: {proc.stderr.splitlines()[-1:]}")
            elif saved not in committed_steps(workdir) or tmp_saves(workdir):
                failures.append(f"checkpoint {saved} missing or a save left unfinished: {checkpoint_names(workdir)}")
            last, codes = self.rerun_until_complete(workdir, STEADY, "final")
            if resumed_from(last.stderr) != saved:
                failures.append(f"resumed from {resumed_from(last.stderr)}, stopped at {saved}")
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            survived = not failures and codes == [0]
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
            trials.append(self.record("sigterm", {"trial": index + 1, "survived": survived, "lost": lost, "mode": mode, "signals": 2 if twice else 1,
                                                  "exit": rc, "stopped_at": saved, "rerun_exit_codes": codes, "final": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "SIGTERM after a random training step or while an async save is in flight; half the trials send a second "
                "SIGTERM 50 ms later; expect exit 130 with that step saved, then the same command resumes",
                "command": self.shown(STEADY) + "; kill -TERM PID; rerun", "details": {}}

    def damage(self, step_dir: Path, how: str, every_file: bool = False) -> str:
        files = array_files(step_dir)
        which = files if every_file else files[:1]
        named = f"all {len(files)} array files" if every_file else str(files[0].relative_to(step_dir))
        if how == "truncate":
            for f in which:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            return f"{named} truncated to half"
        if how == "garbage":
            for f in which:
                f.write_bytes(self.rng.integers(0, 256, f.stat().st_size, dtype="uint8").tobytes())
            return f"{named} overwritten with random bytes"
        if how == "delete":
            files[0].unlink()
            return f"{files[0].relative_to(step_dir)} deleted"
        if how == "metadata":
            for name in ("_CHECKPOINT_METADATA", "state/_METADATA"):
                (step_dir / name).write_bytes(b"\x00garbage{")
            return "_CHECKPOINT_METADATA and state/_METADATA garbage"
        if how == "empty":
            shutil.rmtree(step_dir)
            step_dir.mkdir()
            return "folder emptied"
        raise ValueError(how)

    def fault_corrupt(self, final: bool = False) -> dict:
        fault = "corrupt_final" if final else "corrupt"
        ref = self.reference("steady", STEADY)
        modes = (["truncate", "garbage"] if final else ["truncate", "garbage", "delete", "metadata", "empty"])[: self.args.corrupt_trials]
        trials = []
        for i, how in enumerate(modes, 1):
            folder = self.trial_dir(fault, i)
            newest = 24 if final else 22
            workdir = cut_back(ref, folder / "run", newest)
            what = self.damage(workdir / "checkpoints" / str(newest), how, every_file=final)
            last, codes = self.rerun_until_complete(workdir, STEADY, "rerun")
            failures = []
            if codes[-1] != 0:
                failures.append(f"rerun exits {codes}: {error_lines(last.stderr) or last.stderr.splitlines()[-1:]}")
            elif not final:
                warned = [l for l in last.stderr.splitlines() if "warning:" in l and f"checkpoints/{newest} is unreadable" in l]
                if len(warned) != 1 or resumed_from(last.stderr) != newest - 2:
                    failures.append(f"expected one warning for checkpoint {newest} and a resume from {newest - 2}: {last.stderr.splitlines()[:6]}")
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
            if final and lost:
                failures.append(f"after the rerun ({'; '.join(last.stderr.strip().splitlines()[-1:])}) the newest readable checkpoint is step "
                                f"{check.get('step')}: {check.get('load_warnings')}")
            trials.append(self.record(fault, {"trial": i, "survived": codes[-1] == 0 and (final or not failures), "lost": lost, "damage": what,
                                              "rerun_exit_codes": codes, "resumed_from": resumed_from(last.stderr), "final": check,
                                              "failures": failures}, folder))
        if final:
            simulated = ("a finished 24-step run's final checkpoint damaged (every array file truncated to half, or overwritten with random bytes), "
                         "then the same command; expect the rerun to end with step 24 readable and bitwise equal")
        else:
            simulated = ("a run killed after checkpoint 22 (checkpoints 20 and 22 on disk), checkpoint 22 damaged: largest array file truncated to half, "
                         "overwritten with random bytes or deleted; metadata garbage; folder emptied; then the same command")
        return {"trials": trials, "simulated": simulated, "command": self.shown(STEADY) + "; damage checkpoints/<newest>; rerun", "details": {}}

    def namespace_ok(self) -> str | None:
        if not shutil.which("unshare"):
            return "`unshare` is not installed"
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"], capture_output=True, text=True)
        return None if probe.returncode == 0 else f"no private mount namespace with tmpfs (unshare: {probe.stderr.strip()[:160]})"

    def in_namespace(self, workdir: Path, settings, name: str, script: str) -> Proc:
        """The training command, run by `script` (its `$RUN`) in a private user and mount namespace."""
        cmd = " ".join(f"'{c}'" for c in self.command(workdir, settings))
        shell = f"set -e\nRUN=\"{cmd}\"\n{script}"
        proc = Proc(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell], self.env(), workdir.parent / "logs", name)
        proc.rc = proc.wait()
        return proc

    def storage_trial(self, fault: str, index: int, variant: str, ref: Path) -> dict:
        folder = self.trial_dir(fault, index)
        workdir = cut_back(ref, folder / "run", 20)
        checkpoints, failures = workdir / "checkpoints", []
        if variant == "checkpoints read-only":
            script = f'mount --bind "{checkpoints}" "{checkpoints}"\nmount -o remount,bind,ro "{checkpoints}"\neval "$RUN"'
        elif variant == "workdir read-only":
            script = f'mount --bind "{workdir}" "{workdir}"\nmount -o remount,bind,ro "{workdir}"\neval "$RUN"'
        else:  # disk full: the checkpoints on a tmpfs with room for less than one more checkpoint
            one = sum(p.stat().st_size for p in (checkpoints / "20").rglob("*") if p.is_file())
            disk, after = folder / "checkpoints.before", folder / "checkpoints.after"
            shutil.move(checkpoints, disk)
            checkpoints.mkdir()
            used = sum(-(-p.stat().st_size // 4096) * 4096 for p in disk.rglob("*") if p.is_file())
            size = used + one // 2 if variant == "disk full" else 4096 * 4
            if variant != "disk full":  # a fresh run on a nearly full disk: the first save fails, nothing to keep
                shutil.rmtree(disk)
                disk.mkdir()
                shutil.rmtree(workdir)
                workdir.mkdir()
                checkpoints.mkdir()
            script = (f'mount -t tmpfs -o size={size} tmpfs "{checkpoints}"\ncp -a "{disk}/." "{checkpoints}/"\nset +e\neval "$RUN"\nrc=$?\n'
                      f'mkdir -p "{after}"\ncp -a "{checkpoints}/." "{after}/"\nexit $rc')
        proc = self.in_namespace(workdir, STEADY, "faulted", script)
        if variant.startswith("disk full") or variant.startswith("fresh"):
            checkpoints.rmdir()
            shutil.move(folder / "checkpoints.after", checkpoints)
            shutil.rmtree(folder / "checkpoints.before", ignore_errors=True)
        line = error_lines(proc.stderr)
        if proc.rc != 2 or not one_line_error(proc.stderr):
            failures.append(f"expected exit 2 and one error line, got exit {proc.rc}: {proc.stderr.strip().splitlines()[-3:]}")
        intact = None
        if variant.startswith("fresh"):
            intact = committed_steps(workdir) == []
        else:
            check = self.verdict(workdir, ref)
            step = check["step"]
            intact = step == 20 and compare(params(workdir)[1], self.reference_params(ref, 20)[1])["bitwise"] and committed_steps(workdir) == [20]
            if not intact:
                failures.append(f"checkpoint 20 not intact: newest readable {step} {check.get('load_error', '')}, on disk {checkpoint_names(workdir)}")
        last, codes = self.rerun_until_complete(workdir, STEADY, "rerun")
        check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
        survived = not failures and codes[-1] == 0
        lost = not (intact and codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
        return self.record(fault, {"trial": index, "variant": variant, "survived": survived, "lost": lost, "exit": proc.rc, "error": line[-1:],
                                   "faulted_run_s": round(proc.seconds, 1), "previous_intact": intact, "rerun_exit_codes": codes,
                                   "resumed_from": resumed_from(last.stderr), "final": check, "failures": failures}, folder)

    def fault_readonly(self) -> dict:
        ref = self.reference("steady", STEADY)
        variants = ["checkpoints read-only", "workdir read-only"][: self.args.storage_trials]
        trials = [self.storage_trial("readonly", i, v, ref) for i, v in enumerate(variants, 1)]
        seconds = {t["variant"]: t["faulted_run_s"] for t in trials}
        return {"trials": trials, "details": {"seconds_to_the_error": seconds},
                "simulated": "a run killed after checkpoint 20, resumed with WORKDIR/checkpoints (or the whole WORKDIR) bind-mounted "
                "read-only in `unshare --user --map-root-user --mount` (EROFS; chmod does not stop root); expect exit 2, one line, checkpoint 20 "
                "intact; then the same command without the mount", "command": "unshare -rm sh -c 'mount --bind W/checkpoints W/checkpoints; "
                "mount -o remount,bind,ro W/checkpoints; " + self.shown(STEADY) + "'; then the command again"}

    def fault_diskfull(self) -> dict:
        ref = self.reference("steady", STEADY)
        variants = ["disk full", "fresh run, disk full at the first save"][: self.args.storage_trials]
        trials = [self.storage_trial("diskfull", i, v, ref) for i, v in enumerate(variants, 1)]
        seconds = {t["variant"]: t["faulted_run_s"] for t in trials}
        return {"trials": trials, "details": {"seconds_to_the_error": seconds},
                "simulated": "WORKDIR/checkpoints on a tmpfs (in `unshare --user --map-root-user --mount`) holding checkpoint 20 "
                "with room for half a checkpoint more (ENOSPC at the next save), or a fresh run on a 16 KiB tmpfs; expect exit 2, one line, "
                "checkpoint 20 intact; then the same command on the real disk", "command": "unshare -rm sh -c 'mount -t tmpfs -o size=N tmpfs "
                "W/checkpoints; " + self.shown(STEADY) + "'; then the command again"}

    def fault_nan(self) -> dict:
        from mmntp_jax.config import TrainConfig

        max_bad = TrainConfig().max_bad_steps
        trials = []
        for i in range(1, self.args.nan_trials + 1):
            folder = self.trial_dir("nan", i)
            length = int(self.rng.integers(1, max_bad))
            first = int(self.rng.integers(3, 24 - length))
            burst = list(range(first, first + length))
            env = self.env(FAULT_NAN_STEPS=",".join(map(str, burst)))
            straight = self.run(folder / "straight", STEADY, "straight", driver=self.driver, env=env)
            failures, lost = [], False
            if straight.rc != 0:
                failures.append(f"straight run exited {straight.rc}: {error_lines(straight.stderr) or straight.stderr.splitlines()[-1:]}")
            logged = sorted(int(s) for s in re.findall(r"step (\d+): not applied \(loss is nan\)", straight.stderr))
            records = train_records(folder / "straight")
            counted = records[-1].get("train/skipped_steps") if records else None
            if logged != burst or counted != length:
                failures.append(f"burst {burst}: logged {logged}, counted {counted}")
                lost = True
            # the same burst, killed inside it, then rerun: the same parameters and count
            workdir = folder / "killed"
            proc = self.start(workdir, STEADY, "killed", driver=self.driver, env=env)
            target = first + length // 2
            while proc.alive() and not any(r["step"] >= target for r in train_records(workdir)):
                time.sleep(0.005)
            killed = proc.alive()
            if killed:
                proc.popen.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = max((r["step"] for r in train_records(workdir)), default=None) if killed else None
            last, codes = self.rerun_until_complete(workdir, STEADY, "killed", driver=self.driver, env=env)
            resumed_records = train_records(workdir)
            resumed_count = resumed_records[-1].get("train/skipped_steps") if resumed_records else None
            check = {"bitwise": False}
            if codes[-1] == 0 and straight.rc == 0:
                step, got, _ = params(workdir)
                _, want, _ = params(folder / "straight")
                check = {"step": step, **compare(got, want), "finite": all_finite(got)}
            if codes[-1] != 0 or resumed_count != length:
                failures.append(f"killed at step ≥ {target} and rerun: exits {codes}, counted {resumed_count}")
            lost = lost or not (check["bitwise"] and check.get("finite") and check.get("step") == 24 and resumed_count == length)
            trials.append(self.record("nan", {"trial": i, "survived": not failures, "lost": lost, "burst": burst, "logged": logged, "counted": counted,
                                              "killed_after_step": killed_at, "resumed_from": resumed_from(last.stderr), "rerun_exit_codes": codes,
                                              "counted_after_resume": resumed_count, "final_vs_straight": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": f"a driver wraps BackboneClient.next_batch so the batches of 1–{max_bad - 1} consecutive steps have a NaN "
                "loss mask, then calls mmntp_jax.cli.main; each trial runs straight, and again killed inside the burst and rerun; expect exit 0, each "
                "step logged and counted, the killed run bitwise equal to the straight one, parameters finite",
                "command": self.shown(STEADY, "OUT/drivers/nan_driver.py") + "  (FAULT_NAN_STEPS=first,…,last)", "details": {"max_bad_steps": max_bad}}

    def fault_divergence(self) -> dict:
        trials = []
        for i in range(1, self.args.divergence_trials + 1):
            folder = self.trial_dir("divergence", i)
            settings = ["optim.lr=1e20", "train.steps=12", "train.max_bad_steps=3", "checkpoint.every=2", "checkpoint.keep=10", f"train.seed={i - 1}"]
            workdir, failures = folder / "run", []
            proc = self.run(workdir, settings, "diverged")
            lines = error_lines(proc.stderr)
            newest_named = re.findall(r"the newest checkpoint, step (\d+),", lines[-1]) if lines else []
            streak = re.findall(r"steps (\d+)[–-](\d+): ", lines[-1]) if lines else []
            saved = committed_steps(workdir)
            if proc.rc != 3 or not one_line_error(proc.stderr) or "train.max_bad_steps=3" not in (lines or [""])[-1]:
                failures.append(f"expected exit 3 and one line naming train.max_bad_steps, got exit {proc.rc}: {proc.stderr.strip().splitlines()[-2:]}")
            lost = False
            if newest_named and streak:
                newest, first_bad = int(newest_named[0]), int(streak[0][0])
                step, got, _ = params(workdir)
                if not (saved and saved[-1] == newest == step and newest < first_bad and all_finite(got)):
                    failures.append(f"newest checkpoint {saved[-1:]} / loaded {step}, named {newest}, streak from {first_bad}, finite {all_finite(got)}")
                    lost = True
                if not list((workdir / "bad_batches").glob("step_*.npz")):
                    failures.append("no batch saved in bad_batches/")
            else:
                failures.append(f"the error line names no newest checkpoint or streak: {lines[-1:]}")
                lost = True
            trials.append(self.record("divergence", {"trial": i, "survived": not failures, "lost": lost, "exit": proc.rc, "error": lines[-1:],
                                                     "checkpoints": saved, "failures": failures}, folder))
        return {"trials": trials, "simulated": "optim.lr=1e20 with train.max_bad_steps=3 (seeds 0, 1, …); expect exit 3, one line naming the streak and "
                "the newest checkpoint, that checkpoint the newest on disk, before the streak, finite, and the bad batches saved",
                "command": self.shown(["optim.lr=1e20", "train.steps=12", "train.max_bad_steps=3", "checkpoint.every=2"]), "details": {}}

    def dataset(self) -> tuple[Path, Path, list[int]]:
        """A prepared data set of DOCS text documents, PER_SHARD a shard (`mmntp data prepare`), and each one's manifest line."""
        root = self.out / "dataset"
        manifest, clean = root / "m.jsonl", root / "clean"
        if not clean.exists():
            root.mkdir(parents=True, exist_ok=True)
            out, lines = [], []
            for i in range(DOCS):
                out.append(json.dumps({"segments": [{"type": "text", "text": f"document {i}: " + "abcdefgh" * (i % 5 + 1)}], "id": f"d{i}"}))
                lines.append(len(out))
                if i == 0:
                    out.append("")
            manifest.write_text("\n".join(out) + "\n")
            (root / "lines.json").write_text(json.dumps(lines))
            cmd = ["nice", "-n", "5", sys.executable, "-m", "mmntp_jax.cli", "data", "prepare", "--manifest", str(manifest), "--out", str(clean),
                   "--docs-per-shard", str(PER_SHARD), "--no-progress"]
            done = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
            if done.returncode != 0:
                raise RuntimeError(f"mmntp data prepare failed: {done.stderr[-1500:]}")
        return manifest, clean, json.loads((root / "lines.json").read_text())

    def fault_record(self, fault: str) -> dict:
        import grain
        import numpy as np
        from array_record.python.array_record_module import ArrayRecordWriter

        from mmntp_jax.data.records import REPORT_FILE
        from mmntp_jax.data.shards import HEADER
        from mmntp_jax.data.sources import eval_mask

        manifest, clean, lines = self.dataset()
        training = [int(i) for i in np.flatnonzero(~eval_mask(DOCS, EVAL_FRACTION))]
        trials = []
        for i, on_error in enumerate(["stop", "skip"][: self.args.record_trials], 1):
            folder = self.trial_dir(fault, i)
            data = folder / "data"
            shutil.copytree(clean, data)
            doc = int(self.rng.choice(training))
            shard, record = data / f"shard-{doc // PER_SHARD:05d}.array_record", doc % PER_SHARD
            source = grain.sources.ArrayRecordDataSource([str(shard)])
            records = [source[j] for j in range(len(source))]
            if fault == "truncated_record":
                records[record] = records[record][:-3]
            else:
                raw = bytearray(records[record])
                raw[HEADER.size + 4 : HEADER.size + 6] = (7000).to_bytes(2, "little")  # token 2 (uint16 ids)
                records[record] = bytes(raw)
            del source
            writer = ArrayRecordWriter(str(shard), "group_size:1")
            for r in records:
                writer.write(r)
            writer.close()
            settings = ["data.source=shards", f"data.path={data}", f"data.eval_fraction={EVAL_FRACTION}", "data.pack_window=4", "train.steps=8",
                        f"data.on_error={on_error}"]
            workdir, failures, lost = folder / "run", [], False
            proc = self.run(workdir, settings, on_error)
            line = error_lines(proc.stderr)
            named = f"{shard} record {record} ({manifest} line {lines[doc]})"
            if on_error == "stop":
                if proc.rc != 2 or not one_line_error(proc.stderr) or named not in line[-1]:
                    failures.append(f"expected exit 2 and one line naming {named}: exit {proc.rc}, {proc.stderr.strip().splitlines()[-2:]}")
                if committed_steps(workdir):
                    failures.append(f"checkpoints written from the bad data: {committed_steps(workdir)}")
                report, counts = [], []
            else:
                counts = [r.get("data/skipped_records", 0) for r in train_records(workdir)]
                report_file = workdir / REPORT_FILE
                report = [json.loads(t) for t in report_file.read_text().splitlines()] if report_file.exists() else []
                listed = [(Path(e["shard"]).name, e["record"], e.get("line")) for e in report]
                if proc.rc != 0:
                    failures.append(f"exit {proc.rc}: {proc.stderr.strip().splitlines()[-2:]}")
                if not counts or max(counts) < 1:
                    failures.append(f"data/skipped_records never ≥ 1: {counts}")
                    lost = True
                if listed != [(shard.name, record, lines[doc])]:
                    failures.append(f"the report lists {listed}, expected {[(shard.name, record, lines[doc])]}")
                    lost = True
            trials.append(self.record(fault, {"trial": i, "on_error": on_error, "survived": not failures, "lost": lost, "document": doc,
                                              "exit": proc.rc, "error": line[-1:], "report": report,
                                              "skipped_records_logged": max(counts, default=None), "failures": failures}, folder))
        what = "the last 3 bytes of one training record cut off" if fault == "truncated_record" else "token 2 of one training record set to 7000 (vocabulary 272)"
        return {"trials": trials, "simulated": f"a prepared set of {DOCS} documents ({PER_SHARD} a shard, `mmntp data prepare`), {what} (rewritten with "
                "ArrayRecordWriter); stop: exit 2 and one line naming shard, record and manifest line, no checkpoint; skip: exit 0, "
                "data/skipped_records ≥ 1, exactly that record in data_errors.jsonl",
                "command": self.shown(["data.source=shards", "data.path=DATA", "data.on_error=stop|skip"]), "details": {}}

    def multihost(self, workdir: Path, count: int, devices: int, settings, name: str) -> list[Proc]:
        port, procs = free_port(), []
        for i in range(count):
            extra, env = [], self.env(devices)
            if count > 1 and i == 0:
                extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", "0"]
            elif count > 1:
                env.update(MMNTP_COORDINATOR=f"127.0.0.1:{port}", MMNTP_NUM_PROCESSES=str(count), MMNTP_PROCESS_ID=str(i))
                extra = ["--distributed"]
            procs.append(self.start(workdir, settings, f"{name}-p{i}", env=env, extra=extra))
        for p in procs:
            p.rc = p.wait()
        return procs

    def fault_process_count(self) -> dict:
        import numpy as np

        from mmntp_jax.data.global_batches import merge_process_states

        settings = [*MULTIHOST, "train.steps=4", "checkpoint.every=2"]
        base = self.out / "process_count" / "two"
        if base.parent.exists():
            shutil.rmtree(base.parent)
        two = self.multihost(base / "run", 2, 2, settings, "two")
        if any(p.rc != 0 for p in two):
            raise RuntimeError(f"the 2-process run failed: {[p.stderr[-1500:] for p in two]}")
        losses = lambda w: {r["step"]: r["train/loss"] for r in train_records(w)}  # noqa: E731
        want_losses = losses(base / "run")
        trials = []
        for i, (count, devices) in enumerate([(1, 4), (4, 1)][: self.args.process_trials], 1):
            folder = self.trial_dir("process_count", i)
            workdir = cut_back(base / "run", folder / "run", 2)
            procs = self.multihost(workdir, count, devices, settings, f"resume{count}")
            failures, lost = [], False
            if any(p.rc != 0 for p in procs) or resumed_from(procs[0].stderr) != 2:
                failures.append(f"exits {[p.rc for p in procs]}, resumed from {resumed_from(procs[0].stderr)}: {procs[0].stderr.strip().splitlines()[-2:]}")
            got_losses = losses(workdir)
            rel = max((abs(got_losses.get(s, np.nan) - want_losses[s]) / abs(want_losses[s]) for s in (3, 4)), default=np.nan)
            same_data = False
            try:
                same_data = merge_process_states(workdir / "checkpoints" / "4" / "data") == merge_process_states(base / "run" / "checkpoints" / "4" / "data")
            except (OSError, ValueError) as err:
                failures.append(f"iterator state at step 4: {err}")
            check = {}
            if not failures:
                step, got, _ = params(workdir)
                check = {"step": step, **compare(got, params(base / "run")[1])}
            if not (same_data and rel <= 1e-5):
                failures.append(f"iterator state equal: {same_data}; largest relative loss difference {rel}")
                lost = True
            trials.append(self.record("process_count", {"trial": i, "survived": not failures, "lost": lost or bool(failures),
                                                        "resumed_with": f"{count} process(es) × {devices} device(s)", "iterator_state_equal": same_data,
                                                        "loss_rel_diff": rel, "final_vs_two_process": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "4 steps by 2 CLI processes (--coordinator / MMNTP_* variables, 2 CPU devices each, data=2 × fsdp=2 mesh), "
                "cut back to checkpoint 2, resumed by 1 process of 4 devices (and 4 of 1); expect the iterator state at step 4 equal and the losses "
                "within 1e-5 relative, as docs/multihost.md defines exactness",
                "command": self.shown(settings) + " --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I; then 1 process", "details": {}}


# -- driver ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials: 4 kill -9, 2 SIGTERM, 2 of each corrupt row, stop and skip per bad record, 1 of the rest")
    parser.add_argument("--only", default="", help=f"comma-separated faults: {','.join(FAULTS)}")
    parser.add_argument("--skip", default="", help="comma-separated faults to leave out")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points, bursts and damaged records")
    parser.add_argument("--out", default="", help="working folder (default: a new temporary one, printed in the summary)")
    parser.add_argument("--cache", default="~/.cache/mmntp_jax/xla", help="persistent XLA compilation cache for every run ('' = none)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs of trials that passed too")
    parser.add_argument("--kill-trials", type=int, default=None)
    parser.add_argument("--sigterm-trials", type=int, default=None)
    parser.add_argument("--corrupt-trials", type=int, default=None)
    parser.add_argument("--storage-trials", type=int, default=None)
    parser.add_argument("--nan-trials", type=int, default=None)
    parser.add_argument("--divergence-trials", type=int, default=None)
    parser.add_argument("--record-trials", type=int, default=None)
    parser.add_argument("--process-trials", type=int, default=None)
    args = parser.parse_args(argv)
    defaults = dict(kill_trials=(4, 20), sigterm_trials=(2, 4), corrupt_trials=(2, 5), storage_trials=(1, 2), nan_trials=(1, 3),
                    divergence_trials=(1, 2), record_trials=(2, 2), process_trials=(1, 2))
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    os.environ.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")  # this process only loads parameters
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)
    hook = sys.unraisablehook

    def quiet(unraisable):  # orbax's closed asyncio loop after a parameter load, as the CLI drops it too
        if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = quiet
    args.out = args.out or tempfile.mkdtemp(prefix="fault_matrix_")
    only = [f for f in args.only.split(",") if f] or list(FAULTS)
    unknown = [f for f in only + [f for f in args.skip.split(",") if f] if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; choose from {','.join(FAULTS)}")
    selected = [f for f in FAULTS if f in only and f not in args.skip.split(",")]
    matrix, t0 = Matrix(args), time.monotonic()
    not_run, rows = {}, []
    for fault in selected:
        why = None
        if fault in ("readonly", "diskfull"):
            why = matrix.namespace_ok()
        if fault in ("nan", "divergence"):
            from mmntp_jax.config import TrainConfig

            why = None if hasattr(TrainConfig(), "max_bad_steps") else "the non-finite step guard (train.max_bad_steps) is not in mmntp_jax/config.py"
        if why:
            not_run[NAMES[fault]] = why
            continue
        start = time.monotonic()
        try:
            if fault == "corrupt_final":
                result = matrix.fault_corrupt(final=True)
            elif fault in ("truncated_record", "out_of_range_id"):
                result = matrix.fault_record(fault)
            else:
                result = getattr(matrix, "fault_" + fault)()
        except Exception as err:  # a fault whose set-up failed is a row of its own, not the end of the matrix
            result = {"trials": [], "simulated": "", "command": "", "details": {}, "error": f"{type(err).__name__}: {err}"[:2000]}
        trials = result["trials"]
        row = {"fault": NAMES[fault], "key": fault, "trials": len(trials), "survived": sum(t["survived"] for t in trials),
               "data_lost": sum(bool(t["lost"]) for t in trials), "simulated": result["simulated"], "command": result["command"],
               "seconds": round(time.monotonic() - start, 1), "details": result["details"],
               "failures": [{"trial": t["trial"], "failures": t["failures"]} for t in trials if t["failures"] or not t["survived"] or t["lost"]]}
        if "error" in result:
            row["error"] = result["error"]
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    summary = {"fault": "summary", "faults": len(rows), "trials": sum(r["trials"] for r in rows), "survived": sum(r["survived"] for r in rows),
               "data_lost": sum(r["data_lost"] for r in rows),
               "all_survived": all(r["trials"] and r["survived"] == r["trials"] and "error" not in r for r in rows),
               "nothing_lost": all(r["data_lost"] == 0 for r in rows),
               "not_run": not_run, "seconds": round(time.monotonic() - t0, 1), "out": str(matrix.out), "seed": args.seed,
               "command": "python tools/faults/fault_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(summary), flush=True)
    matrix.trials_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
