"""Packing invariants on random multimodal documents (hypothesis), chunking, BFD."""

import json
from collections import Counter

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmntp_jax.data.packing import BlockTooLongError, best_fit_decreasing, block_spans, blocks_cut, chunk_spans
from mmntp_jax.data.pack_iter import WindowPackIterDataset

MARKERS = {1: (3, 4), 2: (5, 6), 3: (7, 8)}  # modality id → (begin, end) ids


@st.composite
def corpora(draw):
    """Random documents: text runs and blocks of 1 … max_block codes, random loss flags."""
    max_block = draw(st.integers(1, 12))
    seq_len = draw(st.integers(max_block + 2, 40))
    counter = [16]
    docs = []
    for _ in range(draw(st.integers(1, 14))):
        tokens, modality, loss = [1], [0], [0]
        for _ in range(draw(st.integers(0, 6))):
            trained = draw(st.booleans())
            kind = draw(st.sampled_from([0, 0, 1, 2, 3]))
            if kind == 0:
                n = draw(st.integers(0, 30))
                body, mod = list(range(counter[0], counter[0] + n)), [0] * n
            else:
                n = draw(st.integers(1, max_block))
                begin, end = MARKERS[kind]
                body, mod = [begin, *range(counter[0], counter[0] + n), end], [kind] * (n + 2)
            counter[0] += n
            tokens += body
            modality += mod
            loss += [int(trained)] * len(body)
        tokens.append(2)
        modality.append(0)
        loss.append(1)
        docs.append({"tokens": np.array(tokens, np.int32), "modality": np.array(modality, np.uint8), "loss": np.array(loss, np.uint8)})
    window = draw(st.integers(1, 5))
    carry = draw(st.integers(0, window - 1))
    return docs, seq_len, window, carry, draw(st.integers(0, 3))


def pack_all(docs, seq_len, window, carry, seed=0):
    ds = WindowPackIterDataset(grain.MapDataset.source(docs), seq_len, window_rows=window, carry_rows=carry, seed=seed)
    return list(ds)


@settings(max_examples=120, deadline=None)
@given(corpora())
def test_packing_invariants(case):
    docs, T, window, carry, seed = case
    rows = pack_all(docs, T, window, carry, seed)
    # Pack again with each token's loss flag replaced by a unique code of (document, position):
    # packing depends only on tokens, so the rows line up and loss_mask names each target's origin.
    origin, coded = {}, []
    for d, doc in enumerate(docs):
        code = np.arange(len(doc["tokens"])) + 1 + len(origin)
        origin.update({int(c): (d, j) for j, c in enumerate(code)})
        coded.append({**doc, "loss": code})
    traced = pack_all(coded, T, window, carry, seed)
    assert len(traced) == len(rows)
    seen = Counter()
    where = {}  # (doc, j) → (row, segment)
    for r, row in enumerate(rows):
        assert all(row[k].shape == (T,) for k in row)
        assert row["loss_mask"].dtype == np.float32 and row["inputs"].dtype == np.int32
        seg = row["segment_ids"]
        used = int((seg > 0).sum())
        assert (seg[:used] > 0).all() and (seg[used:] == 0).all(), "padding only at the end of a row"
        assert used > 0
        # segment ids are 1, 2, … in contiguous runs
        starts = np.flatnonzero(np.diff(np.concatenate([[0], seg[:used]])) != 0)
        assert seg[starts].tolist() == list(range(1, len(starts) + 1))
        assert (np.diff(seg[:used]) >= 0).all()
        pad = seg == 0
        assert (row["loss_mask"][pad] == 0).all() and (row["inputs"][pad] == 0).all()
        assert (row["targets"][pad] == 0).all() and (row["positions"][pad] == 0).all() and (row["modality"][pad] == 0).all()
        bounds = list(starts) + [used]
        for s in range(len(starts)):
            a, b = bounds[s], bounds[s + 1]
            assert row["positions"][a:b].tolist() == list(range(b - a)), "positions restart at 0 per segment"
            assert (row["targets"][a : b - 1] == row["inputs"][a + 1 : b]).all()
            code = traced[r]["loss_mask"]
            first = origin[int(code[a])]
            for i in range(a, b):
                d, j = origin[int(code[i])]
                j -= 1  # the pair's input position
                assert (d, j + 1) == (first[0], first[1] + i - a), "a segment is one contiguous piece of one document"
                assert row["inputs"][i] == docs[d]["tokens"][j] and row["targets"][i] == docs[d]["tokens"][j + 1]
                seen[(d, j)] += 1
                where[(d, j)] = (r, s)
                assert row["loss_mask"][i] == docs[d]["loss"][j + 1]
                assert row["modality"][i] == docs[d]["modality"][j + 1]
    pairs = {(d, j) for d, doc in enumerate(docs) for j in range(len(doc["tokens"]) - 1)}
    assert set(seen) == pairs and max(seen.values()) == 1, "every pair exactly once"
    for d, doc in enumerate(docs):
        n = len(doc["tokens"])
        for b, e in block_spans(doc["tokens"]):
            homes = {where[(d, j)] for j in range(b, min(e, n - 2) + 1)}
            assert len(homes) == 1, f"block [{b}, {e}] of document {d} is split"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=0, max_size=60), st.integers(50, 80))
