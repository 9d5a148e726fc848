"""Registry of training data sources, selected by `data.source`.

A source turns a `Config` and a split ("train" or "eval") into the `Vocab` and a
grain `MapDataset` of tokenized documents (see `documents.py`).
"""

from __future__ import annotations

from typing import Callable

import grain

from mmntp_jax.data import stdlib
from mmntp_jax.data.documents import text_document
from mmntp_jax.data.markov import markov_source
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.tokenizers.text import ByteTokenizer


def stdlib_source(config, split: str):
    """Byte-level documents from the Python standard library's source files."""
    vocab = Vocab.build(text=256)
    tokenizer = ByteTokenizer(vocab)
    files = stdlib.split_files(split, config.data.eval_fraction)
    if not files:
        raise ValueError(f"data.source=stdlib: the {split} split is empty; adjust data.eval_fraction={config.data.eval_fraction}")

    def load(rel_path: str):
        return text_document(tokenizer.encode(stdlib.read_file(rel_path)), vocab)

    return vocab, grain.MapDataset.source(files).map(load)


SOURCES: dict[str, Callable] = {
    "stdlib": stdlib_source,
    "markov": markov_source,
}


def get_source(name: str) -> Callable:
    if name not in SOURCES:
        raise ValueError(f"data.source={name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name]
