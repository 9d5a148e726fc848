"""The ids a modality-restricted softmax normalises over at each position, from the Vocab.

Dimensions: B batch, T time, C chunk of T, V vocab, S allowed specials per position.

The support of a position is one of a few classes, each an id range [lo, hi)
plus a few special ids; the classes are disjoint, and a target belongs to the
class whose support holds it:

    text      the text range, <eos>, and the begin marker (<boi> <boa> <bov>) of
              every media modality the vocab has: what may follow text, <bos>
              or a block's end marker
    m block   modality m's range and m's end marker: what may follow m's begin
              marker or one of m's codes
    full      every id [0, V): targets in no other class (<pad>, <bos>, reserved
              specials, ids past the vocab), which are never trained on

The class is a function of the context (inside an m block or not), so the
restricted softmax is a proper distribution over ids that generation could
also restrict to. It is read off the target id, not the batch's `modality`
field, because block markers carry their block's modality there although a
begin marker is predicted from text context. Multi-level modalities use their
whole range (every level).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

FULL_HI = 2**31 - 1


@dataclass(frozen=True)
class LegalIds:
    """Per class: `ranges[k]` = (lo, hi) and `specials[k]` = ids (padded with -1 to S); class 0 is full."""

    ranges: tuple[tuple[int, int], ...]
    specials: tuple[tuple[int, ...], ...]

    @classmethod
    def from_vocab(cls, vocab) -> "LegalIds":
        media = [name for name, _ in vocab.ranges if name != "text"]
        text_lo = vocab.offset("text") if vocab.range_size("text") else 0
        ranges = [(0, FULL_HI), (text_lo, text_lo + vocab.range_size("text"))]
        specials = [(), (vocab.eos_id, *(vocab.markers(m)[0] for m in media))]
        for name in media:
            ranges.append((vocab.offset(name), vocab.offset(name) + vocab.range_size(name)))
            specials.append((vocab.markers(name)[1],))
        width = max(len(s) for s in specials)
        return cls(tuple(ranges), tuple(s + (-1,) * (width - len(s)) for s in specials))

    def per_token(self, targets_BT):
        """(lo_BT, hi_BT, specials_BTS): the support of every target's position."""
        class_BT = jnp.zeros(targets_BT.shape, jnp.int32)
        for k in range(1, len(self.ranges)):  # the classes are disjoint; none of them: full
            lo, hi = self.ranges[k]
            class_BT = jnp.where(support_mask(lo, hi, jnp.asarray(self.specials[k], jnp.int32), targets_BT), k, class_BT)
        lo_K, hi_K = (jnp.asarray(x, jnp.int32) for x in zip(*self.ranges))
        return lo_K[class_BT], hi_K[class_BT], jnp.asarray(self.specials, jnp.int32)[class_BT]


def support_mask(lo, hi, specials_S, ids):
    """True where `ids` lies in [lo, hi) or equals one of `specials_S` (-1 = none).

    Shapes broadcast: lo/hi [...], specials [..., S], ids [..., V] → [..., V];
    the S specials are compared one at a time so no [..., V, S] array exists.
    """
    lo, hi = jnp.asarray(lo)[..., None], jnp.asarray(hi)[..., None]
    inside = (ids >= lo) & (ids < hi)
    for s in range(specials_S.shape[-1]):
        inside |= ids == specials_S[..., s, None]
    return inside


def restrict(logits_BCV, lo_BC, hi_BC, specials_BCS):
    """The logits with every id outside the position's support at -inf."""
    ids_V = jnp.arange(logits_BCV.shape[-1], dtype=jnp.int32)
    return jnp.where(support_mask(lo_BC, hi_BC, specials_BCS, ids_V), logits_BCV, -jnp.inf)
