"""The pixel reader (model/pixel_reader.py): it reads exactly the context images, each through
the tokenizer's own decoder and the trained CNN (a per-image reference); no trained target is
visible through it; gradients reach its CNN and never its frozen decoder; KV-cache decoding with
a read prompt image equals recomputation; its config and initialisation errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_image_reader import assert_cached_decoding_reads_the_prompt_image, reader_loss_gradient, reference_members
from test_masks import CFG, VOCAB

from mmntp_jax.config import ConfigError
from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.packing import write_row
from mmntp_jax.model.heads import token_losses
from mmntp_jax.model.image_reader import context_groups
from mmntp_jax.model.init import bind, graphdef, init_params
from mmntp_jax.model.transformer import Transformer
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from mmntp_jax.tokenizers.io import save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer
from mmntp_jax.train.backbone import code_latent_params
from mmntp_jax.train.optim import decay_mask

# 8 × 8 images → a 2 × 2 grid of FSQ codes, 24 of them (the test vocabulary's image range)
TOKENIZER = ImageTokenizerConfig(image_size=8, factor=4, patch=2, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention=False,
                                 z_channels=8, norm_groups=4, quantizer=QuantizerConfig(kind="fsq", levels=(4, 6)))
N = 4
T = 64


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixel_reader") / "tokenizer"
    tokenizer = random_tokenizer(TOKENIZER, seed=3)
    save_tokenizer(tokenizer, folder)
    return tokenizer, dataclasses.replace(CFG, image_reader="pixels", image_tokenizer=str(folder), image_feature_dim=2,
                                          image_reader_channels=8, image_reader_layers=1)


@pytest.fixture(scope="module")
def model(tokenizer):
    return filled_model(tokenizer[1])


def random_tokenizer(config, seed):
    """An image tokenizer with random weights drawn in numpy (faster than building it eagerly)."""
    rng = np.random.default_rng(seed)
    graph, state = nnx.split(nnx.eval_shape(lambda: ImageTokenizer(config, rngs=nnx.Rngs(0))))
    draw = lambda path, s: (path[-1] == "scale") + 0.3 * rng.standard_normal(s.shape).astype(np.float32)
    params = jax.tree_util.tree_map_with_path(lambda path, s: jnp.asarray(draw([getattr(k, "key", k) for k in path], s)), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    return Tokenizer("image", config, nnx.merge(graph, state))


def filled_model(cfg, seed=0):
    """A model with the tokenizer's latents and decoder filled in and a random CNN and out_proj."""
    params = code_latent_params(init_params(cfg, jax.random.key(seed)), cfg, VOCAB)
    return randomized_cnn(bind(graphdef(cfg), params), seed)


def randomized_cnn(model, seed):
    graph, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    reader = params["image_reader"]
    rng = np.random.default_rng(seed + 10)
    noise = lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape).astype(np.float32)) + (x if x.ndim == 1 else 0)
    for name in ("encoder", "norm", "out_proj", "pool_norm", "pool_proj"):
        reader[name] = jax.tree.map(noise, reader[name])
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graph, state)


def rows(seed, n_rows):
    """Packed rows of whole documents whose images hold N codes: captioning, drawing, mixed, text."""
    rng = np.random.default_rng(seed)
    text = lambda n: VOCAB.offset("text") + rng.integers(0, 40, n)
    image = lambda: VOCAB.offset("image") + rng.integers(0, 24, N)
    out = []
    while len(out) < n_rows:
        docs, chunks, at = {}, [], 0
        while True:
            parts = {
                "caption": [("image", image(), False), ("text", text(rng.integers(2, 6)), True)],
                "draw": [("text", text(rng.integers(2, 6)), False), ("image", image(), True)],
                "mixed": [("text", text(2), False), ("image", image(), False), ("text", text(3), True), ("image", image(), True)],
                "text": [("text", text(rng.integers(2, 8)), True)],
            }[rng.choice(["caption", "caption", "draw", "mixed", "text"])]
            doc = assemble_document(parts, VOCAB)
            pairs = len(doc["tokens"]) - 1
            if at + pairs > T:
                break
            docs[len(docs)] = doc
            chunks.append((len(docs) - 1, 0, pairs))
            at += pairs
        out.append(write_row(chunks, docs, T))
    return {k: np.stack([r[k] for r in out]) for k in out[0]}


def rms(v, norm):
    return v / np.sqrt(np.mean(v**2, -1, keepdims=True) + CFG.norm_eps) * np.asarray(norm.weight[...])


def reference(model, tokenizer, x, members, ids):
    """Each context image alone: its codes through the tokenizer's own decoder and the
    reader's CNN; in numpy, each cell's normalised feature through out_proj plus the
    image's pooled mean ‖ max through pool_proj, added at its codes' positions."""
    module = tokenizer.module()
    reader = model.image_reader
    decode = jax.jit(lambda codes: module.decode_latent(module.quantize.lookup(codes, (2, 2)).reshape(1, 2, 2, -1)))
    encode = jax.jit(lambda pixels: reader.encoder(jnp.clip(pixels, 0, 1) * 2 - 1))
    out = x.copy()
    images = {}
    for (r, p), rank in members.items():
        images.setdefault((r, p - rank), {})[rank] = p
    for (r, _), positions in images.items():
        assert sorted(positions) == list(range(N))
        codes = jnp.asarray([[ids[r, positions[k]] - VOCAB.offset("image") for k in range(N)]])
        h = np.asarray(encode(decode(codes))).reshape(N, -1)
        pool = np.concatenate([h.mean(0), h.max(0)])
        g = rms(pool, reader.pool_norm) @ np.asarray(reader.pool_proj[...])
        for k, p in positions.items():
            out[r, p] = x[r, p] + rms(h[k], reader.norm) @ np.asarray(reader.out_proj[...]) + g
    return out


