"""A generated text source with a known entropy rate: a random sparse order-k Markov chain.

The chain (fixed by `MarkovChain`'s fields, deterministic): an alphabet of A
symbols written as the bytes 0, 1, …, A-1; a context is the last k symbols
(A^k contexts); each context allows `branching` successors, drawn without
replacement, with probabilities from a symmetric Dirichlet(`concentration`).
The source's chain (`DEFAULT_CHAIN`) is order 1 over all 256 bytes with 16
successors each: a model needs no attention to reach the floor, only capacity
and data, so small models trained briefly already show both.

A document is `<bos> x_1 … x_n` with n = `train.seq_len`, so one document fills
one packed row exactly. x_1…x_k are drawn from the stationary distribution π of
contexts and are not trained on (loss flag 0); x_{k+1}… follow the chain. So the
least expected loss per trained token, for any model, is the entropy rate
    H = Σ_s π(s) · H(P(·|s))   (nats per token).
Document i of a split comes from numpy's generator seeded (seed, split, i).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grain
import numpy as np

from mmntp_jax.data.documents import text_document
from mmntp_jax.data.vocab import Vocab

SPLITS = {"train": 0, "eval": 1}
TRAIN_DOCUMENTS = 1 << 22  # far more than any run here reads
EVAL_DOCUMENTS = 512
FIRST_SYMBOL = 0


def _entropy(p: np.ndarray, axis=-1) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


@dataclass(frozen=True)
class MarkovChain:
    """A random sparse order-k chain; all arrays derive deterministically from the fields."""

    alphabet: int = 16
    order: int = 3
    branching: int = 4
    concentration: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.alphabet <= 256 - FIRST_SYMBOL:
            raise ValueError(f"MarkovChain.alphabet must be in [2, {256 - FIRST_SYMBOL}], got {self.alphabet}")
        if self.order < 1 or self.alphabet**self.order > 1 << 20:
            raise ValueError(f"MarkovChain.order must be ≥ 1 with alphabet^order ≤ 2^20, got order {self.order}")
        if not 1 <= self.branching <= self.alphabet:
            raise ValueError(f"MarkovChain.branching must be in [1, alphabet={self.alphabet}], got {self.branching}")
        if self.concentration <= 0:
            raise ValueError(f"MarkovChain.concentration must be > 0, got {self.concentration}")

    @property
    def n_contexts(self) -> int:
        return self.alphabet**self.order

    @functools.cached_property
    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """(successor symbols [S, b], probabilities [S, b]) per context S."""
        rng = np.random.default_rng([self.seed, 7919])
        succ = np.stack([rng.choice(self.alphabet, self.branching, replace=False) for _ in range(self.n_contexts)])
        probs = rng.dirichlet(np.full(self.branching, self.concentration), size=self.n_contexts)
        return succ.astype(np.int64), probs

    def next_context(self, context: np.ndarray, symbol: np.ndarray) -> np.ndarray:
        return (context * self.alphabet + symbol) % self.n_contexts

    @functools.cached_property
    def stationary(self) -> np.ndarray:
        """π over contexts: the lazy chain (π + πP)/2 iterated from uniform to 1e-13."""
        succ, probs = self.transitions
        src = np.repeat(np.arange(self.n_contexts), self.branching)
        dst = self.next_context(src, succ.reshape(-1))
        pi = np.full(self.n_contexts, 1.0 / self.n_contexts)
        for _ in range(100_000):
            new = 0.5 * pi + 0.5 * np.bincount(dst, weights=pi[src] * probs.reshape(-1), minlength=self.n_contexts)
            if np.abs(new - pi).sum() < 1e-13:
                return new / new.sum()
            pi = new
        raise RuntimeError("MarkovChain.stationary did not converge")

    def entropy_rate(self) -> float:
        """H = Σ_s π(s) H(P(·|s)) in nats per symbol."""
        return float(np.dot(self.stationary, _entropy(self.transitions[1])))

    @functools.cached_property
    def _lookup(self) -> tuple[list, list]:
        """Per context: successor symbols and cumulative probabilities, as lists (fast scalar sampling)."""
        succ, probs = self.transitions
        cum = np.cumsum(probs, axis=1)
        cum[:, -1] = 1.0
        return succ.tolist(), cum.tolist()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n symbols of the stationary process."""
        succ, cum = self._lookup
        context = int(rng.choice(self.n_contexts, p=self.stationary))
        n_out = max(n, self.order)
        out = [(context // self.alphabet ** (self.order - 1 - j)) % self.alphabet for j in range(self.order)]
        a, s = self.alphabet, self.n_contexts
        for u in rng.random(n_out - self.order).tolist():
            row, pick = cum[context], 0
            while row[pick] <= u:
                pick += 1
            symbol = succ[context][pick]
            out.append(symbol)
            context = (context * a + symbol) % s
        return np.asarray(out[:n], np.int64)

    def document(self, split: str, index: int, n: int, vocab: Vocab) -> dict:
        rng = np.random.default_rng([self.seed, SPLITS[split], index])
        ids = vocab.to_global("text", self.sample(rng, n) + FIRST_SYMBOL)
        doc = text_document(ids, vocab, add_eos=False)
        doc["loss"][1 : self.order + 1] = 0  # x_1…x_k: no context to predict them from
        return doc


DEFAULT_CHAIN = MarkovChain(alphabet=256, order=1, branching=16, concentration=1.0, seed=0)


def markov_source(config, split: str, chain: MarkovChain = DEFAULT_CHAIN):
    """`data.source=markov`: documents of `DEFAULT_CHAIN`, one per packed row."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    vocab = Vocab.build(text=256)
    n = config.train.seq_len
    count = TRAIN_DOCUMENTS if split == "train" else EVAL_DOCUMENTS
    return vocab, grain.MapDataset.range(count).map(lambda i: chain.document(split, int(i), n, vocab))
