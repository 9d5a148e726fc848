"""Continuous image output (model.image_output = regression | diffusion) against independent references.

References: numpy formulas of the regression losses and their gradients, a
numpy transcription of the denoiser MLP and the flow-matching loss, the exact
velocity field of a 2-D Gaussian mixture (the sampler must recover its modes),
the full forward pass for KV-cache generation, and gradients for the no-leak
property.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.config import ConfigError, ModelConfig, load_config
from mmntp_jax.model import continuous_output as co
from mmntp_jax.model.init import bind
from mmntp_jax.model.transformer import Transformer
from mmntp_jax.sharding import make_mesh
from mmntp_jax.train.step import StepBuilder, training_objective
from tiny import tiny_config

from test_continuous_input import IMAGE, F, V, random_table  # the same vocabulary and latent table

BASE = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, attention_block=8, image_feature_dim=F,
                   diffusion_width=24, diffusion_depth=2, diffusion_steps=8)


def randomize(module, seed):
    """Every parameter of `module` (a zero-initialised head included) drawn at random, the table set."""
    rng = np.random.default_rng(seed)
    for path, p in nnx.iter_graph(module):
        if isinstance(p, nnx.Param):
            p[...] = jnp.asarray(0.3 * rng.normal(size=p[...].shape).astype(np.float32))
    return module


def head_model(mode, seed=0, **kw):
    cfg = dataclasses.replace(BASE, image_output=mode, **kw)
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    randomize(model.image_head, seed + 7)
    model.image_head.latents[...] = jnp.asarray(random_table(seed))
    return model


# -- regression (CTP) ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_regression_loss_and_gradient_equal_numpy(kind):
    model = head_model("regression", regression_loss=kind)
    head = model.image_head
    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 6, BASE.d_model)).astype(np.float32)
    targets = rng.integers(0, V, (2, 6))
    table = random_table()
    x, flag = table[targets, :F], table[targets, F]
    kernel, bias = np.asarray(head.kernel[...], np.float64), np.asarray(head.bias[...], np.float64)
    p = h.astype(np.float64) @ kernel + bias
    if kind == "mse":
        want = np.mean((p - x) ** 2, axis=-1)
        dp = 2 * (p - x) / F
    else:
        pn, xn = np.linalg.norm(p, axis=-1, keepdims=True), np.linalg.norm(x, axis=-1, keepdims=True)
        want = 1 - np.sum(p * x, axis=-1) / np.maximum(pn * xn, 1e-8)[..., 0]
        dp = -(x / (pn * np.maximum(xn, 1e-8)) - np.sum(p * x, axis=-1, keepdims=True) * p / (pn**3 * np.maximum(xn, 1e-8)))
        dp = np.where(xn > 0, dp, 0.0)  # non-image targets: the latent is zero
    got, got_flag = head.losses(jnp.asarray(h), jnp.asarray(targets), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_flag), flag)
    weights = flag * rng.uniform(0.5, 2, flag.shape)

    def weighted(head_):
        return jnp.sum(head_.losses(jnp.asarray(h), jnp.asarray(targets), jax.random.key(0))[0] * weights)

    grad = nnx.grad(weighted)(head)["kernel"][...]
    want_grad = np.einsum("btd,btf->df", h, dp * weights[..., None])
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-5)


# -- diffusion -------------------------------------------------------------------------------------
def numpy_denoiser(d, x, t, h):
    """A transcription of `Denoiser.__call__` in float64 numpy."""
    P = lambda p: np.asarray(p[...], np.float64)
    silu = lambda z: z / (1 + np.exp(-z))
    ln = lambda z: (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
    half = co.TIME_FEATURES // 2
    freq = np.exp(-np.log(1000.0) * np.arange(half) / half)
    angle = 1000.0 * t[:, None] * freq[None]
    temb = np.concatenate([np.cos(angle), np.sin(angle)], -1)
    c = h @ P(d.cond_proj) + temb @ P(d.time_proj)
    y = x @ P(d.in_proj) + P(d.in_bias)
    for i in range(d.depth):
        y = y + silu(ln(y + c) @ P(d.fc1)[i] + P(d.fc1_bias)[i]) @ P(d.fc2)[i] + P(d.fc2_bias)[i]
    return ln(y + c) @ P(d.out_proj) + P(d.out_bias)


def test_flow_matching_loss_at_fixed_noise_levels_equals_numpy():
    d = head_model("diffusion").image_head.denoiser
    rng = np.random.default_rng(3)
    n = 10
    x0, noise, h = rng.uniform(-1, 1, (n, F)), rng.normal(size=(n, F)), rng.normal(size=(n, BASE.d_model))
    t = np.linspace(0.05, 0.95, n)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
    want = np.mean((numpy_denoiser(d, x_t, t, h) - (noise - x0)) ** 2, axis=-1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = co.flow_matching_loss(d, f32(x0), f32(h), f32(t), f32(noise))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=1e-5)


def gmm_velocity(means, sigma, weights):
    """The exact rectified-flow velocity E[ε − x0 | x_t = x] of a Gaussian mixture Σ w_k N(μ_k, σ²I)."""
    means, weights = jnp.asarray(means, jnp.float32), jnp.asarray(weights, jnp.float32)

    def velocity(x_NF, t_N):
        t = t_N[:, None, None]
        s2 = (1 - t) ** 2 * sigma**2 + t**2
        r_NKF = x_NF[:, None, :] - (1 - t) * means[None]
        logp_NK = jnp.log(weights)[None] - 0.5 * jnp.sum(r_NKF**2, -1) / s2[..., 0] - means.shape[1] * 0.5 * jnp.log(s2[..., 0])
        post_NK = jax.nn.softmax(logp_NK, axis=-1)
        v_NKF = t / s2 * r_NKF - means[None] - (1 - t) * sigma**2 / s2 * r_NKF
        return jnp.sum(post_NK[..., None] * v_NKF, axis=1)

    return velocity


def test_the_sampler_recovers_a_gaussian_mixture():
    means, sigma, weights = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]), 0.3, np.array([0.5, 0.3, 0.2])
    noise = jax.random.normal(jax.random.key(0), (6000, 2))
    x = np.asarray(co.euler_sample(gmm_velocity(means, sigma, weights), noise, 200))
    nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(x), weights, atol=0.025)
    for k in range(3):
        cluster = x[nearest == k]
        np.testing.assert_allclose(cluster.mean(0), means[k], atol=0.05)
        np.testing.assert_allclose(cluster.std(0), sigma, rtol=0.15)
    few = np.asarray(co.euler_sample(gmm_velocity(means, sigma, weights), noise, 2))
    assert np.abs(few.std(0) - x.std(0)).max() > 0.05  # two steps are visibly off: the test can fail


def test_nearest_code_is_the_flagged_argmin():
    table = random_table(4)
    latents = np.random.default_rng(5).uniform(-1.2, 1.2, (50, F)).astype(np.float32)
    d = ((latents[:, None] - table[None, :, :F]) ** 2).sum(-1)
    d[:, table[:, F] == 0] = np.inf
    np.testing.assert_array_equal(np.asarray(co.nearest_code(jnp.asarray(latents), jnp.asarray(table))), d.argmin(1))


# -- in the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [pytest.param("regression", marks=pytest.mark.slow), "diffusion"])  # a linear head per position
def test_no_continuous_loss_sees_its_target_or_a_later_input(mode):
    model = head_model(mode)
    rng = np.random.default_rng(6)
    t = 24
    ids = rng.integers(0, V, (1, t + 1))
    inputs, targets = jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])
    x_BTD = model.embed(inputs)
    assert (random_table()[ids[0, 1:], F] > 0).sum() > 5

    def losses(x):
        return model.image_head.losses(model.from_embeddings(x), targets, jax.random.key(1))[0][0]

    g_TT = np.abs(np.asarray(jax.jacrev(losses)(x_BTD)))[:, 0].sum(-1)  # [loss position, input position]
    assert (np.triu(g_TT, 1) == 0).all(), mode
    assert (g_TT[np.tril_indices(t)] > 0).all(), mode


def generation_setup(n: int, **model):
    """(vocab, model with a random head and a 16-code table, the table, BlockRules for n-code images, two prompts ending in <boi>)."""
    from mmntp_jax.data.vocab import Vocab
    from mmntp_jax.model.block_rules import BlockRules

    vocab = Vocab.build(text=256, image=16)
    m = Transformer(dataclasses.replace(BASE, vocab_size=vocab.size, **model), rngs=nnx.Rngs(0))
    randomize(m.image_head, 3)
    table = np.zeros((vocab.size, F + 1), np.float32)
    start = vocab.offset("image")
    table[start : start + 16, :F] = np.random.default_rng(8).uniform(-1, 1, (16, F))
    table[start : start + 16, F] = 1
    m.image_head.latents[...] = jnp.asarray(table)
    boi, text = vocab.special("<boi>"), vocab.offset("text")
    prompts = [np.array([1, 20 + text, 30 + text, boi]), np.array([1, 40 + text, boi])]
    return vocab, m, table, BlockRules.from_vocab(vocab, {"image": n}), prompts


@pytest.mark.parametrize("mode", [pytest.param("regression", marks=pytest.mark.slow), "diffusion"])  # one override path for both
def test_kv_cache_generation_equals_full_recomputation(mode):
    from mmntp_jax.model.generate import generate_ids, left_pad

    vocab, model, table, rules, prompts = generation_setup(6, image_output=mode)
    ids, seg, pos = left_pad(prompts)
    block, filled = rules.state_after(prompts)
    graph, params = nnx.split(model)
    out = np.asarray(generate_ids(graph, params, jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos), jax.random.key(0), max_new_tokens=7,
                                  temperature=0.0, rules=rules, block_B=jnp.asarray(block), filled_B=jnp.asarray(filled)))
    assert (table[out[:, :6], F] > 0).all() and (out[:, 6] == vocab.special("<eoi>")).all()
    for row, prompt in enumerate(prompts):
        full = np.concatenate([prompt, out[row, :6]])[None]
        hidden = model(jnp.asarray(full))[0]
        want = co.nearest_code(model.image_head.sample_latents(hidden[len(prompt) - 1 : -1], jax.random.key(9), 0.0), jnp.asarray(table))
        np.testing.assert_array_equal(out[row, :6], np.asarray(want))


def test_image_targets_take_the_weighted_continuous_loss_instead_of_cross_entropy():
    config = tiny_config(model=dict(vocab_size=V, image_output="regression", image_feature_dim=F), train=dict(seq_len=16, batch_size=2))
    model = Transformer(config.model, rngs=nnx.Rngs(0))
    model.image_head.latents[...] = jnp.asarray(random_table())
    graph, params = nnx.split(model)
    rng = np.random.default_rng(2)
    batch = {"inputs": rng.integers(0, V, (2, 16)), "targets": rng.integers(0, V, (2, 16)), "positions": np.tile(np.arange(16), (2, 1)),
             "segment_ids": np.ones((2, 16), np.int32), "block_ids": np.zeros((2, 16), np.int32),
             "loss_mask": (rng.uniform(size=(2, 16)) > 0.2).astype(np.float32), "modality": np.zeros((2, 16), np.int32)}
    flag = random_table()[batch["targets"], F]
    batch["modality"] = np.where(flag > 0, 1, 0).astype(np.int32)  # MODALITIES[1] is image
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def total(lam):
        return training_objective(params, graph, batch, loss_chunk=16, z_loss=0.0, loss_weights=(1.0, lam, 1.0, 1.0))[0]

    m = bind(graph, params)
    cont = np.asarray(m.image_head.losses(m(batch["inputs"]), batch["targets"], jax.random.key(0))[0])
    mask = np.asarray(batch["loss_mask"]) * flag
    np.testing.assert_allclose(float(total(2.5) - total(0.0)), 2.5 * float((cont * mask).sum()), rtol=1e-5)
    _, sums = training_objective(params, graph, batch, loss_chunk=16, z_loss=0.0)
    assert float(sums["continuous_tokens"]) == mask.sum() and float(sums["modality_tokens"][1]) == 0


@pytest.mark.parametrize("mode,form", [pytest.param("regression", "token", marks=pytest.mark.slow),
                                       pytest.param("diffusion", "token", marks=pytest.mark.slow), ("diffusion", "block")])
def test_train_steps_lower_the_continuous_loss(mode, form):
    config = tiny_config(model=dict(vocab_size=V, image_output=mode, image_feature_dim=F, diffusion_width=32, diffusion_form=form),
                         train=dict(seq_len=32, batch_size=4, steps=30),
                         optim=dict(lr=3e-3, warmup_steps=0))
    from mmntp_jax.data.vocab import Vocab

    builder = StepBuilder(config, make_mesh(config.mesh, devices=jax.devices()[:1]), vocab=Vocab.build(text=V - 16))
    state = builder.init_state(0)
    from mmntp_jax.model.continuous_input import fill_latents

    state = state.replace(params=fill_latents(state.params, random_table(), F, module="image_head"))
    rng = np.random.default_rng(0)
    ids = np.tile(rng.integers(IMAGE.start, IMAGE.stop, (1, 33)), (4, 1))  # one fixed image sequence: learnable
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "positions": np.tile(np.arange(32), (4, 1)), "segment_ids": np.ones((4, 32), np.int32),
             "block_ids": np.zeros((4, 32), np.int32), "loss_mask": np.ones((4, 32), np.float32), "modality": np.ones((4, 32), np.int32)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    from mmntp_jax.train.step import summarize

    held_out = lambda: float(summarize(builder.eval_step(state.params, batch))["continuous_loss/image"])  # fixed noise draws
    before = held_out()
    for _ in range(30):
        state, metrics = builder.train_step(state, batch)
    after = held_out()
    drop = 0.5 if mode == "regression" else 0.8  # 30 steps take flow matching part of the way to its floor
    assert np.isfinite(float(metrics["continuous_loss/image"])) and after < drop * before, (before, after)
    # every target is a trained image code: the loss is the continuous loss over the 128 target weights (the block
    # form's members are the 4 × 31 codes whose target position lies in the row)
    members = 4 * 31 if form == "block" else 128
    expected = float(metrics["continuous_loss/image"]) * members / 128
    assert np.isnan(float(metrics["loss/image"])) and float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="model.image_output.*'pixels'.*discrete, regression, diffusion"):
        load_config(None, ["model.image_output=pixels"])
    with pytest.raises(ConfigError, match="model.regression_loss.*mse, cosine"):
        load_config(None, ["model.regression_loss=l1"])
    with pytest.raises(ConfigError, match="model.diffusion_form.*token, block"):
        load_config(None, ["model.diffusion_form=frame"])


# -- the block (Transfusion) form ---------------------------------------------------------------------
def block_batch():
    """One row: text, a trained image block at 6…15, text, a context image block at 19…22 (its targets untrained)."""
    inputs = np.array([[1, 20, 21, 22, 23, 3, *range(40, 50), 4, 24, 3, 60, 61, 62, 63, 4, 25]])
    loss_mask = np.ones(inputs.shape, np.float32)
    loss_mask[0, 18:22] = 0.0  # the targets 19…22 of the context block
    return jnp.asarray(inputs), jnp.asarray(loss_mask)


def test_block_diffusion_never_sees_clean_latents_or_later_inputs():
    from mmntp_jax.model.diffusion_block import noise_blocks

    model = head_model("diffusion", diffusion_form="block")
    block = model.image_head.block
    inputs, loss_mask = block_batch()
    noised = noise_blocks(model.image_head.table(), inputs, loss_mask, jax.random.key(2))
    members = np.flatnonzero(np.asarray(noised.member_BT[0]))
    np.testing.assert_array_equal(members, np.arange(6, 16))
    assert len(set(np.asarray(noised.t_BT[0, 6:16]).tolist())) == 1  # one noise level per block
    x_clean = model.embed(inputs)

    def losses(clean_BTD, x_t_BTF):
        on = noised.member_BT[..., None] > 0
        x_BTD = jnp.where(on, block.embed(x_t_BTF, noised.t_BT), clean_BTD)
        hidden = model.from_embeddings(x_BTD, extra_groups_BT=noised.groups_BT)
        return block.losses(hidden, noised._replace(x_t_BTF=x_t_BTF))[0][0]

    g_clean, g_noised = jax.jacrev(losses, argnums=(0, 1))(x_clean, noised.x_t_BTF)
    g_clean = np.abs(np.asarray(g_clean))[:, 0].sum(-1)  # [loss position, input position]
    g_noised = np.abs(np.asarray(g_noised))[:, 0].sum(-1)
    for j in members:
        assert (g_clean[j, 6:] == 0).all(), j  # no clean latent of its block, nothing after it
        assert (g_clean[j, :6] > 0).all(), j  # the clean context before it
        assert (g_noised[j, 6:16] > 0).all() and (g_noised[j, 16:] == 0).all(), j  # its whole noised block, both ways
    assert (np.delete(g_clean, members, axis=0) == 0).all()  # no loss off the block


def test_block_kv_cache_generation_equals_full_recomputation():
    from mmntp_jax.model.generate import generate_ids, left_pad

    n = 5
    vocab, model, table, rules, prompts = generation_setup(n, image_output="diffusion", diffusion_form="block", diffusion_steps=4)
    boi = vocab.special("<boi>")
    ids, seg, pos = left_pad(prompts)
    block, filled = rules.state_after(prompts)
    graph, params = nnx.split(model)
    for guidance in (None, 2.0):
        rows = ids if guidance is None else np.concatenate([ids, ids[:, ::-1] * 0 + np.array([[0, 0, 1, boi]])])
        segs = seg if guidance is None else np.concatenate([seg, np.array([[0, 0, 1, 1]] * 2)])
        poss = pos if guidance is None else np.concatenate([pos, np.array([[0, 0, 0, 1]] * 2)])
        out = np.asarray(generate_ids(graph, params, jnp.asarray(rows), jnp.asarray(segs), jnp.asarray(poss), jax.random.key(0), max_new_tokens=n + 2,
                                      temperature=0.0, rules=rules, block_B=jnp.asarray(block), filled_B=jnp.asarray(filled), guidance=guidance,
                                      image_first=True))
        assert (table[out[:2, :n], F] > 0).all() and (out[:2, n] == vocab.special("<eoi>")).all()
        # the same Euler steps over full forward passes of prompt + block
        x = np.zeros((len(rows), n, F), np.float32)
        for i in range(4):
            t = 1.0 - i / 4
            emb = jnp.concatenate([model.embed(jnp.asarray(rows)), model.image_head.block.embed(jnp.asarray(x), jnp.full((len(rows), n), t))], axis=1)
            positions = jnp.concatenate([jnp.asarray(poss), jnp.asarray(poss[:, -1:] + 1 + np.arange(n))], axis=1)
            segments = jnp.concatenate([jnp.asarray(segs), jnp.ones((len(rows), n), jnp.int32)], axis=1)
            groups = jnp.concatenate([jnp.zeros(rows.shape, jnp.int32), jnp.full((len(rows), n), rows.shape[1] + 1, jnp.int32)], axis=1)
            hidden = model.from_embeddings(emb, positions, segments, extra_groups_BT=groups)[:, -n:]
            v = np.asarray(model.image_head.block.velocity(hidden))
            if guidance is not None:
                v = np.concatenate([v[:2] + (guidance - 1) * (v[:2] - v[2:])] * 2)
            x = x - 0.25 * v
        want = np.asarray(co.nearest_code(jnp.asarray(x[:2].reshape(-1, F)), jnp.asarray(table))).reshape(2, n)
        np.testing.assert_array_equal(out[:2, :n], want)


def test_a_damaged_or_undecodable_tokenizer_is_a_one_line_error():
    from mmntp_jax.data.vocab import Vocab
    from mmntp_jax.model.continuous_input import code_latent_table
    from test_continuous_input import tiny_tokenizer

    vq = tiny_tokenizer("vq", codebook_size=32, dim=6)
    vq.params["quantize"]["embedding"][...] = vq.params["quantize"]["embedding"][...].at[7, 2].set(jnp.nan)
    with pytest.raises(ConfigError, match=r"code latents are not finite for 1 codes \(first: code 7\)"):
        code_latent_table(vq, Vocab.build(text=256, image=32), 400)
    rvq = tiny_tokenizer("rvq", codebook_size=16, dim=4, num_quantizers=2)
    with pytest.raises(ConfigError, match=r"model.image_output=regression\|diffusion: the image tokenizer's quantizer is 'rvq'"):
        code_latent_table(rvq, Vocab.build(text=256, image=32), 400)


def test_block_noise_and_loss_equal_numpy():
    from mmntp_jax.model.diffusion_block import noise_blocks

    model = head_model("diffusion", diffusion_form="block")
    inputs, loss_mask = block_batch()
    noised = noise_blocks(model.image_head.table(), inputs, loss_mask, jax.random.key(4))
    x0 = random_table()[np.asarray(inputs[0]), :F]
    on = np.asarray(noised.member_BT[0]) > 0
    t = np.asarray(noised.t_BT[0])[:, None]
    eps = np.asarray(noised.velocity_BTF[0]) + x0  # v = ε − x0
    np.testing.assert_allclose(np.asarray(noised.x_t_BTF[0])[on], ((1 - t) * x0 + t * eps)[on], rtol=1e-5, atol=1e-6)
    assert 0.6 < eps[on].std() < 1.5 and (np.asarray(noised.x_t_BTF[0])[~on] == 0).all()
    hidden = np.random.default_rng(9).normal(size=(1, inputs.shape[1], BASE.d_model)).astype(np.float32)
    block = model.image_head.block
    v_hat = hidden[0].astype(np.float64) @ np.asarray(block.out_kernel[...], np.float64) + np.asarray(block.out_bias[...], np.float64)
    want = np.where(on, np.mean((v_hat - (eps - x0)) ** 2, axis=-1), 0.0)
    np.testing.assert_allclose(np.asarray(block.losses(jnp.asarray(hidden), noised)[0][0]), want, rtol=1e-4, atol=1e-6)
