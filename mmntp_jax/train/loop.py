"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

`train(config, workdir)` runs until `config.train.steps`, resuming from the
latest checkpoint in `workdir` (train state and data iterator state together,
so the resumed run sees the same batches and reaches the same parameters).
SIGTERM/SIGINT finish the current step, save a checkpoint and stop.

MFU = model FLOPs per step (`mmntp_jax.scaling.flops`, attention included) /
(step time × peak FLOP/s). The peak is `train.peak_flops` when set, else a
float32 matmul measured at start-up; the log says which. On CPU every simulated
device shares the same cores, so the peak is the one measured device's; on
accelerators it is that times the device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from etils import epath

from mmntp_jax.config import Config, from_dict, to_json
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.data.vocab import MODALITIES
from mmntp_jax.paths import resolve_config_paths, resolve_path
from mmntp_jax.scaling.flops import training_flops_per_step
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.train.metrics import MetricsWriter, measure_matmul_peak, provenance
from mmntp_jax.train.step import StepBuilder, summarize

# Keys that may differ between the saved config.json and a resumed run.
RESUMABLE_CHANGES = ("train.steps", "train.cpu_devices", "job.generate_batch", "job.sheet_items", "train.progress", "train.compilation_cache", "train.peak_flops", "train.log_every", "train.eval_every", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save")


class RunConflict(ValueError):
    """The workdir holds a run of a different configuration."""


def enable_compilation_cache(path: str) -> None:
    if not path:
        return
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_workdir_config(workdir: epath.Path, config: Config) -> None:
    path = workdir / "config.json"
    if not path.exists():
        return
    import json

    # keys added since the run was saved take their defaults, so an older workdir still resumes
    saved = _flatten(json.loads(to_json(from_dict(Config, json.loads(path.read_text())))))
    current = _flatten(json.loads(to_json(config)))
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in changed[:5])
        raise RunConflict(f"workdir {workdir} holds a run with a different config ({details}); use a new --workdir")


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.received = None

    @contextlib.contextmanager
    def installed(self):
        def handler(signum, _frame):
            self.received = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def evaluate(builder: StepBuilder, params, config: Config, mesh) -> dict:
    """Held-out loss over the first `train.eval_batches` batches of the eval split."""
    _, dataset = make_dataset(config, "eval", process_index=jax.process_index(), process_count=jax.process_count())
    totals = None
    for i, batch in enumerate(dataset):
        if i >= config.train.eval_batches:
            break
        sums = jax.device_get(builder.eval_step(params, shard_batch(batch, mesh)))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if totals is None:
        return {}
    absent = {name for name, count in zip(MODALITIES, totals["modality_tokens"]) if count == 0}
    metrics = {k: float(v) for k, v in summarize(totals).items() if k.rpartition("/")[2] not in absent}
    metrics.pop("z_loss", None)
    for key, value in metrics.items():  # reported as they are (null in metrics.jsonl), not dropped
        if not np.isfinite(value):
            warnings.warn(f"eval: {key} is {value}", RuntimeWarning, stacklevel=2)
    return metrics


def run_losses(run, eval_batches: int | None = None) -> dict:
    """`evaluate` for a loaded run (`mm.load`) on this host's devices, data-parallel."""
    from mmntp_jax.train.step import StepBuilder

    config = run.config
    config = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, data=-1, fsdp=1, tensor=1, sequence=1))
    if eval_batches:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, eval_batches=eval_batches))
    mesh = make_mesh(config.mesh)
    builder = StepBuilder(config, mesh, vocab=run.vocab)
    return evaluate(builder, jax.device_put(run.params, builder.state_shardings.params), config, mesh)


def peak_flops(config: Config) -> tuple[float, str]:
    if config.train.peak_flops > 0:
        return config.train.peak_flops, "config"
    peak = measure_matmul_peak()
    if jax.devices()[0].platform != "cpu":
        peak *= jax.device_count()
    return peak, "measured float32 matmul"


def parse_profile_steps(text: str | None):
    if not text:
        return None
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--profile-steps {text!r}: expected START:STOP, e.g. 10:15") from None
    if not 0 <= start < stop:
        raise ValueError(f"--profile-steps {text!r}: need 0 ≤ START < STOP")
    return start, stop


def write_run_files(workdir: epath.Path, config: Config, vocab, extra: dict) -> None:
    if jax.process_index() != 0:
        return
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(to_json(config))
    (workdir / "vocab.json").write_text(vocab.to_json())
    (workdir / "provenance.json").write_text(json.dumps(provenance(extra), indent=2))
    if config.data.source == "shards":  # a BPE the shards were tokenized with becomes the run's text tokenizer
        from mmntp_jax.data.shards import ShardSet
        from mmntp_jax.export.text_tokenizer import install_workdir_text_tokenizer

        install_workdir_text_tokenizer(workdir, ShardSet(config.data.path).text_tokenizer(), vocab)


