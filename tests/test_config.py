"""Config loading, overrides and the documented error messages."""

import json
import subprocess
import sys

import pytest

from mmntp_jax.config import Config, ConfigError, apply_overrides, from_dict, load_config, mesh_shape, to_dict, validate
from mmntp_jax.config import MeshConfig, default_experiment_path
from tiny import tiny_config


def test_overrides_are_typed():
    config = apply_overrides(Config(), ["model.n_layers=6", "optim.lr=0.001", "model.qk_norm=true", "train.seq_len=128"])
    assert config.model.n_layers == 6 and config.optim.lr == 0.001 and config.model.qk_norm is True
    assert config.train.seq_len == 128


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layer=4", "unknown config key 'model.n_layer'; valid keys here: vocab_size, d_model, n_layers"),
        ("modle.n_layers=4", "unknown config key 'modle.n_layers'; valid keys here: name, model, data"),
        ("model.n_layers=four", "config key 'model.n_layers': cannot parse 'four' as int"),
        ("model.qk_norm=maybe", "config key 'model.qk_norm': cannot parse 'maybe' as bool"),
        ("model", "override 'model': expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "sections, device_count, message",
    [
        (dict(model=dict(n_heads=4, n_kv_heads=3)), None, "'model.n_heads': 4 is not divisible by model.n_kv_heads=3"),
        (dict(model=dict(attention="flash")), None, "'model.attention': 'flash' is not one of xla, reference, blockwise"),
        (dict(data=dict(source="web")), None, "'data.source': 'web' is not one of stdlib, shards, mixture, markov"),
        (dict(optim=dict(schedule="linear")), None, "'optim.schedule': 'linear' is not one of cosine, wsd, constant"),
        (dict(mesh=dict(data=3)), 8, "mesh: data=3, fsdp=1, tensor=1, sequence=1 has 3 devices but 8 are available"),
        (dict(mesh=dict(data=8), train=dict(batch_size=4)), 8, "'train.batch_size': micro-batch 4 is not divisible by mesh data×fsdp=8"),
        (dict(mesh=dict(data=4, sequence=2), train=dict(seq_len=63)), 8, "'train.seq_len': 63 is not divisible by mesh.sequence=2"),
        (dict(mesh=dict(data=4, tensor=2), model=dict(n_kv_heads=1)), 8, "'mesh.tensor': 2 does not divide model.n_kv_heads=1"),
        (dict(train=dict(batch_size=6), optim=dict(grad_accum=4)), None, "'train.batch_size': 6 is not divisible by optim.grad_accum=4"),
        (dict(model=dict(dtype="float16")), None, "'model.dtype': 'float16' is not one of float32, bfloat16"),
    ],
)
def test_impossible_combinations_fail_at_load(sections, device_count, message):
    with pytest.raises(ConfigError) as err:
        validate(tiny_config(**sections), device_count=device_count)
    assert message in str(err.value)


def test_wrong_type_in_experiment_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text("from mmntp_jax.config import Config, TrainConfig\ndef get_config():\n    return Config(train=TrainConfig(steps='10'))\n")
    with pytest.raises(ConfigError, match="config key 'train.steps': expected int, got str '10'"):
        load_config(path)


def test_mesh_fill_axis_and_json_round_trip():
    assert mesh_shape(MeshConfig(data=-1, tensor=2), 8) == {"data": 4, "fsdp": 1, "tensor": 2, "sequence": 1}
    config = tiny_config()
    assert from_dict(Config, json.loads(json.dumps(to_dict(config)))) == config


def test_default_experiment_and_print_config():
    assert default_experiment_path().name == "captioned.py"
    out = subprocess.run(
        [sys.executable, "-m", "mmntp_jax.cli", "train", "--print-config", "--set", "model.n_layers=3"],
        capture_output=True, text=True, check=True,
    )
    printed = json.loads(out.stdout)
    assert printed["model"]["n_layers"] == 3 and printed["name"] == "captioned" and printed["job"]["kind"] == "captioned"
    bad = subprocess.run([sys.executable, "-m", "mmntp_jax.cli", "train", "--print-config", "--set", "model.bogus=1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("mmntp train: error: unknown config key 'model.bogus'")
