"""The image reader: convolutions over a context image block's code grid, added to its input embeddings.

Dimensions: B batch, T time, D model dim, C reader channels, K = 9 neighbours
of a 3 × 3 kernel, W grid width (codes per row, `model.image_grid_width`).

`model.image_reader = conv` (config.py). A transformer reads an image's codes
through attention, whose weights know nothing of which codes are neighbours on
the image's grid; the shape of an object is a pattern of a few neighbouring
codes that may sit anywhere, and in the captioned job's budget the backbone
learns where objects are and what colour, not what shape (docs/benchmarks.md,
"What limits the shape"). The reader gives every code of a *context* image a
view of its neighbourhood, with one set of weights for every place on the grid:

    h⁰ = RMSNorm(x)                        x: the block's input embeddings [B, T, D]
    hˡ = gelu(Σ_k shift_k(hˡ⁻¹) · kernelˡ[k])   3 × 3 convolutions over the W-wide grid
    x ← x + hᴸ · out_proj                   out_proj starts at zero: the reader starts as the identity

Convolutions run in sequence layout: a block's codes are contiguous, code r of
the block sits at row r // W, column r % W, and the neighbour (dy, dx) of the
token at t is the token at t + dy·W + dx, taken when it is a code of the same
context block and the column stays on the grid (zero padding otherwise). No
gather into images, no static cap on images per row.

Which blocks are context: exactly the tokens that the `block` attention mask
would let see each other (`attention.bidirectional_groups` with the block kind,
whatever `model.attention_mask` is) — an image block's leading run of positions
whose next-token targets are not trained. The reader reads and writes only
codes of one such group, so no trained target is ever an input of the position
that predicts it (tests/test_image_reader.py proves it with gradients). A
captioning document's image is read whole; a drawing document's image, whose
codes are targets, is not read at all; a prompt's image in `mmntp sample` is
read whole at prefill (`generate.prompt_context`), as in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS, NAMED_SPECIALS
from mmntp_jax.model.attention import BLOCK, bidirectional_groups
from mmntp_jax.model.layers import RMSNorm, param, project

BOI = NAMED_SPECIALS.index("<boi>")
OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def context_groups(ids_BT, segment_ids_BT, block_ids_BT, loss_mask_BT):
    """[B, T] group ids of the context media blocks (the block mask's groups; 0 = none)."""
    return bidirectional_groups(segment_ids_BT, block_ids_BT, loss_mask_BT, BLOCK)


def grid_members(ids_BT, groups_BT):
    """(member [B, T] bool, rank [B, T] int32): the codes of context *image* blocks and
    each one's index within its block (0 at the code after `<boi>`)."""
    t = ids_BT.shape[1]
    start_BT = jnp.maximum(groups_BT - 1, 0)
    opener_BT = jnp.take_along_axis(ids_BT, start_BT, axis=1)
    index_BT = jnp.arange(t, dtype=jnp.int32)[None]
    marker_BT = jnp.isin(ids_BT, jnp.asarray(BEGIN_IDS + END_IDS))
    member_BT = (groups_BT > 0) & (opener_BT == BOI) & ~marker_BT & (index_BT > start_BT)
    return member_BT, (index_BT - start_BT - 1).astype(jnp.int32)


def neighbours(x_BTC, member_BT, groups_BT, rank_BT, width: int):
    """[B, T, K, C]: each member's 3 × 3 grid neighbourhood (zeros off the grid, the block or the members)."""
    t = x_BTC.shape[1]
    index_T = jnp.arange(t, dtype=jnp.int32)
    col_BT = rank_BT % width
    out = []
    for dy, dx in OFFSETS:
        source_T = jnp.clip(index_T + dy * width + dx, 0, t - 1)
        take = lambda a_BT: jnp.take(a_BT, source_T, axis=1)
        ok_BT = (member_BT & take(member_BT) & (take(groups_BT) == groups_BT)
                 & (col_BT + dx >= 0) & (col_BT + dx < width)
                 & (index_T + dy * width + dx >= 0) & (index_T + dy * width + dx < t))
        out.append(jnp.where(ok_BT[..., None], jnp.take(x_BTC, source_T, axis=1), 0))
    return jnp.stack(out, axis=2)


class GridConv(nnx.Module):
    """One 3 × 3 convolution over the code grid, then gelu: kernel [K, I, O], bias [O]."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.kernel = param(rngs, (len(OFFSETS), cin, cout), (None, None, None), std=(len(OFFSETS) * cin) ** -0.5)
        self.bias = param(rngs, (cout,), (None,), value=0.0)

    def __call__(self, h_BTI, member_BT, groups_BT, rank_BT, width: int):
        n_BTKI = neighbours(h_BTI, member_BT, groups_BT, rank_BT, width)
        b, t, k, i = n_BTKI.shape
        kernel_NO = self.kernel[...].reshape(k * i, -1).astype(h_BTI.dtype)
        return jax.nn.gelu(project(n_BTKI.reshape(b, t, k * i), kernel_NO) + self.bias[...].astype(h_BTI.dtype))


class ImageReader(nnx.Module):
    """x [B, T, D] → x plus the convolutional reading of its context image blocks.

    Parameters: norm.weight [D], conv{l}.kernel [K, I, O] and conv{l}.bias [O]
    (I = D for the first, C after), out_proj [C, D] (zeros at init)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        d, c = cfg.d_model, cfg.image_reader_channels or cfg.d_model
        self.width = cfg.image_grid_width
        self.layers = cfg.image_reader_layers
        self.norm = RMSNorm(d, cfg.norm_eps, rngs=rngs)
        for layer in range(self.layers):
            setattr(self, f"conv{layer}", GridConv(d if layer == 0 else c, c, rngs=rngs))
        self.out_proj = param(rngs, (c, d), (None, "embed"), value=0.0)

    def __call__(self, ids_BT, x_BTD, groups_BT):
        member_BT, rank_BT = grid_members(ids_BT, groups_BT)
        h_BTC = self.norm(x_BTD)
        for layer in range(self.layers):
            h_BTC = getattr(self, f"conv{layer}")(h_BTC, member_BT, groups_BT, rank_BT, self.width)
        out_BTD = project(h_BTC, self.out_proj[...].astype(x_BTD.dtype))
        return jnp.where(member_BT[..., None], x_BTD + out_BTD, x_BTD)
