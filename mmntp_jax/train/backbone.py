"""Backbone training: the backbone's data, step, evaluation and run records, driven by the one loop.

`train(config, workdir)` runs until `config.train.steps`, resuming from the
latest checkpoint in `workdir` (train state and data iterator state together,
so the resumed run sees the same batches and reaches the same parameters);
`mmntp_jax.train.loop` runs the steps (signals, guards, checkpoints, metrics).

MFU = model FLOPs per step (`mmntp_jax.model.flops`, attention included) /
(step time × peak FLOP/s). The peak is `train.peak_flops` when set, else a
float32 matmul measured at start-up; the log says which. On CPU every simulated
device shares the same cores, so the peak is the one measured device's; on
accelerators it is that times the device count.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import jax
import numpy as np
from etils import epath

from mmntp_jax.config import Config, load_json, save_json, to_json
from mmntp_jax.data.global_batches import train_batches
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.data.records import DataErrors, report_path
from mmntp_jax.data.vocab import MODALITIES
from mmntp_jax.errors import RunConflict
from mmntp_jax.model.flops import training_flops_per_step
from mmntp_jax.paths import resolve_config_paths, resolve_path
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.model.continuous_input import latent_modules
from mmntp_jax.train.guards import fill_guard
from mmntp_jax.train.loop import Client, enable_compilation_cache, fit
from mmntp_jax.train.metrics import measure_matmul_peak, provenance
from mmntp_jax.train.resume_check import RunSpec, check_resume, flatten
from mmntp_jax.train.step import StepBuilder, summarize

# Keys that may differ between the saved config.json and a resumed run (the schedule's
# keys, train.steps among them, follow resume_check's rule). The job's sampling keys only
# steer drawings: a finished run keeps the evaluation it made with its own.
RESUMABLE_CHANGES = ("model.scan_layers", "data.on_error", "train.cpu_devices", "job.generate_batch", "job.sheet_items",
                     "job.guidance", "job.temperature", "train.progress", "train.compilation_cache", "train.peak_flops", "train.log_every", "train.eval_every", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save")


def code_latent_params(params: dict, model, vocab) -> dict:
    """`params` with every code-latent table (continuous image input and output, the pixel
    reader) and the pixel reader's decoder filled from `model.image_tokenizer`
    (model/continuous_input.py, model/continuous_output.py, model/pixel_reader.py)."""
    from mmntp_jax.config import ConfigError
    from mmntp_jax.model.continuous_input import code_latent_table, fill_latents, latent_modules
    from mmntp_jax.model.pixel_reader import decoder_params
    from mmntp_jax.tokenizers.io import load_tokenizer

    if not model.image_tokenizer:
        raise ConfigError(f"model.image_input={model.image_input} / model.image_output={model.image_output} / model.image_reader={model.image_reader} "
                          "need model.image_tokenizer, the image tokenizer folder whose code latents the model reads or predicts "
                          "(the captioned job sets it), and model.image_feature_dim, their width")
    tokenizer = load_tokenizer(model.image_tokenizer)
    table = code_latent_table(tokenizer, vocab, model.vocab_size)
    for module in latent_modules(model):
        params = fill_latents(params, table, model.image_feature_dim, module=module)
    if model.image_reader == "pixels":
        params = decoder_params(params, tokenizer)
    return params


def run_spec(config: Config) -> RunSpec:
    return RunSpec(flatten(json.loads(to_json(config))), config.optim, config.train.steps, config.train.on_schedule_change)


def saved_spec(workdir: epath.Path) -> RunSpec | None:
    path = workdir / "config.json"
    return run_spec(load_json(path)) if path.exists() else None  # keys added since take their defaults


def newest_checkpoint_step(workdir: epath.Path) -> int:
    """The newest complete checkpoint's step, 0 without one (creates no folder)."""
    if not (workdir / "checkpoints").exists():
        return 0
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        return checkpointer.latest_step() or 0
    finally:
        checkpointer.close()


def check_workdir_config(workdir, config: Config, latest_step=None) -> int | None:
    """RunConflict when `config` may not resume the run in `workdir` (train/resume_check.py);
    else the step a new learning-rate schedule starts at, or None."""
    workdir = epath.Path(workdir)
    latest_step = latest_step or (lambda: newest_checkpoint_step(workdir))
    return check_resume(workdir, saved_spec(workdir), run_spec(config), RESUMABLE_CHANGES, "run", latest_step)


def evaluate(builder: StepBuilder, params, config: Config, mesh, errors: DataErrors | None = None) -> dict:
    """Held-out loss over the first `train.eval_batches` batches of the eval split; with `errors`,
    the records it dropped (data.on_error=skip) are counted there and as `skipped_records`."""
    _, dataset = make_dataset(config, "eval", process_index=jax.process_index(), process_count=jax.process_count(), errors=errors)
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
    if errors is not None:
        metrics["skipped_records"] = errors.count
    return metrics


