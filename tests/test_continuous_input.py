"""Continuous image input (model.image_input=continuous) against independent references.

References: a dense numpy embedding (token rows, and latent · kernel + bias at
the flagged ids); the image tokenizer's own decoder (the table's latents must be
exactly what it reconstructs from); the full forward pass for KV-cache decoding;
a train step with weight decay for the frozen table.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.config import ConfigError, ModelConfig, load_config
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.model.continuous_input import code_latent_table, fill_latents
from mmntp_jax.model.heads import logits
from mmntp_jax.model.transformer import Transformer
from mmntp_jax.sharding import make_mesh
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.registry import Tokenizer
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

V, F = 97, 4
CFG = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, attention_block=8,
                  image_input="continuous", image_feature_dim=F)
IMAGE = range(40, 90)  # the ids the table flags


def random_table(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = np.zeros((V, F + 1), np.float32)
    table[IMAGE.start : IMAGE.stop, :F] = rng.uniform(-1, 1, (len(IMAGE), F))
    table[IMAGE.start : IMAGE.stop, F] = 1.0
    return table


def model_with_table(seed=0):
    model = Transformer(CFG, rngs=nnx.Rngs(seed))
    model.multi_modal_projector.latents[...] = jnp.asarray(random_table(seed))
    model.multi_modal_projector.bias[...] = jnp.asarray(np.random.default_rng(seed + 1).normal(size=CFG.d_model).astype(np.float32))
    return model


def test_embedding_equals_a_dense_numpy_reference():
    model = model_with_table()
    ids = np.random.default_rng(2).integers(0, V, (3, 40))
    table, embedding = random_table(), np.asarray(model.embed_tokens.embedding[...])
    kernel, bias = np.asarray(model.multi_modal_projector.kernel[...]), np.asarray(model.multi_modal_projector.bias[...])
    want = np.where((table[ids, F] > 0)[..., None], table[ids, :F] @ kernel + bias, embedding[ids])
    assert (table[ids, F] > 0).any() and (table[ids, F] == 0).any()
    np.testing.assert_allclose(np.asarray(model.embed(jnp.asarray(ids))), want, rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_projector_and_never_the_table():
    model = model_with_table()
    ids = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, 24)))
    graph, params = nnx.split(model)

    def loss(params):
        m = nnx.merge(graph, params)
        return jnp.sum(logits(m(ids), m.head_kernel()) ** 2)

    all_grads = nnx.to_pure_dict(jax.grad(loss)(params))
    grads = all_grads["multi_modal_projector"]
    assert np.abs(np.asarray(grads["kernel"])).min(axis=1).max() > 0 and np.abs(np.asarray(grads["bias"])).max() > 0
    np.testing.assert_array_equal(np.asarray(grads["latents"]), 0.0)
    embedding_grad = np.asarray(all_grads["embed_tokens"]["embedding"])
    used = set(np.asarray(ids).ravel()) - set(IMAGE)
    assert all(np.abs(embedding_grad[i]).max() > 0 for i in used)
    assert all(np.abs(embedding_grad[i]).max() == 0 for i in set(np.asarray(ids).ravel()) & set(IMAGE))  # image ids bypass their rows


def test_kv_cache_decoding_matches_the_full_forward():
    model = model_with_table()
    ids = jnp.asarray(np.random.default_rng(4).integers(0, V, (2, 20)))
    full = logits(model(ids), model.head_kernel())
    pos, seg = jnp.broadcast_to(jnp.arange(20), (2, 20)), jnp.ones((2, 20), jnp.int32)
    h, cache = model.decode(ids[:, :12], pos[:, :12], seg[:, :12], model.init_cache(2, 24), 0)
    steps = [logits(h, model.head_kernel())]
    for t in range(12, 20):
        h, cache = model.decode(ids[:, t : t + 1], pos[:, t : t + 1], seg[:, t : t + 1], cache, t)
        steps.append(logits(h, model.head_kernel()))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5)


def tiny_tokenizer(kind="fsq", **quantizer) -> Tokenizer:
    q = QuantizerConfig(kind=kind, **({"levels": (5, 4, 3)} if kind == "fsq" else {}), **quantizer)
    config = ImageTokenizerConfig(image_size=16, factor=4, patch=2, channels=8, channel_mult=(1, 2), z_channels=8, norm_groups=4, quantizer=q)
    return Tokenizer.create("image", config, seed=0)


@pytest.mark.parametrize("kind, quantizer", [("fsq", {}), ("vq", {"codebook_size": 32, "dim": 6})])
def test_the_table_holds_what_the_tokenizer_decodes_from(kind, quantizer):
    tokenizer = tiny_tokenizer(kind, **quantizer)
    module = tokenizer.module()
    n = tokenizer.vocab_size
    vocab = Vocab.build(text=256, image=n)
    table = code_latent_table(tokenizer, vocab, vocab.size)
    start = vocab.offset("image")
    assert table[:start].sum() == 0 and table[start + n :].sum() == 0 and (table[start : start + n, -1] == 1).all()
    codes_BN = np.random.default_rng(5).integers(0, n, (2, module.tokens_per_item()))
    latent = (2, *module.latent_shape())
    zq = table[codes_BN + start, :-1].reshape(*latent, -1)
    np.testing.assert_allclose(np.asarray(jnp.clip(module.decode_latent(jnp.asarray(zq)), 0, 1)),
                               np.asarray(module.decode(jnp.asarray(codes_BN))), atol=1e-6)


def test_the_table_stays_bitwise_fixed_through_training_steps():
    config = tiny_config(model=dict(image_input="continuous", image_feature_dim=F, vocab_size=272), optim=dict(weight_decay=0.5))
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    builder = StepBuilder(config, mesh)
    state = builder.init_state(0)
    table = np.zeros((272, F + 1), np.float32)
    table[100:200] = np.random.default_rng(6).uniform(-1, 1, (100, F + 1))
    table[100:200, F] = 1.0
    state = state.replace(params=fill_latents(state.params, table, F))
    kernel = np.asarray(state.params["multi_modal_projector"]["kernel"])
    rng = np.random.default_rng(7)
    for _ in range(3):
        tokens = rng.integers(0, 272, (8, 65)).astype(np.int32)
        batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((8, 64), np.int32),
                 "positions": np.broadcast_to(np.arange(64, dtype=np.int32), (8, 64)).copy(), "loss_mask": np.ones((8, 64), np.float32),
                 "modality": np.zeros((8, 64), np.int32), "block_ids": np.zeros((8, 64), np.int32)}
        state, _ = builder.train_step(state, batch)
    np.testing.assert_array_equal(np.asarray(state.params["multi_modal_projector"]["latents"]), table)
    assert not np.array_equal(np.asarray(state.params["multi_modal_projector"]["kernel"]), kernel)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.image_input.*'pixels'.*discrete, continuous"):
        load_config(None, ["model.image_input=pixels"])
    tokenizer = tiny_tokenizer("rvq", codebook_size=16, dim=4, num_quantizers=2)
    with pytest.raises(ConfigError, match="quantizer is 'rvq'.*one code per position"):
        code_latent_table(tokenizer, Vocab.build(text=256, image=32), 300)
    fsq = tiny_tokenizer()
    vocab = Vocab.build(text=256, image=fsq.vocab_size)
    params = {"multi_modal_projector": {"latents": jnp.zeros((vocab.size, 7))}}
    with pytest.raises(ConfigError, match=r"model.image_feature_dim=6: the image tokenizer's latents are 3-dimensional.*image_feature_dim=3"):
        fill_latents(params, code_latent_table(fsq, vocab, vocab.size), 6)
    from mmntp_jax.train.backbone import code_latent_params

    with pytest.raises(ConfigError, match="need model.image_tokenizer"):
        code_latent_params({}, dataclasses.replace(CFG, image_tokenizer=""), vocab)
