"""Attention masks (causal, prefix, block) against an independent numpy reference:
the builder and all three attention paths, no next-token leak through the real
model, KV-cache decoding with a bidirectional prompt block, and packed block_ids."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.config import MASK_KINDS, ConfigError, ModelConfig, validate
from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.packing import block_ids, chunk_spans, write_row
from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS, Vocab
from mmntp_jax.model import attention
from mmntp_jax.model.generate import generate_ids, prompt_groups, prompt_loss_mask
from mmntp_jax.model.heads import logits, token_losses
from mmntp_jax.model.transformer import Transformer

VOCAB = Vocab.build(text=40, image=24)
T, TILE = 64, 16
IMPLS = ("reference", "xla", "blockwise")
CFG = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, attention_block=TILE, max_seq_len=T)


# -- random packed rows --------------------------------------------------------------
def random_document(rng):
    """captioned-shapes-like: a context image then a trained caption, a context
    caption then a trained image, a context prefix then trained text, or plain text."""
    text = lambda n: VOCAB.offset("text") + rng.integers(0, 40, n)
    image = lambda: VOCAB.offset("image") + rng.integers(0, 24, rng.integers(4, 12))
    parts = {
        "caption": [("image", image(), False), ("text", text(rng.integers(2, 8)), True)],
        "draw": [("text", text(rng.integers(2, 8)), False), ("image", image(), True)],
        "prefix": [("text", text(rng.integers(3, 30)), False), ("text", text(rng.integers(2, 8)), True)],
        "mixed": [("text", text(3), False), ("image", image(), False), ("text", text(4), True), ("image", image(), True)],
        "text": [("text", text(rng.integers(2, 12)), True)],
    }[rng.choice(["caption", "draw", "prefix", "mixed", "text"])]
    doc = assemble_document(parts, VOCAB)
    if rng.random() < 0.5:
        doc["mask_kind"] = int(rng.integers(0, len(MASK_KINDS)))
    return doc


def random_rows(seed, n_rows, seq_len=T):
    """Packed rows of several documents each (some cut into chunks), padding at the end."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n_rows:
        docs, chunks, at = {}, [], 0
        while True:
            doc = random_document(rng)
            spans = chunk_spans(doc["tokens"], seq_len // 2)
            start, length = spans[rng.integers(len(spans))]
            if at + length > seq_len - rng.integers(0, 6):
                break
            docs[len(docs)] = doc
            chunks.append((len(docs) - 1, start, length))
            at += length
        rows.append(write_row(chunks, docs, seq_len))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# -- the independent numpy reference -----------------------------------------------------
def leading_context(positions, loss):
    """(first, last) of the bidirectional region of a unit: its leading untrained
    positions and the first trained one."""
    last = positions[0]
    for p in positions:
        last = p
        if loss[p] > 0:
            break
    return positions[0], last


def reference_visible(seg, blocks, loss, kinds, default):
    """[T, T] bool, loops: same document and (key ≤ query or both in one region)."""
    t = len(seg)
    visible = np.zeros((t, t), bool)
    for q in range(t):
        for k in range(q + 1):
            visible[q, k] = seg[q] == seg[k]
    for s in set(seg.tolist()) - {0}:
        in_doc = np.flatnonzero(seg == s)
        kind = MASK_KINDS[default if kinds[in_doc[0]] < 0 else kinds[in_doc[0]]]
        units = [in_doc] if kind == "prefix" else [in_doc[blocks[in_doc] == b] for b in set(blocks[in_doc].tolist()) - {0}] if kind == "block" else []
        for unit in units:
            first, last = leading_context(unit, loss)
            visible[first : last + 1, first : last + 1] = True
    return visible


def reference_attention(q, k, v, visible):
    b, t, h, e = q.shape
    g = h // k.shape[2]
    out = np.zeros(q.shape)
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(e)
            s = np.where(visible[bi], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi // g]
    return out


def groups_of(batch, default):
    model = Transformer(dataclasses.replace(CFG, attention_mask=MASK_KINDS[default]), rngs=nnx.Rngs(0))
    return np.asarray(model.groups(*(jnp.asarray(batch[k]) for k in ("segment_ids", "block_ids", "loss_mask", "mask_kind"))))


ROWS = random_rows(12, 4)  # a seed whose rows cover every tile case (checked below)


def test_rows_exercise_the_tiles():
    """The rows have context blocks and prefixes crossing a tile boundary, some
    within the w = TILE/4 corner and some wider, groups spanning several tiles,
    and above-diagonal tiles that no group reaches."""
    seen, w = set(), TILE // 4
    for default in range(len(MASK_KINDS)):
        ids = attention.row_ids(jnp.asarray(ROWS["segment_ids"]), jnp.asarray(groups_of(ROWS, default)))
        for i in range(T // TILE):
            for j in range(i + 1, T // TILE):
                last, first = (i + 1) * TILE - 1, j * TILE
                if not attention.group_crosses(ids, last, first):
                    seen.add("skipped")
                elif attention.group_crosses(ids, last, first + w) or attention.group_crosses(ids, last - w, first):
                    seen.add((MASK_KINDS[default], "wide", j - i))
                else:
                    seen.add((MASK_KINDS[default], "corner"))
    assert {"skipped", ("block", "corner"), ("block", "wide", 1), ("prefix", "wide", 1), ("prefix", "wide", 2)} <= seen, seen
    assert (ROWS["mask_kind"] >= 0).any() and (ROWS["mask_kind"] < 0).any() and (ROWS["segment_ids"] == 0).any()


@pytest.mark.parametrize("default", range(len(MASK_KINDS)), ids=MASK_KINDS)
def test_mask_and_every_attention_path_equal_numpy_reference(default, monkeypatch):
    monkeypatch.setattr(attention, "MIN_TILE", T // 2)  # so a one-block row (block = T) is cut into two tiles here too
    g = groups_of(ROWS, default)
    ids = attention.row_ids(jnp.asarray(ROWS["segment_ids"]), jnp.asarray(g))
    visible = np.stack([reference_visible(*(ROWS[k][r] for k in ("segment_ids", "block_ids", "loss_mask", "mask_kind")), default) for r in range(len(g))])
    np.testing.assert_array_equal(np.asarray(attention.attention_mask(ids, ids)), visible)
    b, h, kv, e = len(g), 4, 2, 8
    q, k, v = (jax.random.normal(key, (b, T, n, e)) for key, n in zip(jax.random.split(jax.random.key(default), 3), (h, kv, kv)))
    expected = reference_attention(*map(np.asarray, (q, k, v)), visible)
    outputs = {
        "reference": attention.reference_attention(q, k, v, ids, ids),
        "xla": attention.xla_attention(q, k, v, ids, ids),
        "blockwise": jax.jit(attention.blockwise_attention, static_argnums=4)(q, k, v, ids, TILE),
        "blockwise, one block": jax.jit(attention.blockwise_attention, static_argnums=4)(q, k, v, ids, T),
    }
    for name, out in outputs.items():
        np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, err_msg=name)
    # gradients: every path's vjp equals the dense reference's (blockwise stops the gradient at its running max)
    cotangent = jax.random.normal(jax.random.key(7), q.shape)
    vjp = lambda fn: jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v)[1](cotangent))(q, k, v)
    want = vjp(lambda q, k, v: attention.reference_attention(q, k, v, ids, ids))
    paths = {
        "xla": lambda q, k, v: attention.xla_attention(q, k, v, ids, ids),
        "blockwise": lambda q, k, v: attention.blockwise_attention(q, k, v, ids, TILE),
        "blockwise, one block": lambda q, k, v: attention.blockwise_attention(q, k, v, ids, T),
    }
    for name, fn in paths.items():
        for arg, got, ref in zip("qkv", vjp(fn), want):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=5e-5, err_msg=f"{name}: d{arg}")


def test_tile_size_cuts_a_one_block_row_in_two():
    """blockwise's tile for rows of T at block 512 (0: it runs xla)."""
    assert [attention.tile_size(t, 512) for t in (4096, 2048, 1024, 768, 512, 256, 254, 128, 64)] == [512, 512, 512, 0, 256, 128, 0, 0, 0]
    assert attention.tile_size(64, 16) == 16 and attention.tile_size(48, 32) == 0


def test_regions_never_hold_a_trained_position_before_their_end():
    """The builder's groups: contiguous, within a document, and every member but the last untrained."""
    for default in range(len(MASK_KINDS)):
        g = groups_of(ROWS, default)
        for r in range(len(g)):
            for group in set(g[r].tolist()) - {0}:
                members = np.flatnonzero(g[r] == group)
                assert np.array_equal(members, np.arange(members[0], members[-1] + 1))
                assert len(set(ROWS["segment_ids"][r, members].tolist())) == 1
                assert (ROWS["loss_mask"][r, members[:-1]] == 0).all()


# -- no leak, through the real model ------------------------------------------------------
@jax.jit
def _loss_gradient(graph_params, batch, b, t):
    """d(loss at row b, position t) / d(input embeddings), summed over D: [B, T]."""
    graph, params = graph_params
    model = nnx.merge(graph, params)
    fields = [batch[k] for k in ("positions", "segment_ids", "block_ids", "loss_mask", "mask_kind")]
    loss = lambda x: token_losses(model.from_embeddings(x, *fields), model.head_kernel(), batch["targets"], 0)[0][b, t]
    return jnp.abs(jax.grad(loss)(model.embed_tokens(batch["inputs"], jnp.float32))).sum(-1)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_trained_target_is_visible_to_its_position_or_earlier(impl):
    """One vjp per trained position (loss_mask 1): zero gradient on every input after it."""
    rows = random_rows(9, 2, 32)  # a seed with several regions under prefix and block (asserted below)
    model = Transformer(dataclasses.replace(CFG, attention=impl, attention_block=8), rngs=nnx.Rngs(1))
    graph_params = nnx.split(model)
    for default in range(len(MASK_KINDS)):  # rows without their own kind take `default`, as model.attention_mask does
        batch = {**rows, "mask_kind": np.where(rows["mask_kind"] < 0, default, rows["mask_kind"])}
        g = groups_of(batch, 0)
        wide = [(b, np.flatnonzero(g[b] == x)) for b in range(2) for x in set(g[b].tolist()) - {0} if (g[b] == x).sum() > 1]
        assert wide or default == 0
        for b, t in [*zip(*np.nonzero(rows["loss_mask"])), *((b, m[0]) for b, m in wide)]:
            grad = np.asarray(_loss_gradient(graph_params, {k: jnp.asarray(v) for k, v in batch.items()}, b, t))
            if rows["loss_mask"][b, t]:
                assert np.all(grad[b, t + 1 :] == 0.0), f"{MASK_KINDS[default]}: the loss at {b}, {t} sees a later input"
                assert np.all(grad[1 - b] == 0.0) and grad[b, t] > 0
            else:  # a region's first position (untrained) does see the region's later inputs: it is bidirectional
                members = next(m for bb, m in wide if bb == b and m[0] == t)
                assert np.all(grad[b, members] > 0) and np.all(grad[b, members[-1] + 1 :] == 0.0)


# -- KV-cache decoding --------------------------------------------------------------------
def prompt_rows():
    """Two left-padded prompts: <bos> context image, caption start; <bos> text, open <boi>."""
    img, txt = VOCAB.offset("image"), VOCAB.offset("text")
    boi, eoi = VOCAB.markers("image")
    a = [VOCAB.bos_id, boi, *range(img, img + 9), eoi, txt + 5, txt + 7]
    b = [VOCAB.bos_id, txt + 1, txt + 2, txt + 3, boi]
    p = len(a)
    ids = np.zeros((2, p), np.int32)
    seg = np.zeros((2, p), np.int32)
    pos = np.zeros((2, p), np.int32)
    for r, x in enumerate((a, b)):
        ids[r, p - len(x):], seg[r, p - len(x):], pos[r, p - len(x):] = x, 1, np.arange(len(x))
    return ids, seg, pos


@pytest.mark.parametrize("kind", ["block", "prefix"])
def test_kv_cache_decoding_with_bidirectional_prompt_equals_full_recomputation(kind):
    model = Transformer(dataclasses.replace(CFG, attention_mask=kind), rngs=nnx.Rngs(2))
    ids, seg, pos = map(jnp.asarray, prompt_rows())
    b, p, n = ids.shape[0], ids.shape[1], 6
    groups = np.asarray(prompt_groups(model, ids, seg))
    assert (np.bincount(groups[0])[1:] > 1).any()  # the context image (block) or prompt (prefix) is one region
    new = jax.random.randint(jax.random.key(3), (b, n), VOCAB.offset("text"), VOCAB.offset("text") + 40)
    full_ids = jnp.concatenate([ids, new], axis=1)
    full_seg = jnp.concatenate([seg, jnp.ones((b, n), jnp.int32)], axis=1)
    full_pos = jnp.concatenate([pos, pos[:, -1:] + 1 + jnp.arange(n)], axis=1)
    blocks = prompt_loss_mask(full_ids, full_seg)[1]  # block ids of the whole row
    loss = jnp.where(jnp.arange(p + n) >= p - 1, 1.0, jnp.pad(prompt_loss_mask(ids, seg)[0], ((0, 0), (0, n))))
    graph, params = nnx.split(model)

    @jax.jit
    def full_recompute(params, upto):
        """Logits of the whole row with tokens after `upto` removed (padding segment)."""
        m = nnx.merge(graph, params)
        keep = jnp.arange(p + n) < upto
        hidden = m(full_ids, full_pos, jnp.where(keep, full_seg, 0), blocks, jnp.where(keep, loss, 0.0))
        return logits(hidden, m.head_kernel())

    @jax.jit
    def cached(params):
        m = nnx.merge(graph, params)
        h, cache = m.decode(ids, pos, seg, m.init_cache(b, p + n), 0, prompt_groups(m, ids, seg))
        out = [logits(h, m.head_kernel())]
        for i in range(n):
            h, cache = m.decode(new[:, i : i + 1], full_pos[:, p + i : p + i + 1], jnp.ones((b, 1), jnp.int32), cache, p + i)
            out.append(logits(h, m.head_kernel()))
        return jnp.concatenate(out, axis=1)

    got = np.asarray(cached(params))
    for upto in range(p, p + n + 1):
        want = np.asarray(full_recompute(params, upto))
        np.testing.assert_allclose(got[:, :upto], want[:, :upto], atol=2e-5, err_msg=f"{kind}, {upto - p} new tokens")
    causal = np.asarray(Transformer(dataclasses.replace(CFG, attention_mask="causal"), rngs=nnx.Rngs(2))(ids, pos, seg))
    assert not np.allclose(np.asarray(model(ids, pos, seg, blocks[:, :p], loss[:, :p])), causal, atol=1e-4)
    greedy = np.asarray(generate_ids(graph, params, ids, seg, pos, jax.random.key(0), max_new_tokens=4))
    row = jnp.concatenate([ids, jnp.asarray(greedy)], axis=1)
    row_loss = jnp.concatenate([prompt_loss_mask(ids, seg)[0], jnp.ones((b, 4))], axis=1)
    row_blocks = prompt_loss_mask(row, jnp.concatenate([seg, jnp.ones((b, 4), jnp.int32)], axis=1))[1]
    row_pos = jnp.concatenate([pos, pos[:, -1:] + 1 + jnp.arange(4)], axis=1)
    again = np.asarray(logits(model(row, row_pos, jnp.concatenate([seg, jnp.ones((b, 4), jnp.int32)], axis=1), row_blocks, row_loss), model.head_kernel()))
    np.testing.assert_array_equal(again[:, p - 1 : -1].argmax(-1), greedy)


# -- packing ------------------------------------------------------------------------------
def reference_block_ids(inputs, seg):
    """A marker-walking state machine over the row: a block opens at a begin
    marker, closes after its end marker or at the end of its segment."""
    out, count, open_block = np.zeros(len(inputs), np.int32), 0, 0
    for i, (token, s) in enumerate(zip(inputs, seg)):
        if i and s != seg[i - 1]:
            open_block = 0
        if token in BEGIN_IDS:
            count += 1
            open_block = count
        out[i] = open_block
        if token in END_IDS:
            open_block = 0
    return out


def test_packing_writes_block_ids():
    boi, eoi = VOCAB.markers("image")
    img = VOCAB.offset("image")
    # a document ending in an image: its last chunk's last input is the image's last code
    ending = {"tokens": np.array([VOCAB.bos_id, 20, 21, boi, img, img + 1, img + 2, eoi], np.int32),
              "modality": np.array([0, 0, 0, 1, 1, 1, 1, 1], np.uint8), "loss": np.ones(8, np.uint8)}
    rows = random_rows(2, 6)
    rows = {k: np.concatenate([v, write_row([(0, 0, 7), (0, 0, 3)], {0: ending}, T)[k][None]]) for k, v in rows.items()}
    for inputs, seg, got in zip(rows["inputs"], rows["segment_ids"], rows["block_ids"]):
        np.testing.assert_array_equal(got, reference_block_ids(inputs, seg))
    last = rows["block_ids"][-1]
    assert last[3:7].tolist() == [1, 1, 1, 1] and last[7:10].tolist() == [0, 0, 0]
    assert rows["block_ids"].max() >= 3
    np.testing.assert_array_equal(np.asarray(block_ids(jnp.asarray(rows["inputs"][-1][:7]), xp=jnp)), block_ids(rows["inputs"][-1][:7]))


def test_mask_kind_config_and_per_source_kind():
    from mmntp_jax.data.pipeline import make_dataset
    from tests.tiny import tiny_config

    with pytest.raises(ConfigError, match="'model.attention_mask': 'bidi' is not one of causal, prefix, block"):
        validate(tiny_config(model=dict(attention_mask="bidi")))
    with pytest.raises(ConfigError, match="mask kind"):
        validate(tiny_config(data=dict(source="mixture", mixture=(("markov", 1.0, None, "full"),))))
    config = tiny_config(data=dict(source="mixture", mixture=(("markov", 1.0), ("markov", 1.0, None, "prefix"))), train=dict(seq_len=32))
    validate(config)
    _, batches = make_dataset(config, "eval", batch_size=4, prefetch=False)
    kinds = np.concatenate([batch["mask_kind"] for batch in batches])
    per_row = {tuple(set(row.tolist())) for row in kinds}
    assert per_row == {(-1,), (MASK_KINDS.index("prefix"),)}
