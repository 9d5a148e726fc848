"""The generation grammar: sampling under `BlockRules` never leaves a block's range and
always gives the exact block length, then the end marker.

Reference: an independent parser of the produced ids written with the Vocab's own
`to_local` / `to_codes`, run over random vocabularies, prompts and logits.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmntp_jax.data.vocab import Vocab
from mmntp_jax.model.block_rules import NO_BLOCK, BlockRules


def check_grammar(ids, vocab: Vocab, lengths: dict, start_block=None, start_filled=0):
    """Walks the ids: text outside blocks; inside an m block exactly lengths[m] codes of m,
    level by level, then m's end marker. Returns the number of complete blocks."""
    markers = {vocab.markers(m)[0]: m for m in lengths}
    ends = {vocab.markers(m)[1]: m for m in lengths}
    block, filled, complete = start_block, start_filled, 0
    for t in ids:
        t = int(t)
        if block is None:
            modality, _ = vocab.to_local(np.array([t]))
            assert t in markers or t == vocab.eos_id or modality[0] == 0, f"id {t} outside a block is not text/<eos>/a begin marker"
            if t in markers:
                assert lengths[markers[t]] > 0
                block, filled = markers[t], 0
        elif filled == lengths[block]:
            assert ends.get(t) == block, f"block of {block} not closed by its end marker after {filled} codes (got {t})"
            block, complete = None, complete + 1
        else:
            lo = vocab.offset(block)
            assert lo <= t < lo + vocab.range_size(block), f"id {t} inside a {block} block is not one of its codes"
            levels = vocab.num_levels(block)
            if levels > 1 and vocab.layout(block) == "per_level":
                assert (t - lo) // vocab.codebook_size(block) == filled % levels, "code of the wrong level"
            filled += 1
    return complete


@functools.partial(jax.jit, static_argnames=("rules", "vocab_size", "steps"))
def _sample(rules, vocab_size, steps, block, filled, key):
    def step(state, i):
        block, filled = state
        logits = jax.random.normal(jax.random.fold_in(key, i), (block.shape[0], vocab_size)) * 3.0
        token = jnp.argmax(jnp.where(rules.allowed(block, filled, vocab_size), logits, -jnp.inf), axis=-1).astype(jnp.int32)
        return rules.advance(block, filled, token), token

    return jax.lax.scan(step, (block, filled), jnp.arange(steps))[1].T


def sample_under_rules(rules, vocab_size, prompts, steps, seed):
    """Random logits, greedy under the rules, for `steps` tokens after each prompt."""
    block, filled = (jnp.asarray(x) for x in rules.state_after(prompts))
    return np.asarray(_sample(rules, vocab_size, steps, block, filled, jax.random.key(seed)))


vocabs = st.sampled_from([
    (Vocab.build(text=20, image=12), {"image": 5}),
    (Vocab.build(text=20, image=8, audio=6, levels={"audio": (2, "per_level")}), {"image": 3, "audio": 4}),
    (Vocab.build(text=20, image=8, audio=6, levels={"audio": (3, "interleaved")}), {"audio": 6}),
])


@settings(max_examples=25, deadline=None)
@given(vocabs, st.integers(0, 2**16), st.lists(st.integers(0, 4), min_size=1, max_size=3))
def test_sampling_obeys_block_grammar(vocab_lengths, seed, prompt_kinds):
    vocab, lengths = vocab_lengths
    rules = BlockRules.from_vocab(vocab, lengths)
    media = [m for m in lengths if lengths[m]]
    rng = np.random.default_rng(seed)
    prompts, starts = [], []
    for kind in prompt_kinds:  # text only, or text + an opened block with 0..N-1 codes
        text = list(rng.integers(vocab.offset("text"), vocab.offset("text") + 20, 3))
        if kind and media:
            m = media[kind % len(media)]
            k = int(rng.integers(0, lengths[m]))
            levels = vocab.num_levels(m)
            stride = vocab.codebook_size(m) if vocab.layout(m) == "per_level" and levels > 1 else 0
            codes = [vocab.offset(m) + stride * (j % levels) for j in range(k)]
            prompts.append(np.array([vocab.bos_id, *text, vocab.markers(m)[0], *codes]))
            starts.append((m, k))
        else:
            prompts.append(np.array([vocab.bos_id, *text]))
            starts.append((None, 0))
    out = sample_under_rules(rules, vocab.size, prompts, 24, seed)
    for row, (m, k) in zip(out, starts):
        check_grammar(row, vocab, lengths, m, k)
    if any(m for m, _ in starts):  # a row that starts inside a block closes it with exactly N codes
        for row, (m, k) in zip(out, starts):
            if m:
                assert row[lengths[m] - k] == vocab.markers(m)[1]


def test_forced_block_from_prompt_end():
    vocab = Vocab.build(text=10, image=7)
    rules = BlockRules.from_vocab(vocab, {"image": 4})
    out = sample_under_rules(rules, vocab.size, [np.array([1, 20, vocab.markers("image")[0]])], 5, 0)[0]
    assert check_grammar(out, vocab, {"image": 4}, "image", 0) == 1 and out[4] == vocab.markers("image")[1]


def test_outside_block_state_and_errors():
    vocab = Vocab.build(text=10, image=7, audio=5)
    rules = BlockRules.from_vocab(vocab, {"image": 4})  # no audio tokenizer: <boa> never allowed
    allowed = np.asarray(rules.allowed(jnp.array([NO_BLOCK]), jnp.array([0]), vocab.size))[0]
    assert allowed[vocab.eos_id] and allowed[vocab.markers("image")[0]] and not allowed[vocab.markers("audio")[0]]
    assert allowed[vocab.offset("text") : vocab.offset("text") + 10].all() and not allowed[vocab.offset("image")]
    with pytest.raises(ValueError, match="no audio tokenizer"):
        rules.block_length("audio")
    with pytest.raises(ValueError, match="video"):
        BlockRules.from_vocab(vocab, {"video": 3})
    with pytest.raises(ValueError, match="more than"):
        rules.state_after([np.array([1, vocab.markers("image")[0]] + [vocab.offset("image")] * 5)])
