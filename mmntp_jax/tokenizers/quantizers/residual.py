"""Residual quantization: Q quantizers in turn, each coding what the previous ones left.

Dimension legend: ... any leading axes, N tokens, K code dimension, C
codebook size, Q quantizers (layers).

`residual_quantize` is the generic wrapper (used by `rvq`, `residual_fsq`
and `residual_lfq`): layer i sees residual_i = z − sg(q_0 + … + q_{i−1}), so
its commitment loss pulls z towards the reconstruction at depth i. Codes are
stacked on a trailing Q axis; quantizer dropout (SoundStream/EnCodec) keeps
only the first n layers of a batch, n drawn uniformly in
[cutoff + 1, Q], and marks dropped layers' codes −1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from mmntp_jax.tokenizers.quantizers.codebook import ema_update, kmeans_init, restart_dead_codes
from mmntp_jax.tokenizers.quantizers.stats import AxisName
from mmntp_jax.tokenizers.quantizers.types import QuantOut, VQState
from mmntp_jax.tokenizers.quantizers.vq import vq, vq_codes_to_vectors

LayerFn = Callable[[int, jax.Array], QuantOut]


def dropout_num_active(key: jax.Array, num_quantizers: int, cutoff: int = 0, multiple_of: int = 1) -> jax.Array:
    """int32 scalar n in [cutoff + 1, Q] (rounded up to a multiple of `multiple_of`, at most Q)."""
    if not 0 <= cutoff < num_quantizers:
        raise ValueError(f"quantizer dropout cutoff must be in [0, {num_quantizers}), got {cutoff}")
    last = jax.random.randint(key, (), cutoff, num_quantizers)
    n = last + 1
    if multiple_of > 1:
        n = ((n + multiple_of - 1) // multiple_of) * multiple_of
    return jnp.minimum(n, num_quantizers).astype(jnp.int32)


def residual_quantize(
    z: jax.Array,
    layer_fn: LayerFn,
    num_quantizers: int,
    *,
    num_active: int | jax.Array | None = None,
    straight_through_total: bool = True,
) -> QuantOut:
    """Runs `layer_fn(i, residual_i)` for i < Q and sums the layer outputs.

    num_active: only the first n layers count (int or traced scalar, e.g.
        from `dropout_num_active`); later codes are −1 and their losses 0.
    straight_through_total: z_q's gradient to z is the identity (else the sum
        of the layers' own gradients, as for residual FSQ).
    aux_loss sums the active layers'; metrics average over them, and also report
    `active_quantizers`.
    """
    z_f = z.astype(jnp.float32)
    residual = z_f
    total = jnp.zeros_like(z_f)
    codes, aux, metric_list, actives = [], jnp.float32(0.0), [], []
    for i in range(num_quantizers):
        out = layer_fn(i, residual)
        active = jnp.asarray(True if num_active is None else i < num_active)
        actives.append(active.astype(jnp.float32))
        q = jnp.where(active, out.z_q.astype(jnp.float32), 0.0)
        value = lax.stop_gradient(q)
        residual = residual - value
        total = total + (value if straight_through_total else q)
        codes.append(jnp.where(active, out.codes, -1))
        aux = aux + jnp.where(active, out.aux_loss, 0.0)
        metric_list.append(out.metrics)
    if straight_through_total:
        total = z_f + lax.stop_gradient(total - z_f)
    n_active = sum(actives)
    metrics = {k: sum(a * m[k] for a, m in zip(actives, metric_list)) / n_active for k in metric_list[0]}
    metrics["active_quantizers"] = n_active
    return QuantOut(total.astype(z.dtype), jnp.stack(codes, axis=-1), aux, metrics)


def _layer_codebook(codebooks: jax.Array | VQState, i: int, shared: bool):
    if shared:
        return codebooks
    return jax.tree.map(lambda x: x[i], codebooks)


def _num_layers(codebooks: jax.Array | VQState, num_quantizers: int | None) -> tuple[int, bool]:
    """(Q, shared?) from stacked [Q, C, K] codebooks, or a single [C, K] codebook plus num_quantizers."""
    cb = codebooks.codebook_CK if isinstance(codebooks, VQState) else jnp.asarray(codebooks)
    if cb.ndim == 3:
        if num_quantizers not in (None, cb.shape[0]):
            raise ValueError(f"rvq: {cb.shape[0]} stacked codebooks but num_quantizers={num_quantizers}")
        return cb.shape[0], False
    if cb.ndim == 2:
        if num_quantizers is None or num_quantizers < 1:
            raise ValueError("rvq: a single shared [C, K] codebook needs num_quantizers >= 1")
        return num_quantizers, True
    raise ValueError(f"rvq: codebooks must be [Q, C, K] or a shared [C, K], got shape {cb.shape}")


def rvq(
    z: jax.Array,
    codebooks: jax.Array | VQState,
    *,
    num_quantizers: int | None = None,
    dropout_key: jax.Array | None = None,
    dropout_cutoff: int = 0,
    dropout_multiple_of: int = 1,
    num_active: int | None = None,
    axis_name: AxisName = None,
    **vq_options,
) -> QuantOut:
    """Residual VQ of `z[..., K]`; codes are `[..., Q]`.

    codebooks: separate codebooks stacked as [Q, C, K] (array or VQState with
        a leading Q axis), or one shared [C, K] codebook with `num_quantizers`.
    dropout_key: quantizer dropout for this batch (training); num_active: a
        fixed lower bitrate (inference). Other options go to each `vq` layer.
    """
    q_layers, shared = _num_layers(codebooks, num_quantizers)
    if dropout_key is not None:
        num_active = dropout_num_active(dropout_key, q_layers, dropout_cutoff, dropout_multiple_of)

    def layer(i, residual):
        return vq(residual, _layer_codebook(codebooks, i, shared), axis_name=axis_name, **vq_options)

    return residual_quantize(z, layer, q_layers, num_active=num_active)


def rvq_codes_to_vectors(codes: jax.Array, codebooks: jax.Array | VQState, *, cosine: bool = False) -> jax.Array:
    """int codes [..., Q] → float32 sum of the chosen codes [..., K]; codes −1 (dropped layers) add nothing."""
    q_layers, shared = _num_layers(codebooks, codes.shape[-1])
    total = 0.0
    for i in range(q_layers):
        c = codes[..., i]
        v = vq_codes_to_vectors(jnp.maximum(c, 0), _layer_codebook(codebooks, i, shared), cosine=cosine)
        total = total + jnp.where((c >= 0)[..., None], v, 0.0)
    return total


def rvq_residuals(z: jax.Array, codes: jax.Array, codebooks: jax.Array | VQState, *, cosine: bool = False) -> list[jax.Array]:
    """The input each layer saw, recomputed from the codes (no distance search)."""
    q_layers, shared = _num_layers(codebooks, codes.shape[-1])
    residual = lax.stop_gradient(z.astype(jnp.float32))
    out = []
    for i in range(q_layers):
        out.append(residual)
        c = codes[..., i]
        v = vq_codes_to_vectors(jnp.maximum(c, 0), _layer_codebook(codebooks, i, shared), cosine=cosine)
        residual = residual - jnp.where((c >= 0)[..., None], v, 0.0)
    return out


def _per_layer(states: VQState, z, codes, fn, *, cosine=False, keys=None, residuals=None):
    q_layers, shared = _num_layers(states, codes.shape[-1])
    if residuals is None:
        residuals = rvq_residuals(z, codes, states, cosine=cosine)
    if shared:
        r_all = jnp.concatenate([r.reshape(-1, r.shape[-1]) for r in residuals])
        c_all = jnp.concatenate([codes[..., i].reshape(-1) for i in range(q_layers)])
        return fn(states, r_all, c_all, None if keys is None else keys[0])
    new = [fn(_layer_codebook(states, i, False), residuals[i], codes[..., i], None if keys is None else keys[i]) for i in range(q_layers)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *new)


def rvq_ema_update(
    states: VQState, z: jax.Array, codes: jax.Array, *, cosine: bool = False, residuals: list[jax.Array] | None = None, **ema_options
) -> VQState:
    """EMA step for every layer (a shared codebook learns from all layers' residuals at once).

    The layers' inputs are recomputed from `codes` with `states`, which must
    be the codebooks of the forward pass, or given as `residuals`.
    """
    fn = lambda s, r, c, _: ema_update(s, r, c, cosine=cosine, **ema_options)  # noqa: E731
    return _per_layer(states, z, codes, fn, cosine=cosine, residuals=residuals)


def rvq_restart_dead_codes(
    states: VQState,
    z: jax.Array,
    codes: jax.Array,
    key: jax.Array,
    *,
    cosine: bool = False,
    residuals: list[jax.Array] | None = None,
    **options,
) -> VQState:
    """Dead-code restart per layer, from the residuals that layer saw.

    After `rvq_ema_update` the states no longer reproduce the forward pass:
    pass `residuals=rvq_residuals(z, codes, forward_states)` (as `rvq_update` does).
    """
    keys = jax.random.split(key, codes.shape[-1])
    fn = lambda s, r, c, k: restart_dead_codes(s, r, k, cosine=cosine, **options)  # noqa: E731
    return _per_layer(states, z, codes, fn, cosine=cosine, keys=keys, residuals=residuals)


def rvq_update(
    states: VQState,
    z: jax.Array,
    codes: jax.Array,
    key: jax.Array,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    threshold: float = 2.0,
    cosine: bool = False,
    axis_name: AxisName = None,
) -> VQState:
    """The usual training-step update: EMA for every layer, then dead-code restart, both from the forward pass's residuals."""
    residuals = rvq_residuals(z, codes, states, cosine=cosine)
    states = rvq_ema_update(states, z, codes, cosine=cosine, residuals=residuals, decay=decay, eps=eps, axis_name=axis_name)
    return rvq_restart_dead_codes(states, z, codes, key, cosine=cosine, residuals=residuals, threshold=threshold, axis_name=axis_name)


def rvq_kmeans_init(states: VQState, z: jax.Array, key: jax.Array, *, cosine: bool = False, axis_name: AxisName = None, **options) -> VQState:
    """k-means initialisation layer by layer: layer i clusters the residual left by the initialised layers before it."""
    q_layers, shared = _num_layers(states, None if states.codebook_CK.ndim == 3 else 1)
    if shared:
        return kmeans_init(states, z, key, cosine=cosine, axis_name=axis_name, **options)
    keys = jax.random.split(key, q_layers)
    residual = lax.stop_gradient(z.astype(jnp.float32))
    new = []
    for i in range(q_layers):
        s = kmeans_init(_layer_codebook(states, i, False), residual, keys[i], cosine=cosine, axis_name=axis_name, **options)
        new.append(s)
        out = vq(residual, s, cosine=cosine, axis_name=axis_name)
        residual = residual - out.z_q
    return jax.tree.map(lambda *xs: jnp.stack(xs), *new)
