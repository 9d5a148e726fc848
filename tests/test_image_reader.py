"""The image reader (model/image_reader.py) against a numpy reference: which codes it reads
(context image blocks only), its grid convolutions, no next-token leak through it, KV-cache
decoding with a read prompt image, the config's choices and the exports' refusals."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_masks import CFG, VOCAB, prompt_rows, random_rows

from mmntp_jax.config import ConfigError, ModelConfig, validate
from mmntp_jax.data.vocab import BEGIN_IDS, END_IDS
from mmntp_jax.export.hf_layout import NotExpressible, check_expressible
from mmntp_jax.model.generate import generate_ids, prompt_context, prompt_groups, prompt_loss_mask
from mmntp_jax.model.heads import logits, token_losses
from mmntp_jax.model.image_reader import context_groups, grid_members
from mmntp_jax.model.transformer import Transformer

W = 3  # the random blocks hold 4–12 codes: rows of three make a grid
READER = dataclasses.replace(CFG, image_reader="conv", image_reader_layers=2, image_reader_channels=8, image_grid_width=W)
BOI = VOCAB.markers("image")[0]


def randomized(model, seed=0):
    """The model with every reader parameter random (out_proj starts at zero)."""
    graph, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    leaves, tree = jax.tree.flatten(params["image_reader"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    params["image_reader"] = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) + (x if x.ndim == 1 else 0) for k, x in zip(keys, leaves)])
    model = nnx.merge(graph, nnx.split(model)[1])
    nnx.replace_by_pure_dict(state := nnx.state(model), params)
    nnx.update(model, state)
    return model


def reference_members(ids, blocks, loss):
    """{(row, position): rank}: codes of image blocks, up to the block's first trained target."""
    out = {}
    for r in range(ids.shape[0]):
        for block in set(blocks[r].tolist()) - {0}:
            at = np.flatnonzero(blocks[r] == block)
            if ids[r, at[0]] != BOI:
                continue
            trained = [p for p in at if loss[r, p] > 0]
            last = trained[0] if trained else at[-1]
            for p in at:
                if p <= last and ids[r, p] not in BEGIN_IDS + END_IDS:
                    out[(r, p)] = p - at[0] - 1
    return out


def reference_reader(params, x, members):
    """The reader in numpy, one context block at a time, each as a dict rank → vector."""
    gelu = lambda z: np.asarray(jax.nn.gelu(jnp.asarray(z)))
    out = x.copy()
    by_block = {}
    for (r, p), rank in members.items():
        by_block.setdefault((r, p - rank), {})[rank] = p
    for (r, _), positions in by_block.items():
        h = {k: x[r, p] / np.sqrt(np.mean(x[r, p] ** 2) + CFG.norm_eps) * params["norm"]["weight"] for k, p in positions.items()}
        for layer in range(READER.image_reader_layers):
            conv = params[f"conv{layer}"]
            new = {}
            for k in h:
                total = conv["bias"].copy()
                for i, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                    j = k + dy * W + dx
                    if j in h and 0 <= k % W + dx < W:
                        total = total + h[j] @ conv["kernel"][i]
                new[k] = gelu(total)
            h = new
        for k, p in positions.items():
            out[r, p] = x[r, p] + h[k] @ params["out_proj"]
    return out


def test_reader_reads_context_codes_and_equals_numpy_reference():
    rows = random_rows(3, 4)
    model = randomized(Transformer(READER, rngs=nnx.Rngs(0)))
    ids, blocks, loss, seg = (jnp.asarray(rows[k]) for k in ("inputs", "block_ids", "loss_mask", "segment_ids"))
    ctx = context_groups(ids, seg, blocks, loss)
    member, rank = map(np.asarray, grid_members(ids, ctx))
    want = reference_members(rows["inputs"], rows["block_ids"], rows["loss_mask"])
    assert len(want) > 20 and {(r, p) for r, p in zip(*np.nonzero(member))} == set(want)
    assert all(rank[r, p] == k for (r, p), k in want.items())
    # drawing documents' images are targets: none of their codes is read
    drawn = [(r, p) for r in range(4) for p in range(ids.shape[1]) if rows["block_ids"][r, p] and rows["loss_mask"][r, p] and rows["inputs"][r, p] not in BEGIN_IDS]
    assert drawn and not any(member[r, p] for r, p in drawn)
    x = np.asarray(jax.random.normal(jax.random.key(1), (*ids.shape, CFG.d_model)), np.float32)
    got = np.asarray(model.image_reader(ids, jnp.asarray(x), ctx))
    assert np.abs(got - x)[member].min() > 1e-3 and np.array_equal(got[~member], x[~member])
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.image_reader)))
    np.testing.assert_allclose(got, reference_reader(params, x, want), atol=2e-5)


@jax.jit
def reader_loss_gradient(graph_params, batch, b, t):
    """d(loss at row b, position t) / d(token embeddings before the reader), summed over D: [B, T]."""
    graph, params = graph_params
    model = nnx.merge(graph, params)
    fields = [batch[k] for k in ("positions", "segment_ids", "block_ids", "loss_mask", "mask_kind")]
    ctx = context_groups(batch["inputs"], batch["segment_ids"], batch["block_ids"], batch["loss_mask"])
    forward = lambda x: model.from_embeddings(model.image_reader(batch["inputs"], x, ctx), *fields)
    loss = lambda x: token_losses(forward(x), model.head_kernel(), batch["targets"], 0)[0][b, t]
    return jnp.abs(jax.grad(loss)(model.embed_tokens(batch["inputs"], jnp.float32))).sum(-1)


