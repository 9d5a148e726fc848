"""Training semantics: exact resume, gradient accumulation, schedules, weight-decay mask."""

import json

import jax
import numpy as np
import optax
import pytest

from mmntp_jax.api import load
from mmntp_jax.config import OptimConfig
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.loop import RunConflict, train
from mmntp_jax.train.metrics import read_metrics
from mmntp_jax.train.optim import decay_mask, learning_rate_schedule
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config


def train_losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_kill_and_resume_is_bitwise_identical(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = tiny_config(train=dict(steps=6), checkpoint=dict(every=3))
    train(config, straight, log=lambda _: None)
    first_half = tiny_config(train=dict(steps=3), checkpoint=dict(every=3))
    train(first_half, resumed, log=lambda _: None)
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