def test_reader_decodes_and_reads_each_context_image_as_the_reference(tokenizer, model):
    tok, cfg = tokenizer
    batch = rows(0, 4)
    ids, blocks, loss, seg = (jnp.asarray(batch[k]) for k in ("inputs", "block_ids", "loss_mask", "segment_ids"))
    members = reference_members(batch["inputs"], batch["block_ids"], batch["loss_mask"])
    per_row = [sum(1 for (r, _), k in members.items() if r == row and k == 0) for row in range(4)]
    assert max(per_row) >= 3 and len(members) >= 8 * N  # several images in a row, each one of M = T // (N + 2) slots
    x = np.asarray(jax.random.normal(jax.random.key(1), (*ids.shape, CFG.d_model)), np.float32)
    graph, state = nnx.split(model)
    read = jax.jit(lambda state, x: nnx.merge(graph, state).image_reader(ids, x, context_groups(ids, seg, blocks, loss)))
    got = np.asarray(read(state, jnp.asarray(x)))
    member = np.zeros(ids.shape, bool)
    member[tuple(np.array(list(members)).T)] = True
    assert np.array_equal(got[~member], x[~member]) and np.abs(got - x)[member].min() > 1e-3
    np.testing.assert_allclose(got, reference(model, tok, x, members, batch["inputs"]), atol=2e-4)


def test_the_decoder_is_the_tokenizers_and_stays_frozen(tokenizer, model):
    tok, cfg = tokenizer
    params = nnx.to_pure_dict(nnx.state(model))
    ours = params["image_reader"]["tokenizer_decoder"]
    theirs = nnx.to_pure_dict(tok.params)
    for name in ("post_quant_conv", "decoder"):
        jax.tree.map(np.testing.assert_array_equal, ours[name], theirs[name])
    batch = {k: jnp.asarray(v) for k, v in rows(1, 2).items()}
    graph = graphdef(cfg)

    def loss(p):
        m = bind(graph, p)
        h = m(*(batch[k] for k in ("inputs", "positions", "segment_ids", "block_ids", "loss_mask")))
        return jnp.sum(token_losses(h, m.head_kernel(), batch["targets"])[0] * batch["loss_mask"])

    grads = jax.jit(jax.grad(loss))(params)["image_reader"]
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads["encoder"]))  # end to end into the CNN
    assert np.abs(np.asarray(grads["out_proj"])).max() > 0 and np.abs(np.asarray(grads["pool_proj"])).max() > 0
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves((grads["tokenizer_decoder"], grads["latents"])))
    decays = decay_mask(params)["image_reader"]
    assert not any(jax.tree.leaves((decays["tokenizer_decoder"], decays["latents"])))
    assert all(conv["kernel"] and not conv["bias"] for conv in decays["encoder"].values())


def test_no_trained_target_is_visible_through_the_pixel_reader(model):
    """The reader adds to the embeddings of context codes only; the codes reach it through
    ids (no gradient), so the check runs on the embeddings the reader adds to, under a causal mask."""
    batch = {k: jnp.asarray(v) for k, v in rows(2, 2).items()}
    batch["mask_kind"] = jnp.zeros_like(batch["segment_ids"])
    graph_params = nnx.split(model)
    for b, t in zip(*np.nonzero(np.asarray(batch["loss_mask"]))):
        grad = np.asarray(reader_loss_gradient(graph_params, batch, b, t))
        assert np.all(grad[b, t + 1 :] == 0.0), f"the loss at {b}, {t} sees a later input"
        assert np.all(grad[1 - b] == 0.0) and grad[b, t] > 0


def test_kv_cache_decoding_with_a_read_prompt_image_equals_full_recomputation(model):
    img, txt = VOCAB.offset("image"), VOCAB.offset("text")
    boi, eoi = VOCAB.markers("image")
    prompts = [[VOCAB.bos_id, boi, img + 3, img + 17, img + 8, img + 22, eoi, txt + 5], [VOCAB.bos_id, txt + 1, txt + 2, boi]]
    p = max(map(len, prompts))
    ids, seg, pos = (np.zeros((2, p), np.int32) for _ in range(3))
    for r, x in enumerate(prompts):
        ids[r, p - len(x):], seg[r, p - len(x):], pos[r, p - len(x):] = x, 1, np.arange(len(x))
    assert_cached_decoding_reads_the_prompt_image(model, *map(jnp.asarray, (ids, seg, pos)), n=4)


def test_pixel_reader_errors(tokenizer, model, tmp_path):
    tok, cfg = tokenizer
    with pytest.raises(ConfigError, match="model.image_reader=pixels needs model.image_tokenizer"):
        Transformer(dataclasses.replace(cfg, image_tokenizer=""), rngs=nnx.Rngs(0))
    other = dataclasses.replace(TOKENIZER, channels=16)
    save_tokenizer(random_tokenizer(other, 0), tmp_path / "other")
    params = nnx.to_pure_dict(nnx.state(model))
    with pytest.raises(ConfigError, match="decoder does not match the pixel reader"):
        code_latent_params(params, dataclasses.replace(cfg, image_tokenizer=str(tmp_path / "other")), VOCAB)


def test_captioned_job_gives_the_pixel_reader_its_tokenizer(tmp_path):
    from mmntp_jax.config import load_config
    from mmntp_jax.job.captioned import TOKENIZER_DIR, backbone_config

    model = backbone_config(load_config(None, ["model.image_reader=pixels"]), tmp_path).model
    assert model.image_tokenizer == str(tmp_path / TOKENIZER_DIR) and model.image_feature_dim == 4  # FSQ 8·5·5·5: 4 numbers a code
    assert backbone_config(load_config(None, []), tmp_path).model.image_tokenizer == ""
