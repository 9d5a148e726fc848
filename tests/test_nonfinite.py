"""Non-finite steps: not applied and counted inside the step; a streak stops the run cleanly (backbone and tokenizers)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from mmntp_jax import cli
from mmntp_jax.config import ConfigError, MeshConfig, OptimConfig, validate
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.errors import DivergenceError
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.tokenizers.experiment import TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig
from mmntp_jax.tokenizers.experiment import validate as validate_tokenizer
from mmntp_jax.train.backbone import BackboneClient, train
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.train.guards import SPIKE_WARMUP, guard_step, init_guard, skip_reason
from mmntp_jax.train.metrics import read_metrics
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

SMALL = dict(model=dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64), train=dict(steps=5, eval_every=100, eval_batches=1), checkpoint=dict(every=2))
CLI_EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py")


def small(**train):
    return tiny_config(**{**SMALL, "train": {**SMALL["train"], **train}})


def poisoned(batch: dict) -> dict:
    """The batch with a NaN loss mask: its loss, and so its gradients, are NaN."""
    return {**batch, "loss_mask": np.full_like(batch["loss_mask"], np.nan)}


def poison_steps(monkeypatch, steps) -> None:
    """The batches of these steps (1-based, as in metrics.jsonl) make the loss NaN."""
    fetch = BackboneClient.next_batch
    monkeypatch.setattr(BackboneClient, "next_batch", lambda self, index: poisoned(fetch(self, index)) if index + 1 in steps else fetch(self, index))


def saved_steps(workdir) -> list[int]:
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        return sorted(checkpointer.all_steps())
    finally:
        checkpointer.close()


def same(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_a_nonfinite_step_leaves_parameters_and_optimizer_state_bitwise_unchanged():
    config = small()
    mesh = make_mesh(config.mesh)
    builder = StepBuilder(config, mesh)
    _, data = make_dataset(config)
    batches = iter(data)
    state, _ = builder.train_step(builder.init_state(0), shard_batch(next(batches), mesh))
    before = jax.device_get((state.params, state.opt_state))
    state, metrics = builder.train_step(state, shard_batch(poisoned(next(batches)), mesh))
    assert np.isnan(float(metrics["loss"])) and int(metrics["bad_steps"]) == 1 and int(metrics["skipped_steps"]) == 1
    assert int(state.step) == 2  # the batch is consumed
    same(jax.device_get((state.params, state.opt_state)), before)
    state, metrics = builder.train_step(state, shard_batch(next(batches), mesh))
    assert np.isfinite(float(metrics["loss"])) and int(metrics["bad_steps"]) == 0 and int(state.guard.skipped_steps) == 1
    assert not np.array_equal(np.asarray(state.params["norm"]["weight"]), before[0]["norm"]["weight"])


def test_skipped_steps_are_logged_with_their_step_and_the_run_goes_on(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {2, 3})
    messages = []
    summary = train(small(), tmp_path, log=messages.append)
    assert summary["step"] == 5 and summary["train/skipped_steps"] == 2
    assert "step 2: not applied (loss is nan); 1 in a row, 1 in all" in messages
    assert "step 3: not applied (loss is nan); 2 in a row, 2 in all" in messages
    records = read_metrics(tmp_path)
    skipped = {r["step"]: r for r in records if "skipped/reason" in r}
    assert sorted(skipped) == [2, 3] and skipped[3]["skipped/in_a_row"] == 2 and skipped[3]["skipped/loss"] is None
    logged = {r["step"]: r for r in records if "train/step_s" in r}
    assert logged[2]["train/loss"] is None and logged[2]["train/bad_steps"] == 1  # reported as null, not dropped
    assert logged[4]["train/bad_steps"] == 0 and logged[5]["train/skipped_steps"] == 2


def test_a_streak_stops_the_run_with_its_batches_saved_and_the_last_good_checkpoint_newest(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {3, 4, 5})
    config = small(steps=8, max_bad_steps=3)
    with pytest.raises(DivergenceError) as raised:
        train(config, tmp_path, log=lambda _: None)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("steps 3–5: 3 steps in a row not applied (train.max_bad_steps=3)")
    assert "the newest checkpoint, step 2, holds the last applied parameters" in message
    assert saved_steps(tmp_path) == [2]  # the save due at step 4 waited for an applied step
    for step in (3, 5):
        path = tmp_path / "bad_batches" / f"step_{step}.npz"
        assert str(path) in message
        assert np.isnan(np.load(path)["loss_mask"]).all()
    # bad data, not a bad model: allow a longer streak and resume, the same batches are skipped
    summary = train(small(steps=8, max_bad_steps=4), tmp_path, log=lambda _: None)
    assert summary["step"] == 8 and summary["train/skipped_steps"] == 3 and saved_steps(tmp_path)[-1] == 8


def test_divergence_from_a_huge_learning_rate_exits_3_with_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(["train", "--config", str(CLI_EXPERIMENT), "--workdir", str(workdir), "--set", "optim.lr=1e20",
                     "--set", "train.steps=12", "--set", "train.max_bad_steps=2", "--set", "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith("mmntp train: error: steps ") and "train.max_bad_steps=2" in err[-1]
    newest = max(saved_steps(workdir))
    assert f"the newest checkpoint, step {newest}," in err[-1] and newest < 12
    assert list((workdir / "bad_batches").glob("step_*.npz"))


def test_the_spike_guard_skips_a_loss_far_above_its_running_mean():
    @struct.dataclass
    class State:
        step: jax.Array
        params: jax.Array
        guard: object

    state = State(step=jnp.zeros((), jnp.int32), params=jnp.zeros(()), guard=init_guard())
    step = jax.jit(lambda s, loss: guard_step(s, s.replace(step=s.step + 1, params=s.params + 1), loss, jnp.float32(1.0), spike_factor=3.0))
    for _ in range(SPIKE_WARMUP):
        state, metrics = step(state, jnp.float32(1.0))
    state, metrics = step(state, jnp.float32(5.0))  # 5 > 3 × 1: not applied
    assert int(metrics["bad_steps"]) == 1 and float(state.params) == SPIKE_WARMUP and float(metrics["loss_mean"]) == pytest.approx(1.0)
    state, metrics = step(state, jnp.float32(2.0))
    assert int(metrics["bad_steps"]) == 0 and int(metrics["skipped_steps"]) == 1 and float(state.params) == SPIKE_WARMUP + 1


def test_an_update_that_overflows_is_not_applied():
    @struct.dataclass
    class State:
        step: jax.Array
        params: jax.Array
        guard: object

    state = State(step=jnp.zeros((), jnp.int32), params=jnp.full((3,), 3e38, jnp.float32), guard=init_guard())
    step = jax.jit(lambda s, delta: guard_step(s, s.replace(step=s.step + 1, params=s.params + delta), jnp.float32(1.0), jnp.float32(1.0)))
    state, metrics = step(state, jnp.float32(1e38))  # finite loss and gradient, an infinite parameter
    assert int(metrics["bad_steps"]) == 1 and int(state.step) == 1 and np.all(np.asarray(state.params) == np.float32(3e38))
    assert skip_reason(1.0, 1.0, None, 0.0) == "updated parameters are not finite"
    state, metrics = step(state, jnp.float32(-1e38))
    assert int(metrics["bad_steps"]) == 0 and np.all(np.asarray(state.params) == np.float32(3e38) + np.float32(-1e38))


def tiny_tokenizer(**train) -> TokenizerExperiment:
    from mmntp_jax.config import CheckpointConfig
    from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
    from mmntp_jax.tokenizers.image import ImageTokenizerConfig

    model = ImageTokenizerConfig(image_size=16, factor=4, patch=2, channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
                                 norm_groups=4, attention=False, quantizer=QuantizerConfig(kind="fsq", levels=(5, 5, 5)))
    settings = dict(steps=6, batch_size=8, log_every=1, eval_every=100, samples=0, progress=False, compilation_cache="", **train)
    return TokenizerExperiment(name="tiny", kind="image", model=model, data=TokenizerDataConfig(train_items=64, eval_items=8),
                               optim=OptimConfig(lr=5e-3, warmup_steps=1, weight_decay=0.0), train=TokenizerTrainConfig(**settings),
                               checkpoint=CheckpointConfig(every=1, keep=5, async_save=False), mesh=MeshConfig(data=-1))


@pytest.mark.slow
def test_tokenizer_training_stops_on_a_streak_like_the_backbone(tmp_path, monkeypatch):
    from mmntp_jax.train.tokenizer import TokenizerClient
    from mmntp_jax.train.tokenizer import train as train_tokenizer

    fetch = TokenizerClient.next_batch
    monkeypatch.setattr(TokenizerClient, "next_batch", lambda self, index: fetch(self, index) * (np.nan if index >= 2 else 1.0))
    messages = []
    with pytest.raises(DivergenceError, match="steps 3–4: 2 steps in a row not applied") as raised:
        train_tokenizer(tiny_tokenizer(max_bad_steps=2), tmp_path, log=messages.append)
    assert "step 3: not applied (loss is nan); 1 in a row, 1 in all" in messages
    assert "the newest checkpoint, step 2," in str(raised.value) and saved_steps(tmp_path) == [1, 2]
    assert np.isnan(np.load(tmp_path / "bad_batches" / "step_3.npz")["items"]).all()
    assert not (tmp_path / "tokenizer").exists()  # nothing exported from a stopped run


def test_guard_settings_are_validated():
    for train_keys, match in ((dict(max_bad_steps=0), "train.max_bad_steps': must be an integer ≥ 1"),
                              (dict(spike_factor=0.5), "train.spike_factor': must be 0 \\(off\\) or a finite number > 1"),
                              (dict(on_schedule_change="restart"), "'restart' is not one of refuse, restart_schedule")):
        with pytest.raises(ConfigError, match=match):
            validate(tiny_config(train=train_keys))
        with pytest.raises(ConfigError, match=match):
            validate_tokenizer(tiny_tokenizer(**train_keys))
