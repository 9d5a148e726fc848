"""8 simulated devices: sharded quantizers and codebook updates equal the 1-device result on the global batch."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mmntp_jax.tokenizers.quantizers import (
    bsq,
    ema_update,
    fsq,
    group_vq,
    init_vq_state,
    kmeans_init,
    msvq,
    msvq_ema_update,
    restart_dead_codes,
    rvq,
    rvq_ema_update,
    vq,
    vq_state,
)

AXES = ("data", "fsdp")


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.fail("the quantizer mesh tests need 8 devices (tests/conftest.py sets them)")
    return jax.make_mesh((4, 2), AXES, axis_types=(AxisType.Auto,) * 2)


def sharded(mesh, f, n_sharded_in, n_repl_in):
    """shard_map over both mesh axes: the first inputs split on their batch axis, the rest replicated, outputs replicated."""
    in_specs = (P(AXES),) * n_sharded_in + (P(),) * n_repl_in
    return jax.jit(jax.shard_map(partial(f, axis_name=AXES), mesh=mesh, in_specs=in_specs, out_specs=P()))


def assert_tree_close(a, b, rtol=1e-5, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_vq_ema_kmeans_and_restart_equal_single_device(mesh):
    rs = np.random.RandomState(0)
    z = jnp.asarray(rs.randn(16, 32, 4), jnp.float32)

    def train_step(z, state, key, axis_name=None):
        k_init, k_restart = jax.random.split(key)
        state = kmeans_init(state, z, k_init, iters=3, axis_name=axis_name)
        out = vq(z, state, axis_name=axis_name)
        state = ema_update(state, z, out.codes, decay=0.9, axis_name=axis_name)
        dead = state.cluster_size_C < 18.0
        state = restart_dead_codes(state, z, k_restart, threshold=18.0, axis_name=axis_name)
        return state, out.aux_loss, out.metrics, dead

    state0 = init_vq_state(jax.random.key(0), 24, 4, kmeans=True)
    key = jax.random.key(1)
    single = jax.jit(train_step)(z, state0, key)
    multi = sharded(mesh, train_step, 1, 2)(z, state0, key)
    assert_tree_close(single, multi, rtol=1e-4, atol=1e-5)
    # some codes were restarted, from the same global tokens, bit for bit
    dead = np.asarray(single[3])
    assert 0 < dead.sum() < 24
    np.testing.assert_array_equal(np.asarray(single[0].codebook_CK)[dead], np.asarray(multi[0].codebook_CK)[dead])
    tokens = np.asarray(z).reshape(-1, 4)
    for row in np.asarray(multi[0].codebook_CK)[dead]:
        assert np.any(np.all(tokens == row, axis=-1))


def test_globally_sharded_arrays_under_plain_jit(mesh):
    rs = np.random.RandomState(1)
    z = jnp.asarray(rs.randn(16, 32, 4), jnp.float32)
    state = vq_state(jnp.asarray(rs.randn(24, 4), jnp.float32))

    def step(z, state, key):
        out = vq(z, state)
        new = ema_update(state, z, out.codes, decay=0.9)
        return restart_dead_codes(new, z, key, threshold=1.5), out.codes, out.metrics

    z_sharded = jax.device_put(z, NamedSharding(mesh, P(AXES)))
    single = jax.jit(step)(z, state, jax.random.key(2))
    multi = jax.jit(step)(z_sharded, state, jax.random.key(2))
    assert len(multi[1].sharding.device_set) == 8
    assert_tree_close(single, multi)


def test_every_quantizer_reduces_over_the_mesh(mesh):
    rs = np.random.RandomState(2)
    z4 = jnp.asarray(rs.randn(16, 8, 4), jnp.float32)
    z12 = jnp.asarray(rs.randn(16, 8, 12), jnp.float32)
    img = jnp.asarray(rs.randn(16, 8, 8, 4), jnp.float32)
    cbs = jnp.asarray(rs.randn(3, 16, 4), jnp.float32)
    cases = {
        "fsq": (lambda z, axis_name=None: fsq(z, [8, 5, 5, 5], axis_name=axis_name), z4),
        "bsq": (lambda z, axis_name=None: bsq(z, num_codebooks=2, commitment_weight=0.5, inv_temperature=2.0, axis_name=axis_name), z12),
        "rvq": (lambda z, axis_name=None: rvq(z, cbs, axis_name=axis_name), z4),
        "group_vq": (lambda z, axis_name=None: group_vq(z, cbs, axis_name=axis_name), z12),
        "msvq": (lambda z, axis_name=None: msvq(z, cbs[0], scales=(1, 2, 4, 8), axis_name=axis_name), img),
    }
    for name, (f, z) in cases.items():
        drop_codes = lambda z, axis_name=None, f=f: (lambda o: (o.aux_loss, o.metrics))(f(z, axis_name=axis_name))  # noqa: E731
        single = jax.jit(drop_codes)(z)
        multi = sharded(mesh, drop_codes, 1, 0)(z)
        assert_tree_close(single, multi, rtol=1e-4, atol=1e-6)


def test_rvq_and_msvq_ema_updates_on_the_mesh(mesh):
    rs = np.random.RandomState(3)
    z = jnp.asarray(rs.randn(16, 8, 4), jnp.float32)
    img = jnp.asarray(rs.randn(8, 8, 8, 4), jnp.float32)
    states = jax.tree.map(lambda *x: jnp.stack(x), *[vq_state(jnp.asarray(rs.randn(16, 4), jnp.float32)) for _ in range(2)])

    def rvq_step(z, states, axis_name=None):
        out = rvq(z, states, axis_name=axis_name)
        return rvq_ema_update(states, z, out.codes, axis_name=axis_name)

    def msvq_step(z, state, axis_name=None):
        out = msvq(z, state, scales=(1, 2, 4, 8), axis_name=axis_name)
        return msvq_ema_update(state, z, out.codes, scales=(1, 2, 4, 8), axis_name=axis_name)

    assert_tree_close(jax.jit(rvq_step)(z, states), sharded(mesh, rvq_step, 1, 1)(z, states))
    one = jax.tree.map(lambda x: x[0], states)
    assert_tree_close(jax.jit(msvq_step)(img, one), sharded(mesh, msvq_step, 1, 1)(img, one))
