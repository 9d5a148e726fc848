"""Losses per modality: loss weights, the modality-restricted softmax and the per-modality metrics,
each against a dense numpy reference (values and gradients).

Dimensions: B batch, T time, D model dim, V vocab (of the head, ≥ the Vocab's size), M modalities.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.config import ConfigError, MeshConfig, apply_overrides, load_config, to_json, validate
from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.packing import write_row
from mmntp_jax.data.vocab import MODALITIES, Vocab
from mmntp_jax.model.heads import fused_cross_entropy, token_losses, token_stats
from mmntp_jax.model.legal_ids import LegalIds
from mmntp_jax.sharding import make_mesh
from mmntp_jax.train.step import StepBuilder, _sums, modality_weights, summarize, token_weights
from tiny import tiny_config

VOCAB = Vocab.build(text=20, image=12, audio=8)  # 16 specials + 40 ids
V, T, D, CHUNK, Z = 64, 24, 8, 6, 1e-2  # V > VOCAB.size: ids past the vocab exist in the head
WEIGHTS_M = (1.0, 0.5, 2.0, 1.0)


def _row(rng, n_docs):
    docs = []
    for _ in range(n_docs):
        text = lambda n: VOCAB.to_global("text", rng.integers(0, 20, n))
        parts = [("text", text(2), True), ("image", VOCAB.to_global("image", rng.integers(0, 12, 3)), True),
                 ("text", text(1), bool(rng.integers(0, 2))), ("audio", VOCAB.to_global("audio", rng.integers(0, 8, 2)), True)]
        docs.append(assemble_document(parts[: 3 + len(docs)], VOCAB))
    return write_row([(k, 0, len(d["tokens"]) - 1) for k, d in enumerate(docs)], docs, T)


def make_batch(b=2, seed=0):
    """Rows of two packed documents, <bos> text <boi> codes <eoi> text [<boa> codes <eoa>] <eos>, then padding."""
    rng = np.random.default_rng(seed)
    rows = [_row(rng, 2) for _ in range(b)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def reference_support(target: int) -> np.ndarray:
    """[V] bool: the ids the restricted softmax of a position with this target may put mass on."""
    text = set(range(VOCAB.offset("text"), VOCAB.offset("text") + 20))
    media = {m: set(range(VOCAB.offset(m), VOCAB.offset(m) + VOCAB.range_size(m))) for m in ("image", "audio")}
    text_context = text | {VOCAB.eos_id} | {VOCAB.markers(m)[0] for m in media}
    allowed = set(range(V))
    if target in text_context:
        allowed = text_context
    for m, ids in media.items():
        if target in ids | {VOCAB.markers(m)[1]}:
            allowed = ids | {VOCAB.markers(m)[1]}
    return np.isin(np.arange(V), sorted(allowed))


def reference(h, w, y, weights, restricted: bool):
    """Dense float64: per-token loss/lse/correct and Σ w·loss + z·Σ w·lse² with its gradients."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    logits = np.einsum("btd,dv->btv", h, w)
    if restricted:
        support = np.stack([np.stack([reference_support(int(t)) for t in row]) for row in y])
        logits = np.where(support, logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    loss = lse - np.take_along_axis(logits, y[..., None], -1)[..., 0]
    total = np.sum(weights * loss) + Z * np.sum(weights * lse**2)
    probs = np.exp(logits - lse[..., None])
    dlogits = weights[..., None] * (probs * (1 + 2 * Z * lse)[..., None] - np.eye(V)[y])
    correct = (logits.argmax(-1) == y).astype(np.float64)
    return {"loss": loss, "lse": lse, "correct": correct, "total": total,
            "dh": np.einsum("btv,dv->btd", dlogits, w), "dw": np.einsum("btd,btv->dv", h, dlogits)}


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1)
    batch = make_batch()
    h = jnp.asarray(rng.normal(size=(2, T, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(D, V)) * 0.7, jnp.float32)
    weights = np.asarray(token_weights(batch, WEIGHTS_M))
    return batch, h, w, weights


def test_batch_covers_every_support_class(case):
    batch = case[0]
    y, mask = batch["targets"], batch["loss_mask"]
    eoi, eoa, boi = VOCAB.markers("image")[1], VOCAB.markers("audio")[1], VOCAB.markers("image")[0]
    assert {VOCAB.eos_id, boi, eoi, eoa} <= set(y[mask > 0].tolist())
    assert (y[mask == 0] == 0).any()  # padding: <pad> targets, full support
    assert set(np.unique(batch["modality"][mask > 0])) == {0, 1, 2}


def test_legal_ids_per_token_equal_the_reference_support(case):
    y = case[0]["targets"]
    lo, hi, specials = (np.asarray(x) for x in LegalIds.from_vocab(VOCAB).per_token(jnp.asarray(y)))
    ids = np.arange(V)
    got = ((ids >= lo[..., None]) & (ids < hi[..., None])) | (ids[None, None, :, None] == specials[..., None, :]).any(-1)
    want = np.stack([np.stack([reference_support(int(t)) for t in row]) for row in y])
    np.testing.assert_array_equal(got, want)
    assert got[np.arange(2)[:, None], np.arange(T)[None], y].all()  # the target is always legal


@pytest.mark.parametrize("restricted", [False, True], ids=["full", "restricted"])
def test_fused_loss_value_and_gradient_equal_dense_reference(case, restricted):
    batch, h, w, weights = case
    y = jnp.asarray(batch["targets"])
    legal = LegalIds.from_vocab(VOCAB).per_token(y) if restricted else None
    ref = reference(h, w, batch["targets"], weights, restricted)
    fused = lambda h, w: fused_cross_entropy(h, w, y, jnp.asarray(weights), Z, CHUNK, legal)
    (total, stats), grads = fused(h, w), jax.grad(lambda h, w: fused(h, w)[0], argnums=(0, 1))(h, w)
    suffix = "_restricted" if restricted else ""
    np.testing.assert_allclose(total, ref["total"], rtol=1e-5)
    np.testing.assert_allclose(stats[f"loss{suffix}"], ref["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats[f"lse{suffix}"], ref["lse"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats[f"correct{suffix}"], ref["correct"])
    np.testing.assert_allclose(grads[0], ref["dh"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1], ref["dw"], rtol=1e-4, atol=1e-5)
    full = reference(h, w, batch["targets"], weights, False)
    np.testing.assert_allclose(stats["loss"], full["loss"], rtol=1e-5, atol=1e-5)  # full-softmax stats always
    np.testing.assert_array_equal(stats["correct"], full["correct"])


@pytest.mark.parametrize("chunk", [0, CHUNK])
@pytest.mark.parametrize("restricted", [False, True], ids=["full", "restricted"])
def test_token_losses_value_and_gradient_equal_dense_reference(case, restricted, chunk):
    batch, h, w, weights = case
    y = jnp.asarray(batch["targets"])
    legal = LegalIds.from_vocab(VOCAB).per_token(y) if restricted else None
    ref = reference(h, w, batch["targets"], weights, restricted)

    def objective(h, w):
        loss, lse = token_losses(h, w, y, chunk, legal)
        return jnp.sum(weights * loss) + Z * jnp.sum(weights * lse**2)

    np.testing.assert_allclose(objective(h, w), ref["total"], rtol=1e-5)
    dh, dw = jax.grad(objective, argnums=(0, 1))(h, w)
    np.testing.assert_allclose(dh, ref["dh"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, ref["dw"], rtol=1e-4, atol=1e-5)


def test_restriction_changes_the_loss_only_where_the_softmax_leaves_ids_out(case):
    batch, h, w, weights = case
    y = jnp.asarray(batch["targets"])
    stats = token_stats(h, w, y, CHUNK, LegalIds.from_vocab(VOCAB).per_token(y))
    assert (np.asarray(stats["loss_restricted"]) <= np.asarray(stats["loss"]) + 1e-6).all()
    pad = batch["targets"] == 0  # full support: the restricted softmax is the full one
    np.testing.assert_allclose(np.asarray(stats["loss_restricted"])[pad], np.asarray(stats["loss"])[pad], rtol=1e-6)


@pytest.mark.parametrize("restricted", [False, True], ids=["full", "restricted"])
def test_per_modality_loss_accuracy_and_bits_equal_numpy(case, restricted):
    batch, h, w, weights = case
    y = jnp.asarray(batch["targets"])
    legal = LegalIds.from_vocab(VOCAB).per_token(y) if restricted else None
    metrics = summarize(_sums(token_stats(h, w, y, CHUNK, legal), batch, jnp.asarray(weights)))
    mask = batch["loss_mask"] > 0
    trained = reference(h, w, batch["targets"], weights, restricted)
    np.testing.assert_allclose(metrics["loss"], np.sum(weights * trained["loss"]) / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["z_loss"], np.sum(weights * trained["lse"] ** 2) / weights.sum(), rtol=1e-5)
    assert float(metrics["tokens"]) == mask.sum()
    for suffix, ref in [("", reference(h, w, batch["targets"], weights, False))] + ([("_restricted", trained)] if restricted else []):
        for m, name in enumerate(MODALITIES):
            sel = mask & (batch["modality"] == m)
            if not sel.any():
                assert np.isnan(metrics[f"loss{suffix}/{name}"]) and np.isnan(metrics[f"accuracy{suffix}/{name}"])
                continue
            np.testing.assert_allclose(metrics[f"loss{suffix}/{name}"], ref["loss"][sel].mean(), rtol=1e-5)
            np.testing.assert_allclose(metrics[f"accuracy{suffix}/{name}"], ref["correct"][sel].mean(), rtol=1e-6)
            np.testing.assert_allclose(metrics[f"bits_per_token{suffix}/{name}"], ref["loss"][sel].mean() / math.log(2), rtol=1e-5)
    assert ("loss_restricted/text" in metrics) == restricted


# -- config ---------------------------------------------------------------------


def test_loss_weights_override_parses_and_round_trips_through_config_json(tmp_path):
    config = load_config(None, ["train.loss_weights=text:1,image:0.5", "train.modality_softmax=true"])
    assert config.train.loss_weights == (("text", 1.0), ("image", 0.5)) and config.train.modality_softmax
    assert modality_weights(config.train.loss_weights) == (1.0, 0.5, 1.0, 1.0)
    (tmp_path / "config.json").write_text(to_json(config))
    assert load_config(tmp_path / "config.json") == config
    assert json.loads(to_json(config))["train"]["loss_weights"] == [["text", 1.0], ["image", 0.5]]
    assert apply_overrides(config, ['train.loss_weights={"audio": 2}']).train.loss_weights == (("audio", 2.0),)


@pytest.mark.parametrize("value, message", [
    ("imag:1", "unknown modality 'imag'; valid modalities: text, image, audio, video"),
    ("image:-0.5", "weight of 'image' must be a finite number ≥ 0, got -0.5"),
    ("image:inf", "weight of 'image' must be a finite number ≥ 0"),
    ("image", "cannot parse 'image' as modality:weight pairs, e.g. text:1,image:0.5"),
    ("image:x", "cannot parse 'image:x' as modality:weight pairs"),
    ("image:1,image:2", "modality 'image' is given twice"),
])
def test_bad_loss_weights_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError) as err:
        validate(apply_overrides(tiny_config(), [f"train.loss_weights={value}"]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("config key 'train.loss_weights'")


# -- the train step ---------------------------------------------------------------


def _builder(**train):
    model = dict(vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
    config = tiny_config(model=model, train=dict(seq_len=T, batch_size=4, **train))
    return StepBuilder(config, make_mesh(MeshConfig(data=1), jax.devices()[:1]), VOCAB)


@pytest.fixture(scope="module")
def params():
    return _builder().init_state(0).params


def test_zero_image_weight_removes_image_targets_from_the_gradient(params):
    batch = make_batch(4, seed=2)
    no_image_mask = dict(batch, loss_mask=np.where(batch["modality"] == 1, 0.0, batch["loss_mask"]).astype(np.float32))
    weighted, plain = jax.jit(_builder(loss_weights=(("text", 1.0), ("image", 0.0)))._grads), jax.jit(_builder()._grads)
    as_jax = lambda b: jax.tree.map(jnp.asarray, b)
    (g_weighted, sums_weighted), (g_masked, sums_masked) = weighted(params, as_jax(batch)), plain(params, as_jax(no_image_mask))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), g_weighted, g_masked)
    np.testing.assert_allclose(summarize(sums_weighted)["loss"], summarize(sums_masked)["loss"], rtol=1e-6)
    g_all, _ = plain(params, as_jax(batch))  # image targets do contribute at weight 1
    assert not np.allclose(g_all["lm_head"], g_weighted["lm_head"])
    assert np.isfinite(summarize(sums_weighted)["loss/image"])  # still measured under weight 0


def test_modality_softmax_step_fused_equals_autodiff_and_reports_both_softmaxes(params):
    batch = jax.tree.map(jnp.asarray, make_batch(4, seed=3))
    builder = _builder(modality_softmax=True, loss_chunk=CHUNK, loss_weights=(("audio", 2.0),))
    fused, sums = jax.jit(builder._grads)(params, batch)
    builder.fused_loss = False
    autodiff, _ = jax.jit(builder._grads)(params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), fused, autodiff)
    metrics = summarize(sums)
    for name in ("text", "image", "audio"):
        for key in ("loss", "accuracy", "bits_per_token", "loss_restricted", "accuracy_restricted", "bits_per_token_restricted"):
            assert np.isfinite(metrics[f"{key}/{name}"]), f"{key}/{name}"
        assert metrics[f"loss_restricted/{name}"] <= metrics[f"loss/{name}"]
    assert np.isnan(metrics["loss/video"])


def test_eval_reports_non_finite_losses_with_a_warning():
    from mmntp_jax.train.backbone import evaluate

    model = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
    config = tiny_config(model=model, train=dict(eval_batches=1, batch_size=2, seq_len=32))
    builder = StepBuilder(config, make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    params = builder.init_state(0).params
    params = dict(params, lm_head=jnp.full_like(params["lm_head"], jnp.nan))
    with pytest.warns(RuntimeWarning, match="eval: loss is nan"):
        metrics = evaluate(builder, params, config, builder.mesh)
    assert np.isnan(metrics["loss"]) and np.isnan(metrics["loss/text"]) and np.isnan(metrics["bits_per_token/text"])
    assert "loss/image" not in metrics  # no image targets in the stdlib text: nothing to report
    assert metrics["tokens"] > 0
