"""Training semantics: exact resume, gradient accumulation, schedules and their changes on resume, weight-decay mask."""

import json
import os
import signal

import jax
import numpy as np
import optax
import pytest

from mmntp_jax.api import load
from mmntp_jax.config import OptimConfig
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.backbone import BackboneClient, RunConflict, train
from mmntp_jax.train.metrics import read_metrics
from mmntp_jax.train.optim import decay_mask, learning_rate_schedule
from mmntp_jax.train.resume_check import ORIGIN_FILE, RunSpec, schedule_decision
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

SMALL = dict(model=dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64), train=dict(steps=4, eval_every=100, eval_batches=1), checkpoint=dict(every=2))


def train_losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def sigterm_after_step(monkeypatch, step: int) -> None:
    """The run receives SIGTERM while it fetches the batch of `step` (1-based): it stops after that step."""
    fetch = BackboneClient.next_batch

    def next_batch(self, index):
        if index == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return fetch(self, index)

    monkeypatch.setattr(BackboneClient, "next_batch", next_batch)


def test_kill_and_resume_is_bitwise_identical(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = tiny_config(train=dict(steps=6), checkpoint=dict(every=3))
    train(config, straight, log=lambda _: None)
    with monkeypatch.context() as patch:
        sigterm_after_step(patch, 3)
        assert train(config, resumed, log=lambda _: None)["interrupted"] == "SIGTERM"
    summary = train(config, resumed, log=lambda _: None)  # a new process would do the same
    assert summary["step"] == 6
    assert train_losses(straight) == train_losses(resumed)
    a, b = load(straight), load(resumed)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a.params, b.params)
    assert a.step == b.step == 6


def test_finished_workdir_reports_complete_and_other_config_is_refused(tmp_path):
    config = tiny_config(train=dict(steps=3, eval_every=3), checkpoint=dict(every=3))
    train(config, tmp_path, log=lambda _: None)
    messages = []
    assert train(config, tmp_path, log=messages.append)["complete"]
    assert "complete" in messages[0]
    with pytest.raises(RunConflict, match="model.d_model"):
        train(tiny_config(model=dict(d_model=32)), tmp_path, log=lambda _: None)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "provenance.json", "vocab.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= files
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["devices"]["count"] == 8 and provenance["packages"]["jax"] == jax.__version__
    records = read_metrics(tmp_path)
    assert any("eval/loss" in r for r in records)
    train_record = next(r for r in records if "train/mfu" in r)
    assert train_record["train/step_s"] >= train_record["train/data_wait_s"] >= 0


def test_gradient_accumulation_matches_one_big_batch():
    results = []
    for accum in (1, 4):
        config = tiny_config(optim=dict(grad_accum=accum), mesh=dict(data=2))
        mesh = make_mesh(config.mesh, jax.devices()[:2])
        builder = StepBuilder(config, mesh)
        state = builder.init_state(0)
        _, data = make_dataset(config)
        it = iter(data)
        for _ in range(2):
            state, metrics = builder.train_step(state, shard_batch(next(it), mesh))
        results.append((float(metrics["loss"]), jax.device_get(state.params)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[0][1], results[1][1])


def test_schedules_follow_their_formulas():
    cos = learning_rate_schedule(OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1), 110)
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5)
    assert float(cos(10)) == pytest.approx(1.0)
    assert float(cos(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert float(cos(110)) == pytest.approx(0.1, rel=1e-5)
    wsd = learning_rate_schedule(OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0), 100)
    assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(80)) == pytest.approx(1.0)
    assert float(wsd(90)) == pytest.approx(0.5) and float(wsd(100)) == pytest.approx(0.0)


