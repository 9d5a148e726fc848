"""The same training on 1 device and on 8 simulated devices under different meshes."""

import jax
import numpy as np
import pytest

from mmntp_jax.config import MeshConfig
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.sharding import LOGICAL_RULES, logical_to_spec, make_mesh, shard_batch
from mmntp_jax.train.checkpoint import Checkpointer
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

MESHES = {
    "data=8": dict(data=8),
    "fsdp=8": dict(data=1, fsdp=8),
    "data=2,fsdp=2,tensor=2": dict(data=2, fsdp=2, tensor=2),
    "data=4,sequence=2": dict(data=4, sequence=2),
}


def run_steps(mesh_values, n_steps=3, devices=None):
    config = tiny_config(mesh=mesh_values, model=dict(n_heads=4, n_kv_heads=2))
    mesh = make_mesh(config.mesh, devices)
    builder = StepBuilder(config, mesh)
    state = builder.init_state(seed=0)
    _, data = make_dataset(config)
    it = iter(data)
    losses = []
    for _ in range(n_steps):
        state, metrics = builder.train_step(state, shard_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), state, builder


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(dict(data=1), devices=jax.devices()[:1])


def test_eight_simulated_devices_are_available():
    assert jax.device_count() == 8


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_gives_same_losses_and_params_as_one_device(name, single_device_run):
    ref_losses, ref_params, _, _ = single_device_run
    losses, params, state, _ = run_steps(MESHES[name])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params, ref_params)
    # parameters really are distributed as the rules say
    q_proj = state.params["layers"]["self_attn"]["q_proj"]
    assert q_proj.sharding.spec == logical_to_spec(("layers", "embed", "heads", "head_dim"))


def test_logical_rules_never_repeat_a_mesh_axis():
    spec = logical_to_spec(("batch", "embed"))  # both want fsdp: the second drops it
    assert spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert set(LOGICAL_RULES) >= {"batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "codebook"}


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_checkpoint_restores_onto_other_meshes(tmp_path):
    _, params, state, builder = run_steps(dict(data=4, fsdp=2), n_steps=1)
    ckpt = Checkpointer(tmp_path, async_save=False)
    _, data = make_dataset(builder.config)
    ckpt.save(1, state, iter(data), force=True)
    ckpt.wait()
    for values, devices in ((dict(data=1, fsdp=8), None), (dict(data=1), jax.devices()[:1])):
        config = tiny_config(mesh=values)
        other = StepBuilder(config, make_mesh(config.mesh, devices))
        restored, _ = ckpt.restore(1, other.abstract_state())
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored.params, params)
        embedding = restored.params["embed_tokens"]["embedding"]
        assert embedding.sharding.mesh.shape == other.mesh.shape
    ckpt.close()
