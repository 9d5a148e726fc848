"""Tokenizer training: loss falls, the CLI trains / evaluates / encodes, GAN weighting, data parallelism."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.cli import main
from mmntp_jax.config import CheckpointConfig, MeshConfig
from mmntp_jax.sharding import make_mesh
from mmntp_jax.tokenizers import media
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.experiment import LossConfig, TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig, to_json
from mmntp_jax.tokenizers.gan import GanConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.train.tokenizer_step import TokenizerStepBuilder, reconstruction_loss
from mmntp_jax.train.metrics import read_metrics

MODEL = ImageTokenizerConfig(image_size=16, factor=4, patch=2, channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=16, norm_groups=4,
                             attention=False, quantizer=QuantizerConfig(kind="fsq", levels=(5, 5, 5)))
EXPERIMENT_FILE = '''
from mmntp_jax.config import CheckpointConfig, OptimConfig
from mmntp_jax.tokenizers.experiment import TokenizerExperiment, TokenizerDataConfig, TokenizerTrainConfig
from tests.test_tokenizers_train import MODEL

def get_config():
    return TokenizerExperiment(name="tiny", kind="image", model=MODEL,
        data=TokenizerDataConfig(train_items=512, eval_items=32),
        optim=OptimConfig(lr=5e-3, warmup_steps=5, weight_decay=0.0, b2=0.99),
        train=TokenizerTrainConfig(steps=300, batch_size=16, log_every=10, eval_every=300, samples=4, progress=False),
        checkpoint=CheckpointConfig(every=150, keep=2, async_save=False))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_train")
    config = root / "tiny.py"
    config.write_text(EXPERIMENT_FILE)
    workdir = root / "run"
    assert main(["tokenizer", "train", "--config", str(config), "--workdir", str(workdir)]) == 0
    return config, workdir


def test_training_lowers_the_reconstruction_loss(trained):
    _, workdir = trained
    records = [r for r in read_metrics(workdir) if "train/reconstruction" in r]
    first, last = records[0]["train/reconstruction"], records[-1]["train/reconstruction"]
    assert last < 0.5 * first, (first, last)
    evals = [r for r in read_metrics(workdir) if "eval/psnr" in r]
    assert evals and evals[-1]["eval/psnr"] > 16.0
    assert 0.0 < evals[-1]["eval/codebook_usage"] <= 1.0 and evals[-1]["eval/perplexity"] >= 1.0
    assert (workdir / "samples" / "step_000300.png").is_file()
    assert (workdir / "tokenizer" / "tokenizer.safetensors").is_file()


def test_cli_eval_encode_and_complete_rerun(trained, tmp_path, capsys):
    config, workdir = trained
    capsys.readouterr()
    assert main(["tokenizer", "eval", "--workdir", str(workdir), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("psnr", "codebook_usage", "perplexity", "mse", "tokens_per_item"):
        assert key in figures
    assert figures["step"] == 300 and figures["tokens_per_item"] == 16
    record = [r for r in read_metrics(workdir) if "eval/psnr" in r][-1]
    assert figures["psnr"] == pytest.approx(record["eval/psnr"], abs=1e-4)  # restored checkpoint = trained state

    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(3):
        media.save_image(folder / f"{i}.png", rng.uniform(size=(20 + i, 24, 3)))
    assert main(["tokenizer", "eval", "--workdir", str(workdir), "--images", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 3.0
    out = tmp_path / "codes"
    assert main(["tokenizer", "encode", "--workdir", str(workdir), "--input", str(folder), "--out", str(out)]) == 0
    codes = np.load(out / "codes.npy")
    assert codes.shape == (3, 16) and codes.max() < 125
    (folder / "bad.png").write_bytes(b"not a png")
    assert main(["tokenizer", "encode", "--workdir", str(workdir), "--input", str(folder), "--out", str(out)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--config", str(config), "--workdir", str(workdir)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["tokenizer", "train", "--config", str(config), "--workdir", str(workdir), "--set", "model.channels=8"]) == 2
    assert "different config" in capsys.readouterr().err


def _experiment(**changes):
    base = TokenizerExperiment(name="t", kind="image", model=MODEL, data=TokenizerDataConfig(train_items=16, eval_items=8),
                               train=TokenizerTrainConfig(steps=4, batch_size=8), checkpoint=CheckpointConfig(every=4, keep=1))
    return dataclasses.replace(base, **changes)


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_adaptive_gan_weight_is_the_gradient_norm_ratio_at_the_output_layer():
    gan = GanConfig(weight=0.5, start_step=0, adaptive=True, channels=8, layers=1)
    exp = _experiment(loss=LossConfig(reconstruction="l1", gan=gan))
    builder = TokenizerStepBuilder(exp, make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    state = builder.init_state(0)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)), jnp.float32)
    key = jax.random.key(0)
    _, (metrics, *_) = builder._objective(state.params, state, x, key, jnp.asarray(True))

    def parts(params):  # reference: the whole forward pass, differentiated w.r.t. every parameter
        model = nnx.merge(builder.graphdef, params, state.codebooks)
        rec = model.decode_latent(model.quantize(model.encode_latent(x)).z_q)
        disc = nnx.merge(builder.disc_graphdef, state.disc_params)
        return reconstruction_loss(rec, x, exp.loss, "image"), -jnp.mean(disc(rec))

    g_rec = jax.grad(lambda p: parts(p)[0])(state.params)["decoder"]["conv_out"]
    g_gan = jax.grad(lambda p: parts(p)[1])(state.params)["decoder"]["conv_out"]
    norm = lambda t: np.sqrt(sum(float(jnp.sum(jnp.square(v))) for v in jax.tree.leaves(t)))
    assert float(metrics["gan/weight"]) == pytest.approx(0.5 * norm(g_rec) / (norm(g_gan) + 1e-4), rel=1e-3)


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_parameter_ema_follows_its_recurrence_is_what_eval_uses_and_ignores_a_skipped_step():
    exp = _experiment(train=TokenizerTrainConfig(steps=4, batch_size=4, ema_decay=0.5, progress=False))
    builder = TokenizerStepBuilder(exp, make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    state = builder.init_state(0)
    ema = [np.asarray(a) for a in jax.tree.leaves(jax.device_get(state.params))]
    x = np.random.default_rng(2).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    for step in range(3):
        state, _ = builder.train_step(state, jnp.asarray(x))
        decay = min(0.5, (1 + step) / (10 + step))
        ema = [e + (1 - decay) * (np.asarray(p) - e) for e, p in zip(ema, jax.tree.leaves(jax.device_get(state.params)))]
    for want, got in zip(ema, jax.tree.leaves(jax.device_get(state.ema_params))):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    averaged, raw = nnx.state(builder.module(state), nnx.Param), nnx.state(builder.module(state, raw=True), nnx.Param)
    kernel = lambda st: np.asarray(st["decoder"]["conv_out"]["conv"]["kernel"][...])
    np.testing.assert_array_equal(kernel(averaged), np.asarray(state.ema_params["decoder"]["conv_out"]["conv"]["kernel"][...]))
    np.testing.assert_array_equal(kernel(raw), np.asarray(state.params["decoder"]["conv_out"]["conv"]["kernel"][...]))
    assert not np.allclose(kernel(averaged), kernel(raw))
    # a step with a non-finite loss is not applied: parameters, their average and the optimizer state stay as they were
    before = jax.device_get((state.params, state.ema_params, state.codebooks, state.opt_state))
    state, metrics = builder.train_step(state, jnp.asarray(x * np.nan))
    assert np.isnan(float(metrics["loss"])) and int(metrics["bad_steps"]) == 1 and int(state.step) == 4
    for want, got in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get((state.params, state.ema_params, state.codebooks, state.opt_state)))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step():
    exp = _experiment(model=dataclasses.replace(MODEL, quantizer=QuantizerConfig(kind="vq", codebook_size=16, dim=4, ema=True)),
                      loss=LossConfig(gan=GanConfig(weight=0.1, start_step=0, channels=8, layers=1)))
    x = np.random.default_rng(1).uniform(size=(8, 16, 16, 3)).astype(np.float32)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        builder = TokenizerStepBuilder(exp, make_mesh(MeshConfig(data=len(devices)), devices))
        state = builder.init_state(0)
        state, metrics = builder.train_step(state, jax.device_put(x, builder.batch_sharding(4)))
        results.append((jax.device_get(state.params), jax.device_get(state.codebooks), float(metrics["loss"])))
    (p1, c1, l1), (p8, c8, l8) = results
    assert l1 == pytest.approx(l8, rel=1e-5)
    for a, b in zip(jax.tree.leaves(p1) + jax.tree.leaves(c1), jax.tree.leaves(p8) + jax.tree.leaves(c8)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_config_errors_name_the_key(tmp_path):
    from mmntp_jax.config import ConfigError
    from mmntp_jax.tokenizers.experiment import from_json, validate

    with pytest.raises(ConfigError, match="'data.source': 'digits' is not one of shapes, photos, folder"):
        validate(_experiment(data=TokenizerDataConfig(source="digits")))
    with pytest.raises(ConfigError, match="'model.channel_mult'"):
        validate(_experiment(model=dataclasses.replace(MODEL, channel_mult=(1, 2, 2))))
    with pytest.raises(ConfigError, match="'model.quantizer.kind'"):
        validate(_experiment(model=dataclasses.replace(MODEL, quantizer=QuantizerConfig(kind="pq"))))
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate(_experiment(train=TokenizerTrainConfig(batch_size=6)), device_count=8)
    with pytest.raises(ConfigError, match=r"'train.ema_decay': must be in \[0, 1\), got 1.0"):
        validate(_experiment(train=TokenizerTrainConfig(ema_decay=1.0)))
    exp = _experiment()
    assert from_json(to_json(exp)) == exp


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    import signal

    from mmntp_jax.tokenizers import datasets
    from mmntp_jax.train.tokenizer import train
    from mmntp_jax.train.checkpoint import Checkpointer

    exp = _experiment(train=TokenizerTrainConfig(steps=6, batch_size=8, log_every=1, eval_every=6, samples=0, ema_decay=0.9, progress=False),
                      checkpoint=CheckpointConfig(every=3, keep=3, async_save=False), mesh=MeshConfig(data=-1))
    train(exp, tmp_path / "straight")
    batch_indices = datasets.batch_indices

    def sigterm_at_step_3(n_items, batch_size, step, seed):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)  # the loop finishes this step, checkpoints at 4 and stops
        return batch_indices(n_items, batch_size, step, seed)

    monkeypatch.setattr(datasets, "batch_indices", sigterm_at_step_3)
    assert train(exp, tmp_path / "resumed")["interrupted"] == "SIGTERM"
    monkeypatch.setattr(datasets, "batch_indices", batch_indices)
    probe = Checkpointer(tmp_path / "resumed", async_save=False)
    assert probe.all_steps() == [3, 4]
    probe.close()
    train(exp, tmp_path / "resumed")
    losses = [[r["train/loss"] for r in read_metrics(tmp_path / name) if "train/loss" in r] for name in ("straight", "resumed")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    builder = TokenizerStepBuilder(exp, make_mesh(exp.mesh))
    states = []
    for name in ("straight", "resumed"):
        ckpt = Checkpointer(tmp_path / name, async_save=False)
        states.append(ckpt.restore(6, builder.abstract_state())[0])
        ckpt.close()
    for a, b in zip(jax.tree.leaves((states[0].params, states[0].ema_params)), jax.tree.leaves((states[1].params, states[1].ema_params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.leaves(states[0].ema_params)


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_a_checkpoint_from_before_parameter_ema_restores(tmp_path):
    from mmntp_jax.train.checkpoint import Checkpointer

    builder = TokenizerStepBuilder(_experiment(), make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    state = builder.init_state(0)
    older = {name: value for name, value in vars(state).items() if name != "ema_params"}
    checkpointer = Checkpointer(tmp_path, async_save=False)
    checkpointer.save(0, older, None, force=True)
    from mmntp_jax.errors import CheckpointRestoreError

    with pytest.raises(CheckpointRestoreError, match="ema_params"):  # one line naming the missing field
        checkpointer.restore(0, builder.abstract_state())
    restored, _ = checkpointer.restore(0, builder.abstract_state(), optional_fields=("ema_params",))
    checkpointer.close()
    assert restored.ema_params is None
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
