"""The stdlib source cut into pieces: every byte kept once, pieces bounded, config checked."""

import dataclasses

import numpy as np
import pytest

from mmntp_jax.config import ConfigError, validate
from mmntp_jax.data import stdlib
from mmntp_jax.data.sources import stdlib_source
from tests.tiny import tiny_config


def test_pieces_cover_every_byte_once():
    files = stdlib.split_files("eval", 0.02)[:40]
    pieces = stdlib.file_pieces(files, 512)
    for rel in files:
        own = [(a, b) for r, a, b in pieces if r == rel]
        data = stdlib.read_file(rel)
        assert b"".join(data[a:b] for a, b in own) == data
        assert all(0 < b - a <= 512 for a, b in own)
        # cuts fall after a line end wherever one lies in the piece's second half
        for a, b in own[:-1]:
            if b"\n" in data[a + 256:a + 512]:
                assert data[b - 1:b] == b"\n"


def test_source_yields_pieces_as_documents():
    config = tiny_config()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, source="stdlib", piece_bytes=300))
    vocab, docs = stdlib_source(config, "eval")
    files = stdlib.split_files("eval", config.data.eval_fraction)
    total = sum(len(stdlib.read_file(f)) for f in files)
    lengths = np.array([len(docs[i]["tokens"]) - 2 for i in range(len(docs))])  # minus <bos>, <eos>
    assert lengths.max() <= 300 and lengths.sum() == total


def test_piece_bytes_needs_stdlib():
    config = tiny_config()
    with pytest.raises(ConfigError, match="data.piece_bytes"):
        validate(dataclasses.replace(config, data=dataclasses.replace(config.data, source="markov", piece_bytes=100)))
    with pytest.raises(ConfigError, match="data.piece_bytes"):
        validate(dataclasses.replace(config, data=dataclasses.replace(config.data, piece_bytes=-1)))
