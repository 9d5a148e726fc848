"""Executing a sweep plan: resumable, several families at once, one results table.

Layout of a sweep directory:
    plan.json                     the planned runs (a re-run must plan the same ones)
    families/<family>/stable/     the shared constant-lr run of one size (reuse="wsd")
    runs/<run>/                   a normal workdir (config.json, checkpoints/, metrics.jsonl)
    runs/<run>/result.json        written last: the run's results row (its presence = done;
                                  `seconds` wall and `cpu_seconds` process CPU time, the
                                  stable-run segment it waited for included)
    results.csv, results.jsonl    every finished run, in plan order

A family (all runs of one size and data variant) runs in order of length: the
stable run is trained up to the next branch step, its checkpoint there is
copied into the run's workdir, and `train` resumes from it with the run's own
WSD config. Finished runs are skipped, an interrupted one resumes from its last
checkpoint. With `jobs > 1` families run in that many worker processes.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mmntp_jax.config import ConfigError, from_dict, to_dict
from mmntp_jax.scaling.sweep import PlannedRun, SweepConfig, plan, stable_config, total_flops
from mmntp_jax.scaling.table import write_table


def _plan_record(runs: list[PlannedRun]) -> list[dict]:
    return [{**r.row(), "config": to_dict(r.config)} for r in runs]


def _jsonable(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


def write_plan(workdir: Path, sweep: SweepConfig, runs: list[PlannedRun]) -> None:
    """Writes plan.json. An existing plan may gain runs (e.g. a larger budget: the
    stable runs just go on), but every run it already has must be planned unchanged."""
    path = workdir / "plan.json"
    record = json.loads(json.dumps({"name": sweep.name, "reuse": sweep.reuse, "runs": [_jsonable(r) for r in _plan_record(runs)]}))
    if path.exists():
        old = json.loads(path.read_text())
        new_runs = {r["run"]: r for r in record["runs"]}
        if old.get("reuse") != record["reuse"]:
            raise ConfigError(f"sweep directory {workdir} was planned with reuse={old.get('reuse')!r}, not {sweep.reuse!r}; use a new --workdir")
        for r in old.get("runs", []):
            if new_runs.get(r["run"]) != r:
                how = "is no longer planned" if r["run"] not in new_runs else "is planned differently"
                raise ConfigError(f"sweep directory {workdir}: run {r['run']} {how} by this config; use a new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def load_plan(workdir: Path) -> tuple[str, list[PlannedRun]]:
    from mmntp_jax.config import Config

    record = json.loads((workdir / "plan.json").read_text())
    runs = []
    for r in record["runs"]:
        runs.append(PlannedRun(
            run_id=r["run"], family=r["family"], variant=r["modalities"], width=r["width"], config=from_dict(Config, r["config"]),
            steps=r["steps"], branch_step=r["branch_step"], tokens=r["D"], flops=r["C"],
            budget=math.nan if r["budget"] is None else r["budget"], params=r["N"], params_non_embedding=r["N_non_embedding"],
        ))
    return record["reuse"], runs


def _checkpoint_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()) if ckpt.is_dir() else []


def seed_from_stable(stable_dir: Path, run_dir: Path, step: int) -> None:
    """Copies the stable run's checkpoint at `step` into a fresh run workdir (atomically)."""
    if _checkpoint_steps(run_dir):
        return
    src = stable_dir / "checkpoints" / str(step)
    if not src.is_dir():
        raise FileNotFoundError(f"stable run {stable_dir} has no checkpoint at step {step} to branch from")
    tmp = run_dir / "checkpoints" / f".tmp-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(run_dir / "checkpoints" / str(step))


def _result_row(run: PlannedRun, summary: dict, seconds: float, cpu_seconds: float) -> dict:
    row = _jsonable(run.row())
    row.update(loss=summary.get("eval/loss"), train_loss=summary.get("train/loss"), seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1))
    for key, value in summary.items():
        if key.startswith("eval/loss/") and value is not None and np.isfinite(value):
            modality = key.split("/")[-1]
            row[f"loss_{modality}"] = value
    fractions = summary.get("modality_fractions") or {}
    for modality, frac in fractions.items():
        row[f"tokens_{modality}"] = run.tokens * frac
    if row["loss"] is None:
        raise RuntimeError(f"run {run.run_id}: training returned no eval/loss; check train.eval_batches")
    return row


def modality_fractions(config, n_batches: int) -> dict[str, float]:
    """Share of trained target tokens per modality over the first `n_batches` train
    batches. Called with the run's steps, it counts exactly the batches the run
    trained on: a prefix of a few batches is biased, since packing places long
    documents first within each window of `data.pack_window` rows."""
    from mmntp_jax.data.pipeline import make_dataset
    from mmntp_jax.data.vocab import MODALITIES

    _, data = make_dataset(config, "train")
    counts = np.zeros(len(MODALITIES))
    for i, batch in enumerate(data):
        if i >= n_batches:
            break
        counts += np.bincount(batch["modality"].reshape(-1), weights=batch["loss_mask"].reshape(-1), minlength=len(MODALITIES))[: len(MODALITIES)]
    total = counts.sum()
    return {m: float(c / total) for m, c in zip(MODALITIES, counts) if c > 0}


