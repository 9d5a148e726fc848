"""The tokenizer training loop: resume, step, log, evaluate, write samples, checkpoint, export.

`train(exp, workdir)` trains to `exp.train.steps` with the backbone's facilities
(orbax checkpoints under `checkpoints/`, `metrics.jsonl`, TensorBoard,
provenance, a progress bar, SIGTERM/SIGINT → checkpoint and stop), resuming from
the latest checkpoint. Batches are a pure function of (seed, step), so a resumed
run trains on exactly the batches of an uninterrupted one. At the end the
tokenizer is exported to `workdir/tokenizer/` (safetensors + JSON, see `io`).
"""

from __future__ import annotations

import json
import resource
import time

import jax
import numpy as np
from etils import epath

from mmntp_jax.paths import resolve_path
from mmntp_jax.sharding import make_mesh
from mmntp_jax.tokenizers import datasets, evaluation
from mmntp_jax.tokenizers.experiment import to_json
from mmntp_jax.tokenizers.io import save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer
from mmntp_jax.tokenizers.train_step import TokenizerStepBuilder
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.train.loop import RunConflict, StopSignal, _flatten, enable_compilation_cache
from mmntp_jax.train.metrics import MetricsWriter, provenance

RESUMABLE = ("train.steps", "train.progress", "train.log_every", "train.eval_every", "train.samples", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save")


def process_cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used: the fair clock on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_workdir(workdir: epath.Path, exp) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    saved, current = _flatten(json.loads(path.read_text())), _flatten(json.loads(to_json(exp)))
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and k not in RESUMABLE)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in changed[:5])
        raise RunConflict(f"workdir {workdir} holds a tokenizer run with a different config ({details}); use a new --workdir")


def run_eval(builder: TokenizerStepBuilder, state, eval_items: np.ndarray, workdir: epath.Path | None, step: int, n_samples: int) -> dict:
    """Held-out figures; writes reconstruction samples to workdir/samples/ when a workdir is given."""
    exp = builder.exp
    figures, recs = evaluation.evaluate_all(lambda: builder.module(state), exp.kind, exp.model, eval_items)
    if builder.ema_decay:
        raw, _ = evaluation.evaluate_all(lambda: builder.module(state, raw=True), exp.kind, exp.model, eval_items)
        figures.update({f"raw/{k}": v for k, v in raw.items() if "/" not in k})
    if workdir is not None and n_samples > 0 and jax.process_index() == 0:
        evaluation.write_samples(workdir / "samples", exp.kind, exp.model, eval_items[:n_samples], recs[:n_samples], f"step_{step:06d}")
    return figures


def export(builder: TokenizerStepBuilder, state, directory) -> None:
    module = builder.module(jax.device_get(state))
    save_tokenizer(Tokenizer(builder.kind, builder.exp.model, module), directory)


def train(exp, workdir, *, log=print) -> dict:
    """Trains (or resumes) to exp.train.steps; returns the final summary (last train and eval figures)."""
    workdir = epath.Path(resolve_path(workdir))
    enable_compilation_cache(exp.train.compilation_cache)
    check_workdir(workdir, exp)
    mesh = make_mesh(exp.mesh)
    builder = TokenizerStepBuilder(exp, mesh)
    checkpointer = Checkpointer(workdir, keep=exp.checkpoint.keep, async_save=exp.checkpoint.async_save)
    start = checkpointer.latest_step() or 0
    if start >= exp.train.steps:
        log(f"tokenizer run in {workdir} is complete: step {start} of {exp.train.steps}")
        checkpointer.close()
        return {"step": start, "complete": True}
    t0 = time.perf_counter()
    train_items, eval_items = datasets.load_split(exp, "train"), datasets.load_split(exp, "eval")
    log(f"data: {len(train_items)} train and {len(eval_items)} eval {exp.kind} items from {exp.data.source} ({time.perf_counter() - t0:.1f}s)")
    if start:
        state = builder.restore(checkpointer, start)
        log(f"resumed from step {start} in {workdir}")
    else:
        state = builder.init_state(exp.train.seed)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(to_json(exp))
        (workdir / "provenance.json").write_text(json.dumps(provenance({"resumed_from": start, "mesh": dict(mesh.shape)}), indent=2))
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    try:
        summary = _loop(builder, state, train_items, eval_items, checkpointer, writer, start, workdir, log)
    finally:
        writer.close()
        checkpointer.close()
    return summary


def _loop(builder, state, train_items, eval_items, checkpointer, writer, start, workdir, log):
    from tqdm import tqdm

    exp, t = builder.exp, builder.exp.train
    sharding = builder.batch_sharding(train_items.ndim)
    bar = tqdm(total=t.steps, initial=start, disable=not t.progress or jax.process_index() != 0, unit="step", dynamic_ncols=True)
    stop, summary, step = StopSignal(), {"step": start}, start
    window_start, window_steps = time.perf_counter(), 0
    with stop.installed():
        while step < t.steps:
            idx = datasets.batch_indices(len(train_items), t.batch_size, step, t.seed)
            batch = jax.device_put(datasets.to_float(train_items[idx]), sharding)
            state, metrics = builder.train_step(state, batch)
            checkpointer.check()
            step += 1
            window_steps += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.steps or stop.received:
                values = {k: float(v) for k, v in jax.device_get(metrics).items() if np.isfinite(v)}
                step_s = (time.perf_counter() - window_start) / window_steps
                values.update(step_s=step_s, items_per_s=t.batch_size / step_s, cpu_s=process_cpu_seconds())
                writer.write(step, values, prefix="train/")
                bar.set_postfix(loss=f"{values['loss']:.4f}", **({"psnr": f"{values['psnr']:.1f}"} if "psnr" in values else {}))
                summary.update({f"train/{k}": v for k, v in values.items()})
                window_start, window_steps = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.steps:
                figures = run_eval(builder, state, eval_items, workdir, step, t.samples)
                writer.write(step, figures, prefix="eval/")
                summary.update({f"eval/{k}": v for k, v in figures.items()})
                log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if "/" not in k))
                window_start, window_steps = time.perf_counter(), 0
            if step % exp.checkpoint.every == 0 or step == t.steps or stop.received:
                checkpointer.save(step, state, None, force=True)
            if stop.received:
                break
    bar.close()
    checkpointer.wait()
    summary["step"] = step
    if stop.received:
        log(f"{stop.received}: stopped at step {step}; checkpoint saved in {workdir}; run the same command to resume")
        summary["interrupted"] = stop.received
    elif jax.process_index() == 0:
        export(builder, state, workdir / "tokenizer")
    return summary
