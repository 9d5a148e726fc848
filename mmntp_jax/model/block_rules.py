"""The block grammar generation obeys: which ids may come next, given what came before.

Dimensions: B batch, V vocab, M media modalities of the vocab.

A generated sequence is text, and media blocks `<boi> c1 … cN <eoi>` (likewise
`<boa> … <eoa>`, `<bov> … <eov>`). The state of a row is `block_B` (-1 outside a
block, else the index m of the block's modality in `BlockRules.media`) and
`filled_B` (codes already emitted in the block). What may come next:

    outside a block      the text range, `<eos>`, and the begin marker of every
                         modality whose block length is known (it has a tokenizer)
    in an m block, k < N the codes of the level that position k holds: for a
                         per-level layout ids [lo + l·K, lo + (l+1)·K) with
                         l = k mod L; for an interleaved or one-level layout the
                         modality's K codes
    in an m block, k = N only m's end marker, so a block has exactly the
                         tokenizer's N codes and then is closed

These supports are subsets of the classes of `legal_ids.LegalIds` (the support a
modality-restricted softmax normalises over), narrowed by the position in the
block. Everything is a pure function of small int arrays, usable under jit.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from mmntp_jax.model.legal_ids import support_mask

NO_BLOCK = -1


@dataclass(frozen=True)
class BlockRules:
    """Static tables of the grammar (hashable: a jit static argument)."""

    text_range: tuple[int, int]
    eos_id: int
    media: tuple[str, ...]  # modality of each m
    begin_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    offsets: tuple[int, ...]  # first id of each modality's range
    codebooks: tuple[int, ...]  # K
    level_strides: tuple[int, ...]  # K for a per-level layout (levels are sub-ranges), 0 when levels share ids
    levels: tuple[int, ...]  # L
    block_lengths: tuple[int, ...]  # N codes per block (0 = this modality cannot be generated)

    @classmethod
    def from_vocab(cls, vocab, block_lengths: dict[str, int]) -> "BlockRules":
        """`block_lengths[m]`: the tokens a block of m holds between its markers
        (the tokenizer's `tokens_per_item`: every level of every position)."""
        media = tuple(name for name, _ in vocab.ranges if name != "text")
        unknown = sorted(set(block_lengths) - set(media))
        if unknown:
            raise ValueError(f"block lengths given for {', '.join(unknown)}, which the vocabulary has no range for (it has {', '.join(media) or 'none'})")
        for name in media:
            n = int(block_lengths.get(name, 0))
            if n % vocab.num_levels(name):
                raise ValueError(f"{name} blocks of {n} tokens do not hold whole positions of {vocab.num_levels(name)} levels")
        text_lo = vocab.offset("text") if vocab.range_size("text") else 0
        return cls(
            text_range=(text_lo, text_lo + vocab.range_size("text")),
            eos_id=vocab.eos_id,
            media=media,
            begin_ids=tuple(vocab.markers(m)[0] for m in media),
            end_ids=tuple(vocab.markers(m)[1] for m in media),
            offsets=tuple(vocab.offset(m) for m in media),
            codebooks=tuple(vocab.codebook_size(m) for m in media),
            level_strides=tuple(vocab.codebook_size(m) if vocab.layout(m) == "per_level" and vocab.num_levels(m) > 1 else 0 for m in media),
            levels=tuple(vocab.num_levels(m) for m in media),
            block_lengths=tuple(int(block_lengths.get(m, 0)) for m in media),
        )

    def block_length(self, modality: str) -> int:
        if modality not in self.media or not self.block_lengths[self.media.index(modality)]:
            known = [m for m, n in zip(self.media, self.block_lengths) if n]
            raise ValueError(f"cannot generate {modality}: this run has no {modality} tokenizer (it can generate: text{''.join(', ' + m for m in known)})")
        return self.block_lengths[self.media.index(modality)]

    def _table(self, values, block_B):
        return jnp.asarray(values, jnp.int32)[jnp.maximum(block_B, 0)]

    def allowed(self, block_B, filled_B, vocab_size: int):
        """[B, V] bool: the ids that may come next in each row."""
        ids_V = jnp.arange(vocab_size, dtype=jnp.int32)
        inside_B = block_B != NO_BLOCK
        n_B = self._table(self.block_lengths, block_B) if self.media else jnp.zeros_like(block_B)
        stride_B = self._table(self.level_strides, block_B) if self.media else jnp.zeros_like(block_B)
        levels_B = self._table(self.levels, block_B) if self.media else jnp.ones_like(block_B)
        lo_B = (self._table(self.offsets, block_B) if self.media else 0) + stride_B * (filled_B % jnp.maximum(levels_B, 1))
        hi_B = lo_B + (self._table(self.codebooks, block_B) if self.media else 0)
        codes_left_B = inside_B & (filled_B < n_B)
        lo_B = jnp.where(inside_B, jnp.where(codes_left_B, lo_B, 0), self.text_range[0])
        hi_B = jnp.where(inside_B, jnp.where(codes_left_B, hi_B, 0), self.text_range[1])
        openers = tuple(b for b, n in zip(self.begin_ids, self.block_lengths) if n)
        outside_S = jnp.asarray((self.eos_id, *openers), jnp.int32)
        end_B = self._table(self.end_ids, block_B) if self.media else jnp.full_like(block_B, -1)
        specials_BS = jnp.where(inside_B[:, None], -1, outside_S[None, :])
        specials_BS = jnp.concatenate([specials_BS, jnp.where(inside_B & ~codes_left_B, end_B, -1)[:, None]], axis=1)
        return support_mask(lo_B, hi_B, specials_BS, ids_V)

    def advance(self, block_B, filled_B, token_B):
        """The state after each row emits `token_B`."""
        if not self.media:
            return block_B, filled_B
        opens_BM = token_B[:, None] == jnp.asarray(self.begin_ids, jnp.int32)[None, :]
        closes_B = jnp.isin(token_B, jnp.asarray(self.end_ids, jnp.int32))
        opened_B = jnp.where(opens_BM.any(-1), jnp.argmax(opens_BM, -1), NO_BLOCK)
        inside_B = block_B != NO_BLOCK
        new_block_B = jnp.where(inside_B, jnp.where(closes_B, NO_BLOCK, block_B), opened_B)
        new_filled_B = jnp.where(inside_B & ~closes_B, filled_B + 1, 0)
        return new_block_B.astype(jnp.int32), new_filled_B.astype(jnp.int32)

    def state_after(self, prompts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(block_B, filled_B) at the end of each prompt: inside the last block that a
        prompt opens without closing it (e.g. a prompt ending in `<boi>`)."""
        block = np.full(len(prompts), NO_BLOCK, np.int32)
        filled = np.zeros(len(prompts), np.int32)
        for i, ids in enumerate(prompts):
            ids = np.asarray(ids)
            opens = np.flatnonzero(np.isin(ids, self.begin_ids))
            if opens.size and not np.isin(ids[opens[-1] + 1 :], self.end_ids).any():
                block[i] = self.begin_ids.index(int(ids[opens[-1]]))
                filled[i] = ids.size - opens[-1] - 1
                if filled[i] > self.block_lengths[block[i]]:
                    raise ValueError(f"prompt {i}: its open {self.media[block[i]]} block already holds {filled[i]} codes, more than the {self.block_lengths[block[i]]} a block has")
        return block, filled