def test_best_fit_decreasing_matches_naive_reference(lengths, capacity):
    bins, fill = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(f <= capacity for f in fill) and fill == [sum(lengths[i] for i in b) for b in bins]
    # naive best-fit-decreasing: scan every bin for the tightest fit
    ref = []
    for size in sorted(lengths, reverse=True):
        fits = [k for k, f in enumerate(ref) if f + size <= capacity]
        if fits:
            k = min(fits, key=lambda k: capacity - ref[k])
            ref[k] += size
        else:
            ref.append(size)
    assert sorted(fill) == sorted(ref)


def test_chunks_cut_only_outside_blocks_and_long_blocks_fail():
    # <bos> t t <boi> c c c c <eoi> t t t <boa> c c <eoa> t <eos>
    tokens = np.array([1, 20, 21, 3, 30, 31, 32, 33, 4, 22, 23, 24, 5, 40, 41, 6, 25, 2])
    for T in range(6, 20):
        chunks = chunk_spans(tokens, T)
        assert sum(n for _, n in chunks) == len(tokens) - 1 and all(0 < n <= T for _, n in chunks)
        assert [s for s, _ in chunks] == sorted(s for s, _ in chunks) and blocks_cut(tokens, chunks) == 0
        for s, _ in chunks[1:]:
            assert not any(b < s <= e for b, e in block_spans(tokens))
    assert chunk_spans(tokens, 8) == [(0, 3), (3, 8), (11, 6)]  # cut before <boi> (3), then after <eoi> … before <boa>
    with pytest.raises(BlockTooLongError, match="document 7: a block of 6 tokens is longer than seq_len=5"):
        chunk_spans(tokens, 5, where="document 7")
    with pytest.raises(ValueError, match="malformed blocks"):
        block_spans([1, 3, 20, 2])
    # a naive split at T cuts the image block; the counter sees it
    assert blocks_cut(tokens, [(0, 6), (6, 11)]) == 1


def test_padding_is_small_on_log_normal_documents():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(100), 1.0, 3000).astype(int), 2, 4000)
    docs = [{"tokens": np.full(n, 20, np.int32), "modality": np.zeros(n, np.uint8), "loss": np.ones(n, np.uint8)} for n in lengths]
    rows = pack_all(docs, 512, window=64, carry=32)
    slots = len(rows) * 512
    assert int(sum((r["segment_ids"] > 0).sum() for r in rows)) == int((lengths - 1).sum())
    assert 1 - (lengths - 1).sum() / slots < 0.003


def test_window_packer_resumes_exactly_from_any_row():
    rng = np.random.default_rng(1)
    docs = []
    for n in rng.integers(2, 90, 200):
        docs.append({"tokens": rng.integers(16, 1000, n).astype(np.int32), "modality": np.zeros(n, np.uint8), "loss": np.ones(n, np.uint8)})
    ds = WindowPackIterDataset(grain.MapDataset.source(docs), 32, window_rows=6, carry_rows=3, seed=5)
    it = iter(ds)
    states, rows = [], []
    for row in it:
        rows.append(row)
        states.append(json.loads(json.dumps(it.get_state())))
    assert len(rows) > 30
    for k in (0, 1, 5, 6, 7, 17, len(rows) - 2):
        again = iter(ds)
        again.set_state(states[k])
        rest = list(again)
        assert len(rest) == len(rows) - k - 1
        assert all((a["inputs"] == b["inputs"]).all() and (a["segment_ids"] == b["segment_ids"]).all() for a, b in zip(rest, rows[k + 1 :]))
