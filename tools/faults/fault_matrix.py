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

Files: this one holds the command line and `Matrix` (runs, references, verdicts); the faults are
its mixins in process_faults.py (kill9, sigterm, nan, divergence, process_count) and
storage_faults.py (the checkpoint, storage and record faults); fault_harness.py holds the
subprocess wrapper and the readers of a workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fault_harness import (  # noqa: E402 — a sibling module (the tools run as scripts)
    CLUSTER_VARS, EXPERIMENT, FAULTS, NAMES, NAN_DRIVER, Proc, compare, params,
)
from process_faults import ProcessFaults
from storage_faults import StorageFaults


class Matrix(ProcessFaults, StorageFaults):
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
