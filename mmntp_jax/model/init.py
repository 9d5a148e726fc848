"""Creating, sharding and binding backbone parameters.

Parameters travel as a plain nested dict of arrays (`nnx.to_pure_dict` layout,
HF names as keys): that is what the optimizer, orbax and export see. The NNX
graph definition turns such a dict back into a `Transformer` for a forward pass.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mmntp_jax.model.transformer import Transformer
from mmntp_jax.sharding import state_partition_specs


def _spec_tree_to_dict(tree):
    if isinstance(tree, PartitionSpec):
        return tree
    return {k: _spec_tree_to_dict(v) for k, v in tree.items()}  # nnx.State is a Mapping


def abstract_model(cfg):
    """(graphdef, abstract nnx.State) without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def graphdef(cfg):
    return abstract_model(cfg)[0]


def param_specs(cfg) -> dict:
    """Nested dict of PartitionSpec (mesh axes) matching the params dict."""
    _, state = abstract_model(cfg)
    return _spec_tree_to_dict(state_partition_specs(state))


def param_shardings(cfg, mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg), is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_params(cfg, key, mesh=None) -> dict:
    """Fresh parameters; with a mesh, each array is created already sharded."""

    def create(key):
        return nnx.to_pure_dict(nnx.split(Transformer(cfg, rngs=nnx.Rngs(params=key)))[1])

    if mesh is None:
        return jax.jit(create)(key)
    return jax.jit(create, out_shardings=param_shardings(cfg, mesh))(key)


def bind(graph, params) -> Transformer:
    """The Transformer whose parameters are `params` (a pure dict)."""
    return nnx.merge(graph, params)
