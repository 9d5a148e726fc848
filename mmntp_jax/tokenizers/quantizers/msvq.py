"""Multi-scale residual VQ over a 2-D latent, as in VAR (Tian et al. 2024).

Dimension legend: B batch, H W latent height/width, D channels, S number of
scales, P Q a scale's height/width, T total tokens Σ P·Q.

For each scale (coarse to fine) the remaining residual is area-downsampled to
P×Q, every cell is replaced by its nearest code of one shared codebook, the
code map is upsampled back to H×W (bicubic by default), optionally refined
by `phi`, added to the reconstruction and subtracted from the residual.
Codes of all scales are concatenated coarse to fine, row-major within a
scale: the token order of next-scale prediction. The loss is VAR's, averaged
over scales: beta·‖sg(f̂_s) − z‖² (+ codebook_weight·‖f̂_s − sg(z)‖² when
the codebook is an array learned by gradient).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from mmntp_jax.tokenizers.quantizers.codebook import ema_update, restart_dead_codes
from mmntp_jax.tokenizers.quantizers.resample import resize
from mmntp_jax.tokenizers.quantizers.stats import AxisName, code_counts, mse, usage_metrics
from mmntp_jax.tokenizers.quantizers.types import QuantOut, VQState, l2norm
from mmntp_jax.tokenizers.quantizers.vq import codebook_array, nearest_codes, straight_through

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
Phi = Callable[[jax.Array, int], jax.Array]  # (upsampled code map [B, H, W, D], scale index) -> refined map


def scale_shapes(scales: Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
    """Scales as (P, Q) pairs; an int p means p×p."""
    out = [(s, s) if isinstance(s, int) else tuple(s) for s in scales]
    if not out or any(len(s) != 2 or min(s) < 1 for s in out):
        raise ValueError(f"msvq: scales must be positive ints or (height, width) pairs, got {list(scales)}")
    return out


def tokens_per_image(scales: Sequence[int | tuple[int, int]]) -> int:
    """T = Σ P·Q, the number of codes per latent map."""
    return sum(p * q for p, q in scale_shapes(scales))


def split_codes(codes_BT: jax.Array, scales: Sequence[int | tuple[int, int]]) -> list[jax.Array]:
    """[B, T] → one [B, P, Q] code map per scale."""
    maps, start = [], 0
    for p, q in scale_shapes(scales):
        maps.append(codes_BT[..., start : start + p * q].reshape(*codes_BT.shape[:-1], p, q))
        start += p * q
    return maps


def _check(z: jax.Array, scales) -> list[tuple[int, int]]:
    if z.ndim < 4:
        raise ValueError(f"msvq: input must be [B, H, W, D] (channels last), got shape {z.shape}")
    shapes = scale_shapes(scales)
    h, w = z.shape[-3], z.shape[-2]
    if any(p > h or q > w for p, q in shapes):
        raise ValueError(f"msvq: scales {shapes} exceed the latent size {(h, w)}")
    return shapes


def _walk(z_BHWD, codebook_CD, shapes, upsample, phi, cosine, codes_given=None):
    """Runs the scale loop; yields per scale (residual at P×Q, codes [B, P, Q], reconstruction so far)."""
    f_rest = lax.stop_gradient(z_BHWD)
    f_hat = jnp.zeros_like(z_BHWD)
    hw = z_BHWD.shape[-3:-1]
    for s, (p, q) in enumerate(shapes):
        r_BPQD = resize(f_rest, (p, q), "area")
        if codes_given is None:
            flat = r_BPQD.reshape(-1, r_BPQD.shape[-1])
            codes_BPQ = nearest_codes(l2norm(flat) if cosine else flat, codebook_CD, cosine=cosine).reshape(r_BPQD.shape[:-1])
        else:
            codes_BPQ = codes_given[s]
        h_BHWD = resize(jnp.take(codebook_CD, codes_BPQ, axis=0), hw, upsample)
        if phi is not None:
            h_BHWD = phi(h_BHWD, s)
        f_hat = f_hat + h_BHWD
        f_rest = f_rest - lax.stop_gradient(h_BHWD)
        yield r_BPQD, codes_BPQ, f_hat


def msvq(
    z: jax.Array,
    codebook: jax.Array | VQState,
    *,
    scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
    upsample: str = "bicubic",
    phi: Phi | None = None,
    beta: float = 0.25,
    codebook_weight: float = 1.0,
    cosine: bool = False,
    axis_name: AxisName = None,
) -> QuantOut:
    """Multi-scale VQ of `z[B, H, W, D]`; codes are `[B, T]` (see `split_codes`).

    upsample: "bicubic" (VAR) or "bilinear"; down-sampling is always area.
    phi: optional learned refinement of each upsampled code map (VAR's
        quant_resi), given the scale index.
    """
    shapes = _check(z, scales)
    codebook_CD, learnable = codebook_array(codebook)
    if cosine:
        codebook_CD = l2norm(codebook_CD)
    z_BHWD = z.astype(jnp.float32)
    codes, aux = [], jnp.float32(0.0)
    for r_BPQD, codes_BPQ, f_hat in _walk(z_BHWD, codebook_CD, shapes, upsample, phi, cosine):
        codes.append(codes_BPQ.reshape(*codes_BPQ.shape[:-2], -1))
        aux = aux + beta * mse(lax.stop_gradient(f_hat), z_BHWD, axis_name)
        if learnable:
            aux = aux + codebook_weight * mse(f_hat, lax.stop_gradient(z_BHWD), axis_name)
    codes_BT = jnp.concatenate(codes, axis=-1)
    metrics = {"recon_mse": lax.stop_gradient(mse(f_hat, z_BHWD, axis_name))}
    metrics.update(usage_metrics(code_counts(codes_BT, codebook_CD.shape[0], axis_name)))
    z_q = straight_through(z_BHWD, f_hat).astype(z.dtype)
    return QuantOut(z_q, codes_BT, aux / len(shapes), metrics)


def msvq_codes_to_vectors(
    codes_BT: jax.Array,
    codebook: jax.Array | VQState,
    size: tuple[int, int],
    *,
    scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
    upsample: str = "bicubic",
    phi: Phi | None = None,
    cosine: bool = False,
) -> jax.Array:
    """Codes [B, T] → the reconstruction [B, H, W, D] with (H, W) = `size`.

    A prefix of the scales (codes of the first k scales, with `scales`
    truncated to match) gives the coarse reconstruction, as in VAR sampling.
    """
    shapes = scale_shapes(scales)
    if codes_BT.shape[-1] != tokens_per_image(shapes):
        raise ValueError(f"msvq: codes have {codes_BT.shape[-1]} tokens, scales {shapes} need {tokens_per_image(shapes)}")
    codebook_CD, _ = codebook_array(codebook)
    if cosine:
        codebook_CD = l2norm(codebook_CD)
    f_hat = jnp.zeros((*codes_BT.shape[:-1], *size, codebook_CD.shape[-1]), jnp.float32)
    for s, codes_BPQ in enumerate(split_codes(codes_BT, shapes)):
        h_BHWD = resize(jnp.take(codebook_CD, codes_BPQ, axis=0), size, upsample)
        f_hat = f_hat + (h_BHWD if phi is None else phi(h_BHWD, s))
    return f_hat


def msvq_inputs(
    state_or_codebook: VQState | jax.Array,
    z: jax.Array,
    codes_BT: jax.Array,
    *,
    scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
    upsample: str = "bicubic",
    phi: Phi | None = None,
    cosine: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(rows [T·B, D], codes [T·B]): every scale's down-sampled residual and the code it got,
    recomputed from the codes with the codebook of the forward pass."""
    shapes = _check(z, scales)
    codebook_CD, _ = codebook_array(state_or_codebook)
    if cosine:
        codebook_CD = l2norm(codebook_CD)
    walk = _walk(lax.stop_gradient(z.astype(jnp.float32)), codebook_CD, shapes, upsample, phi, cosine, split_codes(codes_BT, shapes))
    rows, codes = [], []
    for r_BPQD, codes_BPQ, _ in walk:
        rows.append(r_BPQD.reshape(-1, r_BPQD.shape[-1]))
        codes.append(codes_BPQ.reshape(-1))
    return jnp.concatenate(rows), jnp.concatenate(codes)


