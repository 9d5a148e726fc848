"""The one training loop: resume, step, log, evaluate, checkpoint, stop cleanly, guard against bad steps.

`fit(client)` drives a `Client` — the backbone's (`train/backbone.py`) or a
modality tokenizer's (`train/tokenizer.py`), each supplying its data, state,
step, evaluation and run records — to `train.steps`:

- resume: the workdir's config must allow it (`train/resume_check.py`: a
  different config is a `RunConflict`; a changed learning-rate schedule is
  refused or restarted at the resumed step); `Checkpointer.resume` restores the
  newest complete, readable checkpoint (train state and, when the client has
  one, data iterator state), so a resumed run sees the same batches and ends
  with bitwise the same parameters as an uninterrupted one; a finished run
  restores its final checkpoint and reports that it is complete (when that
  checkpoint does not read back, it is set aside and the last steps are
  trained again);
- each step: a batch, the jitted step, `metrics.jsonl` / TensorBoard every
  `train.log_every` steps (every value, non-finite ones as null), the progress
  bar, evaluation every `train.eval_every`, a checkpoint every
  `checkpoint.every` and at the last step;
- SIGTERM/SIGINT (agreed by all processes, `train/distributed.py`) finish the
  current step, save a checkpoint and stop;
- guards (`train/guards.py`): skipped steps are logged; `train.max_bad_steps`
  in a row stop the run with a `DivergenceError`; periodic saves wait for an
  applied step, so the newest checkpoint holds applied parameters.

`mmntp_jax.train.loop.train` and `run_losses` remain the backbone's entry points.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from etils import epath

from mmntp_jax.errors import RunConflict  # noqa: F401  (defined with the other user-facing errors; imported from here too)
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.train.distributed import AgreedStop
from mmntp_jax.train.guards import GuardMonitor
from mmntp_jax.train.metrics import MetricsWriter
from mmntp_jax.train.resume_check import changed_schedule_keys, check_resume, describe_restart, write_origin

BACKBONE_ENTRY_POINTS = ("train", "run_losses", "evaluate", "check_workdir_config")


def __getattr__(name):  # the backbone's entry points, long imported from here (train/backbone.py)
    if name in BACKBONE_ENTRY_POINTS:
        from mmntp_jax.train import backbone

        return getattr(backbone, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def enable_compilation_cache(path: str) -> None:
    if not path:
        return
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def loggable(metrics: dict) -> dict:
    """Host values of a step's metrics. Top-level ones (loss, grad_norm, …) are kept even when
    not finite (null in metrics.jsonl); a per-part one (`loss/image`) that is NaN because the
    batch has no such part is left out."""
    values = {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}
    return {k: v for k, v in values.items() if "/" not in k or np.isfinite(v)}


class Client:
    """What a trainer supplies to the loop. Subclasses set `what`, `resumable` and `builder`
    (with `restart_schedule(step)`), and implement the hooks below."""

    what = "run"  # in messages: "run in WORKDIR is complete"
    resumable: tuple[str, ...] = ()  # config keys that may change on resume
    optional_fields = ("guard",)  # state fields that older checkpoints lack
    iterator = None  # a data iterator saved with each checkpoint (get_state/set_state), or None

    def __init__(self, workdir, train, checkpoint):
        self.workdir = epath.Path(workdir)
        self.steps, self.log_every, self.eval_every, self.progress = train.steps, train.log_every, train.eval_every, train.progress
        self.max_bad_steps, self.spike_factor = train.max_bad_steps, train.spike_factor
        self.checkpoint = checkpoint

    # -- resume ----------------------------------------------------------------
    def saved_spec(self):
        raise NotImplementedError

    def current_spec(self):
        raise NotImplementedError

    def check_workdir(self, latest_step) -> int | None:
        """RunConflict, or the step at which a new learning-rate schedule starts (None: keep it)."""
        return check_resume(self.workdir, self.saved_spec(), self.current_spec(), self.resumable, self.what, latest_step)

    def restart_schedule(self, step: int, log) -> None:
        saved, current = self.saved_spec(), self.current_spec()
        changes = changed_schedule_keys(saved, current)
        if jax.process_index() == 0:
            write_origin(self.workdir, step, changes)
        self.builder.restart_schedule(step)
        log(describe_restart(current, step, changes))

    # -- hooks -------------------------------------------------------------------
    def prepare(self, log) -> None:
        """Loads data and builds the step (the run is not complete)."""

    def abstract_state(self):
        raise NotImplementedError

    def restored(self, state):
        return state

    def init_state(self, checkpointer, log):
        raise NotImplementedError

    def started(self, start: int, log) -> None:
        """After restore: logs and run files (config.json, provenance.json, …)."""

    def next_batch(self, step: int):
        """The host batch of step `step` (0-based), kept to be saved if the step turns out bad."""
        raise NotImplementedError

    def place(self, host_batch):
        return host_batch

    def train_step(self, state, batch):
        raise NotImplementedError

    def evaluate(self, state, step: int, log) -> dict:
        return {}

    def timing(self, step_s: float, data_wait_s: float) -> dict:
        return {"step_s": step_s}

    def postfix(self, values: dict) -> dict:
        return {"loss": f"{values['loss']:.4f}"}

    def data_metrics(self) -> dict:
        """Figures about the input logged with each train record, under their own names (`data/skipped_records`)."""
        return {}

    def finish(self, state) -> None:
        """After the last step (not after a stop signal)."""


def fit(client: Client, *, log=print, profile: tuple[int, int] | None = None) -> dict:
    """Trains (or resumes) to `client.steps`; returns the summary (last train and eval figures, step)."""
    workdir, ckpt = client.workdir, client.checkpoint
    checkpointer = Checkpointer(workdir, keep=ckpt.keep, async_save=ckpt.async_save)
    try:
        latest = checkpointer.latest_step() or 0
        restart = client.check_workdir(lambda: latest)
        if latest >= client.steps:  # complete only if the final checkpoint reads back; else resume below it
            client.prepare(log)
            _, latest = checkpointer.resume(client.abstract_state(), optional_fields=client.optional_fields, log=log)
            if latest >= client.steps:
                log(f"{client.what} in {workdir} is complete: step {latest} of {client.steps}")
                return {"step": latest, "complete": True}
            restart = client.check_workdir(lambda: latest)
        else:
            client.prepare(log)
        checkpointer.ensure_writable()
        state, start = checkpointer.resume(client.abstract_state(), client.iterator, optional_fields=client.optional_fields, log=log)
        if start:
            state = client.restored(state)
            log(f"resumed from step {start} in {workdir}")
            if start != latest:  # fell back past an unreadable checkpoint: judge the schedule from there
                restart = client.check_workdir(lambda: start)
            if restart is not None:
                client.restart_schedule(start, log)
        else:
            state = client.init_state(checkpointer, log)
        client.started(start, log)
        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
        try:
            return _run(client, state, start, checkpointer, writer, log, profile)
        finally:
            writer.close()
    finally:
        checkpointer.close()


def _run(client, state, start, checkpointer, writer, log, profile):
    from tqdm import tqdm

    steps, every = client.steps, client.checkpoint.every
    bar = tqdm(total=steps, initial=start, disable=not client.progress or jax.process_index() != 0, unit="step", dynamic_ncols=True)
    stop = AgreedStop()  # multi-host: every process stops after the same step
    guard = GuardMonitor(client.workdir, max_bad_steps=client.max_bad_steps, spike_factor=client.spike_factor, writer=writer, checkpointer=checkpointer, log=log)
    summary, window_start, data_wait, window_steps, step = {"step": start}, time.perf_counter(), 0.0, 0, start
    save_waits = False  # a periodic save is due but waits for an applied step
    try:
        with stop.installed():
            while step < steps:
                if profile and step == profile[0]:
                    jax.profiler.start_trace(str(client.workdir / "profile"))
                t0 = time.perf_counter()
                host_batch = client.next_batch(step)
                batch = client.place(host_batch)
                data_wait += time.perf_counter() - t0
                state, metrics = client.train_step(state, batch)
                checkpointer.check()
                step += 1
                stop.agree()  # multi-host: the stop flag all processes agree on
                guard.after_step(step, metrics, host_batch)  # reads the previous step's guard counter
                window_steps += 1
                if profile and step == profile[1]:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                if step % client.log_every == 0 or step == steps or stop.received:
                    guard.flush()
                    values = loggable(metrics)
                    elapsed = time.perf_counter() - window_start
                    values.update(client.timing(elapsed / window_steps, data_wait / window_steps))
                    writer.write(step, {**{f"train/{k}": v for k, v in values.items()}, **client.data_metrics()})
                    bar.set_postfix(**client.postfix(values))
                    summary.update({f"train/{k}": v for k, v in values.items()})
                    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
                bar.update(1)
                if step % client.eval_every == 0 or step == steps:
                    figures = client.evaluate(state, step, log)
                    writer.write(step, figures, prefix="eval/")
                    summary.update({f"eval/{k}": v for k, v in figures.items()})
                    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
                if save_waits or step % every == 0 or step == steps or stop.received:
                    final = step == steps or stop.received
                    save_waits = bool(guard.flush()) and not final
                    if not save_waits:
                        checkpointer.save(step, state, client.iterator, force=True)
                if stop.received:
                    break
            checkpointer.wait()  # with the handler still installed: a second signal cannot abort the final save
    finally:
        bar.close()
    summary["step"] = step
    if stop.received:
        log(f"{stop.received}: stopped at step {step}; checkpoint saved in {client.workdir}; run the same command to resume")
        summary["interrupted"] = stop.received
    else:
        client.finish(state)
    return summary
