"""Tokenizer training: a modality tokenizer's data, step, evaluation, samples and export, driven by the one loop.

`train(exp, workdir)` trains to `exp.train.steps` with the backbone's loop
(`train/loop.py`: orbax checkpoints under `checkpoints/`, `metrics.jsonl`,
TensorBoard, provenance, a progress bar, SIGTERM/SIGINT → checkpoint and stop,
the non-finite-step guards, schedule changes on resume), resuming from the
newest readable checkpoint. Batches are a pure function of (seed, step), so a
resumed run trains on exactly the batches of an uninterrupted one. At the end
the tokenizer is exported to `workdir/tokenizer/` (safetensors + JSON, see
`tokenizers/io.py`).
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
from mmntp_jax.tokenizers.experiment import from_json, to_json
from mmntp_jax.tokenizers.io import save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer
from mmntp_jax.train.guards import fill_guard
from mmntp_jax.train.loop import Client, enable_compilation_cache, fit
from mmntp_jax.train.metrics import provenance
from mmntp_jax.train.resume_check import RunSpec, flatten
from mmntp_jax.train.tokenizer_step import TokenizerStepBuilder

# Keys that may differ on resume (the schedule's keys, train.steps among them, follow train/resume_check.py).
RESUMABLE = ("train.progress", "train.log_every", "train.eval_every", "train.samples", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save")


def process_cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used: the fair clock on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_spec(exp) -> RunSpec:
    return RunSpec(flatten(json.loads(to_json(exp))), exp.optim, exp.train.steps, exp.train.on_schedule_change)


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


class TokenizerClient(Client):
    """A tokenizer's hooks: items drawn by (seed, step), the data-parallel step, reconstruction figures, export."""

    what, resumable = "tokenizer run", RESUMABLE
    optional_fields = TokenizerStepBuilder.optional_fields

    def __init__(self, exp, workdir: epath.Path):
        super().__init__(workdir, exp.train, exp.checkpoint)
        self.exp = exp

    def saved_spec(self):
        path = self.workdir / "config.json"
        return run_spec(from_json(path.read_text())) if path.exists() else None  # keys added since take their defaults

    def current_spec(self):
        return run_spec(self.exp)

    def prepare(self, log) -> None:
        exp = self.exp
        self.mesh = make_mesh(exp.mesh)
        self.builder = TokenizerStepBuilder(exp, self.mesh)
        t0 = time.perf_counter()
        self.train_items, self.eval_items = datasets.load_split(exp, "train"), datasets.load_split(exp, "eval")
        log(f"data: {len(self.train_items)} train and {len(self.eval_items)} eval {exp.kind} items from {exp.data.source} ({time.perf_counter() - t0:.1f}s)")
        self.sharding = self.builder.batch_sharding(self.train_items.ndim)

    def abstract_state(self):
        return self.builder.abstract_state()

    def restored(self, state):
        return fill_guard(state, self.builder.replicated)

    def init_state(self, checkpointer, log):
        return self.builder.init_state(self.exp.train.seed)

    def started(self, start: int, log) -> None:
        if jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "config.json").write_text(to_json(self.exp))
            (self.workdir / "provenance.json").write_text(json.dumps(provenance({"resumed_from": start, "mesh": dict(self.mesh.shape)}), indent=2))

    def next_batch(self, step: int):
        t = self.exp.train
        return datasets.to_float(self.train_items[datasets.batch_indices(len(self.train_items), t.batch_size, step, t.seed)])

    def place(self, host_batch):
        return jax.device_put(host_batch, self.sharding)

    def train_step(self, state, batch):
        return self.builder.train_step(state, batch)

    def evaluate(self, state, step: int, log) -> dict:
        figures = run_eval(self.builder, state, self.eval_items, self.workdir, step, self.exp.train.samples)
        log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if "/" not in k))
        return figures

    def timing(self, step_s: float, data_wait_s: float) -> dict:
        return dict(step_s=step_s, items_per_s=self.exp.train.batch_size / step_s, cpu_s=process_cpu_seconds())

    def postfix(self, values: dict) -> dict:
        return dict(loss=f"{values['loss']:.4f}", **({"psnr": f"{values['psnr']:.1f}"} if "psnr" in values else {}))

    def finish(self, state) -> None:
        if jax.process_index() == 0:
            export(self.builder, state, self.workdir / "tokenizer")


def train(exp, workdir, *, log=print) -> dict:
    """Trains (or resumes) to exp.train.steps; returns the final summary (last train and eval figures)."""
    workdir = epath.Path(resolve_path(workdir))
    enable_compilation_cache(exp.train.compilation_cache)
    return fit(TokenizerClient(exp, workdir), log=log)