def train(config: Config, workdir, *, profile_steps: str | None = None, log=print) -> dict:
    """Trains to `config.train.steps`; returns the final metrics summary."""
    workdir, config = epath.Path(resolve_path(workdir)), resolve_config_paths(config)
    profile = parse_profile_steps(profile_steps)
    enable_compilation_cache(config.train.compilation_cache)
    check_workdir_config(workdir, config)
    mesh = make_mesh(config.mesh)
    vocab, train_data = make_dataset(config, "train", process_index=jax.process_index(), process_count=jax.process_count())
    vocab.check_model_vocab(config.model.vocab_size)
    builder = StepBuilder(config, mesh, vocab)
    checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    iterator = iter(train_data)
    start = checkpointer.latest_step() or 0
    if start >= config.train.steps:
        log(f"run in {workdir} is complete: step {start} of {config.train.steps}")
        checkpointer.close()
        return {"step": start, "complete": True}
    state, start = checkpointer.resume(builder.abstract_state(), iterator, log=log)
    if start:
        log(f"resumed from step {start} in {workdir}")
    else:
        state = builder.init_state(config.train.seed)
        if 0 in checkpointer.all_steps():  # a params-only step 0 (mmntp import hf) seeds the parameters
            saved = type(vocab).from_json((workdir / "vocab.json").read_text()) if (workdir / "vocab.json").exists() else vocab
            if saved != vocab:
                raise RunConflict(f"{workdir}/vocab.json ({saved.size} ids) is not the vocabulary of the data ({vocab.size} ids); tokenize the data with the workdir's text tokenizer")
            params, _ = checkpointer.restore_params(0, builder.abstract_state().params)
            state = state.replace(params=params)
            log(f"initial parameters from {workdir}/checkpoints/0")
    peak, peak_source = peak_flops(config)
    flops_step = training_flops_per_step(config.model, config.train.seq_len, config.train.batch_size)
    log(f"mesh {dict(mesh.shape)}; peak {peak / 1e9:.1f} GFLOP/s ({peak_source}); {flops_step / 1e9:.2f} GFLOP per step")
    write_run_files(workdir, config, vocab, {"peak_flops": peak, "peak_flops_source": peak_source, "resumed_from": start})
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    try:
        return _run(config, builder, mesh, state, iterator, checkpointer, writer, start, peak, flops_step, profile, workdir, log)
    finally:
        writer.close()
        checkpointer.close()


def _run(config, builder, mesh, state, iterator, checkpointer, writer, start, peak, flops_step, profile, workdir, log):
    from tqdm import tqdm

    t_cfg = config.train
    tokens_per_step = t_cfg.batch_size * t_cfg.seq_len
    bar = tqdm(total=t_cfg.steps, initial=start, disable=not t_cfg.progress or jax.process_index() != 0, unit="step", dynamic_ncols=True)
    stop = StopSignal()
    summary, window_start, data_wait, window_steps, step = {}, time.perf_counter(), 0.0, 0, start
    last_metrics = None
    with stop.installed():
        while step < t_cfg.steps:
            if profile and step == profile[0]:
                jax.profiler.start_trace(str(workdir / "profile"))
            t0 = time.perf_counter()
            batch = shard_batch(next(iterator), mesh)
            data_wait += time.perf_counter() - t0
            state, last_metrics = builder.train_step(state, batch)
            checkpointer.check()
            step += 1
            window_steps += 1
            if profile and step == profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
            if step % t_cfg.log_every == 0 or step == t_cfg.steps or stop.received:
                metrics = {k: float(v) for k, v in jax.device_get(last_metrics).items() if np.isfinite(v)}
                elapsed = time.perf_counter() - window_start
                step_s = elapsed / window_steps
                metrics.update(
                    step_s=step_s, data_wait_s=data_wait / window_steps, compute_s=(elapsed - data_wait) / window_steps,
                    tokens_per_s=tokens_per_step / step_s, mfu=flops_step / step_s / peak,
                )
                writer.write(step, metrics, prefix="train/")
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}", mfu=f"{metrics['mfu']:.1%}")
                summary.update({f"train/{k}": v for k, v in metrics.items()})
                window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
            bar.update(1)
            if step % t_cfg.eval_every == 0 or step == t_cfg.steps:
                eval_metrics = evaluate(builder, state.params, config, mesh)
                writer.write(step, eval_metrics, prefix="eval/")
                summary.update({f"eval/{k}": v for k, v in eval_metrics.items()})
                window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
            if step % config.checkpoint.every == 0 or step == t_cfg.steps or stop.received:
                checkpointer.save(step, state, iterator, force=True)
            if stop.received:
                break
        checkpointer.wait()  # with the handler still installed: a second signal cannot abort the final save
    bar.close()
    summary["step"] = step
    if stop.received:
        log(f"{stop.received}: stopped at step {step}; checkpoint saved in {workdir}; run the same command to resume")
        summary["interrupted"] = stop.received
    return summary
