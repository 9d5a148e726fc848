"""One mesh, one table of logical → mesh axis rules.

Model code names logical axes only (`batch`, `length`, `embed`, `heads`,
`kv_heads`, `head_dim`, `mlp`, `vocab`, `codebook`, `layers`); this module is
the single place that maps them onto the mesh axes
("data", "fsdp", "tensor", "sequence").

Parameters carry their logical axes as `logical_axes` metadata on the NNX
variable. Arrays stacked over layers have one extra leading axis, which maps to
the logical axis `layers` (never sharded).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from mmntp_jax.config import ConfigError, MeshConfig, mesh_shape

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

LOGICAL_RULES: dict[str, tuple[str, ...] | str | None] = {
    "batch": ("data", "fsdp"),
    "length": "sequence",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    "codebook": None,
    "layers": None,
}


def use_cpu_devices(count: int | None) -> None:
    """Splits the host CPU into `count` JAX devices, so one machine trains data-parallel over its cores.

    XLA's CPU runtime keeps few cores busy on small convolutional steps; two CPU
    devices on a 2-core machine run the image tokenizer's step 1.9× faster
    (docs/benchmarks.md). Must run before JAX starts; `None` keeps JAX's default.
    Accelerator platforms are unaffected.
    """
    if count is None:
        return
    if count < 1:
        raise ConfigError(f"--cpu-devices: expected a device count ≥ 1, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as err:
        raise RuntimeError(f"--cpu-devices {count}: JAX has already started ({err})") from None


def cpu_device_count(setting: int) -> int | None:
    """`train.cpu_devices` → a count for `use_cpu_devices`: 0 = JAX's default (None),
    -1 = one device per core of this machine, N = N."""
    if setting == 0:
        return None
    return os.cpu_count() or 1 if setting == -1 else setting


def make_mesh(mesh_config: MeshConfig, devices=None) -> jax.sharding.Mesh:
    """A mesh over ("data", "fsdp", "tensor", "sequence") with Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    device_array = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes, rules=None) -> PartitionSpec:
    """Maps logical axis names (or None) to a PartitionSpec of mesh axes."""
    rules = LOGICAL_RULES if rules is None else rules
    spec, used = [], set()
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {', '.join(rules)}")
        target = rules[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        spec.append(targets[0] if len(targets) == 1 else (targets or None))
    return PartitionSpec(*spec)


def variable_logical_axes(variable: nnx.Variable) -> tuple:
    axes = tuple(variable.get_metadata().get("logical_axes", ()))
    ndim = np.ndim(variable.get_value())
    if ndim == len(axes) + 1:
        axes = ("layers",) + axes
    if ndim != len(axes):
        return (None,) * ndim
    return axes


def state_partition_specs(state):
    """PartitionSpec tree for an nnx.State (or any tree of nnx.Variables)."""
    return jax.tree.map(
        lambda v: logical_to_spec(variable_logical_axes(v)) if isinstance(v, nnx.Variable) else PartitionSpec(),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def state_shardings(state, mesh):
    specs = state_partition_specs(state)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh) -> NamedSharding:
    """[B, T] arrays: batch over data×fsdp, length over sequence."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length")))


def constrain(x, logical_axes):
    """with_sharding_constraint by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes))


def shard_batch(batch: dict, mesh) -> dict:
    """Places a host-local batch dict of [B, T] numpy arrays onto the mesh."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