def msvq_ema_update(
    state: VQState,
    z: jax.Array,
    codes_BT: jax.Array,
    *,
    scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
    upsample: str = "bicubic",
    phi: Phi | None = None,
    cosine: bool = False,
    **ema_options,
) -> VQState:
    """EMA step of the shared codebook from every scale's down-sampled residual and its codes."""
    rows, codes = msvq_inputs(state, z, codes_BT, scales=scales, upsample=upsample, phi=phi, cosine=cosine)
    return ema_update(state, rows, codes, cosine=cosine, **ema_options)


def msvq_update(
    state: VQState,
    z: jax.Array,
    codes_BT: jax.Array,
    key: jax.Array,
    *,
    scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
    upsample: str = "bicubic",
    phi: Phi | None = None,
    cosine: bool = False,
    decay: float = 0.99,
    eps: float = 1e-5,
    threshold: float = 2.0,
    axis_name: AxisName = None,
) -> VQState:
    """EMA step then dead-code restart, both from the forward pass's per-scale residuals."""
    rows, codes = msvq_inputs(state, z, codes_BT, scales=scales, upsample=upsample, phi=phi, cosine=cosine)
    state = ema_update(state, rows, codes, decay=decay, eps=eps, cosine=cosine, axis_name=axis_name)
    return restart_dead_codes(state, rows, key, threshold=threshold, cosine=cosine, axis_name=axis_name)