def test_weight_decay_skips_norms():
    config = tiny_config()
    params = jax.eval_shape(lambda: StepBuilder(config, make_mesh(config.mesh, jax.devices()[:1])).init_state(0).params)
    mask = decay_mask(params)
    assert mask["layers"]["input_layernorm"]["weight"] is False and mask["norm"]["weight"] is False
    assert mask["layers"]["mlp"]["up_proj"] is True and mask["embed_tokens"]["embedding"] is True
    # with zero gradients, AdamW's update is -lr·wd·p exactly where the mask is True
    values = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), params)
    tx = optax.adamw(0.1, weight_decay=1.0, mask=decay_mask)
    updates, _ = tx.update(jax.tree.map(np.zeros_like, values), tx.init(values), values)
    np.testing.assert_allclose(updates["layers"]["mlp"]["up_proj"], -0.1)
    np.testing.assert_array_equal(updates["norm"]["weight"], 0.0)


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores (tests/test_paths.py restarts a schedule too)
def test_a_changed_schedule_is_refused_then_restarted_at_the_resumed_step(tmp_path):
    workdir, quiet = tmp_path / "run", (lambda _: None)
    train(tiny_config(**SMALL), workdir, log=quiet)
    longer = tiny_config(**{**SMALL, "train": {**SMALL["train"], "steps": 6}})
    with pytest.raises(RunConflict, match=r"train.steps: 4 → 6 changes the learning rate from step 4 on .*train.on_schedule_change=restart_schedule"):
        train(longer, workdir, log=quiet)
    lower = tiny_config(**{**SMALL, "optim": {"lr": 1e-3}})
    with pytest.raises(RunConflict, match="optim.lr: 0.01 → 0.001"):
        train(tiny_config(**{**SMALL, "optim": {"lr": 1e-3}, "train": {**SMALL["train"], "steps": 6}}), workdir, log=quiet)
    assert train(lower, workdir, log=quiet)["complete"]  # nothing left to train: nothing to refuse
    before = load(workdir).params
    restarted = tiny_config(**{**SMALL, "optim": {"lr": 1e-3}, "train": {**SMALL["train"], "steps": 6, "on_schedule_change": "restart_schedule"}})
    messages = []
    assert train(restarted, workdir, log=messages.append)["step"] == 6
    assert any("a new learning-rate schedule starts at step 4: 2 warmup steps to lr 0.001" in m for m in messages), messages
    assert json.loads((workdir / ORIGIN_FILE).read_text())["start_step"] == 4
    lrs = {r["step"]: r["train/lr"] for r in read_metrics(workdir) if "train/lr" in r}
    assert lrs[5] == 0.0 and lrs[6] == pytest.approx(5e-4)  # warmup from 0 again, over the 2 remaining steps
    after = load(workdir)
    assert after.step == 6 and not np.array_equal(after.params["norm"]["weight"], before["norm"]["weight"])
    plain = tiny_config(**{**SMALL, "optim": {"lr": 1e-3}, "train": {**SMALL["train"], "steps": 6}})
    assert train(plain, workdir, log=quiet)["complete"]  # the choice is not needed to rerun
    assert train(restarted, workdir, log=quiet)["complete"]
    again = tiny_config(**{**SMALL, "optim": {"lr": 5e-4}, "train": {**SMALL["train"], "steps": 8, "on_schedule_change": "restart_schedule"}})
    assert train(again, workdir, log=quiet)["step"] == 8
    record = json.loads((workdir / ORIGIN_FILE).read_text())
    assert record["start_step"] == 6 and "optim.lr: 0.001 → 0.0005" in record["changes"], record
    assert [entry["start_step"] for entry in record["history"]] == [4] and "optim.lr: 0.01 → 0.001" in record["history"][0]["changes"], record


def test_schedule_changes_that_keep_the_learning_rate_resume_silently():
    constant = OptimConfig(lr=1e-3, schedule="constant", warmup_steps=10)
    spec = lambda optim, steps, choice="refuse": RunSpec({}, optim, steps, choice)  # noqa: E731
    assert schedule_decision("w", spec(constant, 100), spec(constant, 200), 100, "train.steps") is None
    cosine = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10)
    with pytest.raises(RunConflict, match="from step 50 on"):
        schedule_decision("w", spec(cosine, 100), spec(cosine, 200), 50, "train.steps: 100 → 200")
    assert schedule_decision("w", spec(cosine, 100), spec(cosine, 200, "restart_schedule"), 50, "") == 50
    assert schedule_decision("w", spec(cosine, 100), spec(cosine, 200), 0, "") is None  # nothing trained yet


def test_matmul_peak_is_the_best_of_runs_spread_over_the_time_asked(monkeypatch):
    """A core held by another process for a moment must not halve the peak: on a clock where
    the first 8 runs take 0.1 s (contended) and later ones 0.01 s, the peak is the fast runs'."""
    import types

    from mmntp_jax.train import metrics as metrics_module

    clock = {"now": 0.0, "runs": 0}

    class Done:
        def block_until_ready(self):
            return self

    def matmul(x):
        clock["now"] += 0.1 if 1 <= clock["runs"] <= 8 else 0.01  # run 0 is the warm-up
        clock["runs"] += 1
        return Done()

    monkeypatch.setattr(metrics_module, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(metrics_module.jax, "jit", lambda f: matmul)
    peak = metrics_module.measure_matmul_peak(64, repeats=8, seconds=1.0)
    assert peak == pytest.approx(2 * 64**3 / 0.01) and clock["runs"] > 9