def run_losses(run, eval_batches: int | None = None) -> dict:
    """`evaluate` for a loaded run (`mm.load`) on this host's devices, data-parallel."""
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
    workdir.mkdir(parents=True, exist_ok=True)
    save_json(workdir / "config.json", config)
    (workdir / "vocab.json").write_text(vocab.to_json())
    (workdir / "provenance.json").write_text(json.dumps(provenance(extra), indent=2))
    if config.data.source == "shards":  # a BPE the shards were tokenized with becomes the run's text tokenizer
        from mmntp_jax.data.shards import ShardSet
        from mmntp_jax.export.text_tokenizer import install_workdir_text_tokenizer

        install_workdir_text_tokenizer(workdir, ShardSet(config.data.path).text_tokenizer(), vocab)


class BackboneClient(Client):
    """The backbone's hooks: grain batches on the mesh, the sharded step, held-out loss, MFU."""

    what, resumable = "run", RESUMABLE_CHANGES

    def __init__(self, config: Config, workdir: epath.Path):
        super().__init__(workdir, config.train, config.checkpoint)
        self.config = config
        self.tokens_per_step = config.train.batch_size * config.train.seq_len

    def saved_spec(self):
        return saved_spec(self.workdir)

    def current_spec(self):
        return run_spec(self.config)

    def prepare(self, log) -> None:
        self.mesh = make_mesh(self.config.mesh)
        self.vocab, train_data = train_batches(self.config)  # multi-host: global batches, resumable with any process count
        self.vocab.check_model_vocab(self.config.model.vocab_size)
        self.builder = StepBuilder(self.config, self.mesh, self.vocab)
        self.iterator = iter(train_data)

    def abstract_state(self):
        return self.builder.abstract_state()

    def restored(self, state):
        return fill_guard(state, self.builder.state_shardings.step)

    def init_state(self, checkpointer, log):
        state = self.builder.init_state(self.config.train.seed)
        if 0 in checkpointer.all_steps():  # a params-only step 0 (mmntp import hf) seeds the parameters
            workdir, vocab = self.workdir, self.vocab
            saved = type(vocab).load(workdir / "vocab.json") if (workdir / "vocab.json").exists() else vocab
            if saved != vocab:
                raise RunConflict(f"{workdir}/vocab.json ({saved.size} ids) is not the vocabulary of the data ({vocab.size} ids); tokenize the data with the workdir's text tokenizer")
            params, _ = checkpointer.restore_params(0, self.builder.abstract_state().params)
            state = state.replace(params=params)
            log(f"initial parameters from {workdir}/checkpoints/0")
        if latent_modules(self.config.model):
            state = state.replace(params=code_latent_params(state.params, self.config.model, self.vocab))
            m = self.config.model
            log(f"image input {m.image_input}, output {m.image_output}, reader {m.image_reader}: the code latents of {m.image_tokenizer}")
        return state

    def started(self, start: int, log) -> None:
        config = self.config
        self.peak, peak_source = peak_flops(config)
        self.flops_step = training_flops_per_step(config.model, config.train.seq_len, config.train.batch_size)
        log(f"mesh {dict(self.mesh.shape)}; peak {self.peak / 1e9:.1f} GFLOP/s ({peak_source}); {self.flops_step / 1e9:.2f} GFLOP per step")
        write_run_files(self.workdir, config, self.vocab, {"peak_flops": self.peak, "peak_flops_source": peak_source, "resumed_from": start})

    def next_batch(self, step: int):
        return next(self.iterator)

    def place(self, host_batch):
        return shard_batch(host_batch, self.mesh)

    def train_step(self, state, batch):
        return self.builder.train_step(state, batch)

    def evaluate(self, state, step: int, log) -> dict:
        errors = DataErrors()
        figures = evaluate(self.builder, state.params, self.config, self.mesh, errors=errors)
        errors.write_report(report_path(self.workdir, jax.process_index()))
        return figures

    def data_metrics(self) -> dict:
        """Training records dropped so far under data.on_error=skip; each is listed in WORKDIR/data_errors.jsonl."""
        errors = self.iterator.data_errors  # GlobalBatches: its streams' (rebuilt when a restore changes their count)
        errors.write_report(report_path(self.workdir, jax.process_index()))
        return {"data/skipped_records": errors.count}

    def timing(self, step_s: float, data_wait_s: float) -> dict:
        return dict(step_s=step_s, data_wait_s=data_wait_s, compute_s=step_s - data_wait_s,
                    tokens_per_s=self.tokens_per_step / step_s, mfu=self.flops_step / step_s / self.peak)

    def postfix(self, values: dict) -> dict:
        return dict(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}", mfu=f"{values['mfu']:.1%}")


def train(config: Config, workdir, *, profile_steps: str | None = None, log=print) -> dict:
    """Trains to `config.train.steps`; returns the final metrics summary."""
    workdir, config = epath.Path(resolve_path(workdir)), resolve_config_paths(config)
    profile = parse_profile_steps(profile_steps)
    enable_compilation_cache(config.train.compilation_cache)
    return fit(BackboneClient(config, workdir), log=log, profile=profile)
