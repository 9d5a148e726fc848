"""The Markov-chain source: its entropy rate against counts from samples, and its documents."""

import dataclasses

import numpy as np
import pytest

from mmntp_jax.config import Config, DataConfig, TrainConfig, validate
from mmntp_jax.data.markov import FIRST_SYMBOL, MarkovChain
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.data.sources import SOURCES

SMALL = MarkovChain(alphabet=4, order=2, branching=3, concentration=0.7, seed=3)


def _plug_in_conditional_entropy(x: np.ndarray, order: int, alphabet: int) -> float:
    """H(X_t | previous `order` symbols) from empirical counts."""
    ctx = np.zeros(len(x) - order, np.int64)
    for j in range(order):
        ctx = ctx * alphabet + x[j : len(x) - order + j]
    nxt = x[order:]
    counts = np.zeros((alphabet**order, alphabet))
    np.add.at(counts, (ctx, nxt), 1)
    p_ctx = counts.sum(1) / counts.sum()
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
    return float(np.dot(p_ctx, h))


def test_stationary_distribution_is_fixed_point():
    succ, probs = SMALL.transitions
    pi = SMALL.stationary
    moved = np.zeros_like(pi)
    for s in range(SMALL.n_contexts):
        for j in range(SMALL.branching):
            moved[(s * SMALL.alphabet + succ[s, j]) % SMALL.n_contexts] += pi[s] * probs[s, j]
    np.testing.assert_allclose(moved, pi, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0)


def test_entropy_rate_matches_counts_from_samples():
    x = np.concatenate([SMALL.sample(np.random.default_rng(i), 5000) for i in range(20)])
    estimate = _plug_in_conditional_entropy(x, SMALL.order, SMALL.alphabet)
    assert estimate == pytest.approx(SMALL.entropy_rate(), abs=0.01)
    # contexts visited with the stationary frequencies
    ctx = x[:-1] * SMALL.alphabet + x[1:]
    freq = np.bincount(ctx, minlength=SMALL.n_contexts) / len(ctx)
    np.testing.assert_allclose(freq, SMALL.stationary, atol=0.01)


def test_bayes_loss_on_trained_targets_is_the_entropy_rate():
    """Mean −log p of the true chain over the trained targets of source documents ≈ H."""
    from mmntp_jax.data.vocab import Vocab

    succ, probs = SMALL.transitions
    vocab = Vocab.build(text=256)
    nll, count = [], 0
    for i in range(400):
        doc = SMALL.document("train", i, 40, vocab)
        x = doc["tokens"][1:] - vocab.offset("text") - FIRST_SYMBOL
        trained = doc["loss"][1:].astype(bool)
        assert not trained[: SMALL.order].any() and trained[SMALL.order :].all()
        for t in np.flatnonzero(trained):
            s = x[t - 2] * SMALL.alphabet + x[t - 1]
            nll.append(-np.log(probs[s][list(succ[s]).index(x[t])]))
    nll = np.asarray(nll)
    assert nll.mean() == pytest.approx(SMALL.entropy_rate(), abs=3 * nll.std() / np.sqrt(len(nll)))


def test_bad_chain_parameters():
    with pytest.raises(ValueError, match="branching"):
        MarkovChain(alphabet=4, branching=5)
    with pytest.raises(ValueError, match="alphabet"):
        MarkovChain(alphabet=1)


def test_markov_source_rows_hold_one_document_each():
    assert "markov" in SOURCES
    config = Config(data=DataConfig(source="markov"), train=TrainConfig(seq_len=32, batch_size=4))
    validate(config)
    vocab, data = make_dataset(config, "train")
    batch = next(iter(data))
    assert batch["inputs"].shape == (4, 32)
    assert np.all(batch["segment_ids"] == 1) and np.all(batch["positions"][:, 0] == 0)
    assert np.all(batch["inputs"][:, 0] == vocab.bos_id)
    assert np.all(batch["loss_mask"][:, 0] == 0) and np.all(batch["loss_mask"][:, 1:] == 1)  # order-1 default chain
    symbols = batch["targets"] - vocab.offset("text") - FIRST_SYMBOL
    assert symbols.min() >= 0 and symbols.max() < 256
    again = next(iter(make_dataset(config, "train")[1]))
    np.testing.assert_array_equal(batch["targets"], again["targets"])
    eval_batch = next(iter(make_dataset(dataclasses.replace(config), "eval")[1]))
    assert not np.array_equal(eval_batch["targets"], batch["targets"])