def test_no_trained_target_is_visible_through_the_reader():
    """Causal mask, so every look ahead would be the reader's: one vjp per trained position."""
    rows = random_rows(9, 2, 48)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    batch["mask_kind"] = jnp.zeros_like(batch["segment_ids"])
    model = randomized(Transformer(READER, rngs=nnx.Rngs(1)))
    graph_params = nnx.split(model)
    member = np.asarray(grid_members(batch["inputs"], context_groups(batch["inputs"], batch["segment_ids"], batch["block_ids"], batch["loss_mask"]))[0])
    assert member.sum() > 8
    looked_ahead = 0
    for b, t in zip(*np.nonzero(rows["loss_mask"])):
        grad = np.asarray(reader_loss_gradient(graph_params, batch, b, t))
        assert np.all(grad[b, t + 1 :] == 0.0), f"the loss at {b}, {t} sees a later input"
        assert np.all(grad[1 - b] == 0.0) and grad[b, t] > 0
    for b, t in zip(*np.nonzero(member)):  # an untrained code of a context image does see its later neighbours
        grad = np.asarray(reader_loss_gradient(graph_params, batch, b, t))
        looked_ahead += int(np.any(grad[b, t + 1 :] > 0))
    assert looked_ahead > 0


def test_kv_cache_decoding_with_a_read_prompt_image_equals_full_recomputation():
    model = randomized(Transformer(READER, rngs=nnx.Rngs(2)))
    ids, seg, pos = map(jnp.asarray, prompt_rows())
    assert int(np.asarray(grid_members(ids, prompt_context(model, ids, seg))[0]).sum()) == 9  # the first prompt's image
    assert_cached_decoding_reads_the_prompt_image(model, ids, seg, pos)


def assert_cached_decoding_reads_the_prompt_image(model, ids, seg, pos, n=5):
    """Prefill of left-padded prompts (row 0 holding a context image) and n cached steps equal
    the full forward of the whole rows; without a loss mask the image would not be read; greedy
    `generate_ids` agrees."""
    b, p = ids.shape
    new = jax.random.randint(jax.random.key(3), (b, n), VOCAB.offset("text"), VOCAB.offset("text") + 40)
    full_ids = jnp.concatenate([ids, new], axis=1)
    full_seg = jnp.concatenate([seg, jnp.ones((b, n), jnp.int32)], axis=1)
    full_pos = jnp.concatenate([pos, pos[:, -1:] + 1 + jnp.arange(n)], axis=1)
    blocks = prompt_loss_mask(full_ids, full_seg)[1]
    loss = jnp.where(jnp.arange(p + n) >= p - 1, 1.0, jnp.pad(prompt_loss_mask(ids, seg)[0], ((0, 0), (0, n))))
    graph, params = nnx.split(model)

    @jax.jit
    def full_and_cached(params):
        m = nnx.merge(graph, params)
        want = logits(m(full_ids, full_pos, full_seg, blocks, loss), m.head_kernel())
        h, cache = m.decode(ids, pos, seg, m.init_cache(b, p + n), 0, prompt_groups(m, ids, seg), context_BT=prompt_context(m, ids, seg))
        got = [logits(h, m.head_kernel())]
        for i in range(n):
            h, cache = m.decode(new[:, i : i + 1], full_pos[:, p + i : p + i + 1], jnp.ones((b, 1), jnp.int32), cache, p + i)
            got.append(logits(h, m.head_kernel()))
        return want, jnp.concatenate(got, axis=1), logits(m(ids, pos, seg), m.head_kernel())

    want, got, unread = map(np.asarray, full_and_cached(params))
    np.testing.assert_allclose(got, want, atol=2e-5)
    # `unread`: the prompts without a loss mask, so no block is context and nothing is read
    assert not np.allclose(unread[0, -1], want[0, p - 1], atol=1e-4)
    greedy = np.asarray(generate_ids(graph, params, ids, seg, pos, jax.random.key(0), max_new_tokens=3))
    np.testing.assert_array_equal(greedy[:, 0], want[:, p - 1].argmax(-1))


def test_reader_config_choices_and_export_refusals():
    with pytest.raises(ConfigError, match="model.image_reader.*none, conv"):
        validate(dataclasses.replace(_config(), model=dataclasses.replace(_config().model, image_reader="cnn")))
    with pytest.raises(ConfigError, match="image_grid_width"):
        validate(dataclasses.replace(_config(), model=dataclasses.replace(_config().model, image_reader="conv", image_grid_width=0)))
    with pytest.raises(NotExpressible, match="image_reader"):
        check_expressible(dataclasses.replace(ModelConfig(), image_reader="conv"), [])


def _config():  # the default Config
    from mmntp_jax.config import Config

    return Config()


def test_captioned_job_sets_the_grid_width_from_its_tokenizer(tmp_path):
    from mmntp_jax.config import load_config
    from mmntp_jax.job.captioned import backbone_config

    config = load_config(None, ["model.image_reader=conv", "model.image_grid_width=3"])
    assert backbone_config(config, tmp_path).model.image_grid_width == 8  # 32 × 32 at factor 4
    assert backbone_config(load_config(None, ["model.image_grid_width=3"]), tmp_path).model.image_grid_width == 3  # no reader: untouched