def run_family(workdir: Path, runs: list[PlannedRun], reuse: str, log=print) -> None:
    """Trains the runs of one family in order of length, branching from its stable run."""
    from mmntp_jax.train.backbone import train

    quiet = lambda *a, **k: None  # noqa: E731
    stable_dir = workdir / "families" / runs[0].family / "stable"
    for run in sorted(runs, key=lambda r: (r.branch_step, r.steps)):
        run_dir = workdir / "runs" / run.run_id
        if (run_dir / "result.json").exists():
            continue
        start, cpu_start = time.perf_counter(), time.process_time()
        if reuse == "wsd" and not _checkpoint_steps(run_dir):
            train(stable_config(run, run.branch_step), stable_dir, log=quiet)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            seed_from_stable(stable_dir, run_dir, run.branch_step)
        summary = train(run.config, run_dir, log=quiet)
        if summary.get("interrupted"):
            raise KeyboardInterrupt
        if summary.get("complete"):  # trained earlier but result.json was not written: evaluate again
            summary = _evaluate_finished(run, run_dir) or train(run.config, run_dir, log=quiet)
        summary["modality_fractions"] = modality_fractions(run.config, run.steps) if run.variant else {}
        row = _result_row(run, summary, time.perf_counter() - start, time.process_time() - cpu_start)
        (run_dir / "result.json").write_text(json.dumps(row, indent=1))
        log(f"{run.run_id}: N={run.params:.3g} D={run.tokens:.3g} C={run.flops:.3g} loss={row['loss']:.4f} ({row['seconds']:.0f} s)")


def _evaluate_finished(run: PlannedRun, run_dir: Path) -> dict | None:
    import jax

    from mmntp_jax.sharding import make_mesh
    from mmntp_jax.train.backbone import evaluate
    from mmntp_jax.train.checkpoint import Checkpointer
    from mmntp_jax.train.step import StepBuilder

    mesh = make_mesh(run.config.mesh)
    builder = StepBuilder(run.config, mesh)
    checkpointer = Checkpointer(run_dir, keep=run.config.checkpoint.keep)
    try:  # the newest readable checkpoint, as training restores it (unreadable newer ones moved aside)
        state, step = checkpointer.resume(builder.abstract_state(), optional_fields=("guard",), log=lambda _: None)
    finally:
        checkpointer.close()
    if step < run.steps:  # the final checkpoint was unreadable (now moved aside): train the rest again
        return None
    metrics = evaluate(builder, state.params, run.config, mesh)
    jax.block_until_ready(state)
    return {f"eval/{k}": v for k, v in metrics.items()}


def collect(workdir: Path, runs: list[PlannedRun]) -> list[dict]:
    rows = []
    for run in runs:
        path = workdir / "runs" / run.run_id / "result.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
    if rows:
        write_table(rows, workdir)
    return rows


def run_sweep(sweep: SweepConfig, workdir, *, jobs: int = 1, log=print) -> list[dict]:
    """Plans, trains what is not finished, and writes results.csv/.jsonl; returns the rows."""
    workdir = Path(workdir)
    if jobs < 1:
        raise ConfigError(f"--jobs must be ≥ 1, got {jobs}")
    runs, notes = plan(sweep)
    if not runs:
        raise ConfigError(f"sweep {sweep.name}: no run fits [min_steps, max_steps]; " + "; ".join(notes[:3]))
    write_plan(workdir, sweep, runs)
    for note in notes:
        log(f"note: {note}")
    done = sum((workdir / "runs" / r.run_id / "result.json").exists() for r in runs)
    log(f"sweep {sweep.name}: {len(runs)} runs in {len({r.family for r in runs})} families, {done} finished; "
        f"{total_flops(runs, sweep.reuse):.3g} training FLOPs in all")
    families = {}
    for r in runs:
        families.setdefault(r.family, []).append(r)
    if jobs == 1:
        for members in families.values():
            run_family(workdir, members, sweep.reuse, log=log)
    else:
        _run_parallel(workdir, list(families), jobs, log)
    rows = collect(workdir, runs)
    log(f"{len(rows)} of {len(runs)} runs finished; table: {workdir / 'results.csv'}")
    return rows


def _run_parallel(workdir: Path, families: list[str], jobs: int, log) -> None:
    pending, active, failed = list(families), {}, []
    try:
        while pending or active:
            while pending and len(active) < jobs:
                family = pending.pop(0)
                cmd = [sys.executable, "-m", "mmntp_jax.scaling.runner", str(workdir), family]
                active[family] = subprocess.Popen(cmd)
            time.sleep(0.5)
            for family, proc in list(active.items()):
                if proc.poll() is not None:
                    del active[family]
                    if proc.returncode:
                        failed.append(f"{family} (exit {proc.returncode})")
    finally:
        for proc in active.values():  # interrupted: workers checkpoint and stop
            proc.terminate()
        for proc in active.values():
            proc.wait()
    if failed:
        raise RuntimeError(f"sweep families failed: {', '.join(failed)}; re-run the same command to resume")


def main(argv=None) -> int:
    """Worker entry point: `python -m mmntp_jax.scaling.runner SWEEP_DIR FAMILY`."""
    workdir, family = (argv or sys.argv[1:])[:2]
    reuse, runs = load_plan(Path(workdir))
    run_family(Path(workdir), [r for r in runs if r.family == family], reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
