"""The grain pipeline: exact resume, per-process sharding, mixtures, worker-count independence."""

import dataclasses
import json

import numpy as np
import pytest
from data_standins import PARAMS, InlineScale, PatchMeanTokenizer, write_manifest

from mmntp_jax.config import ConfigError, load_config
from mmntp_jax.data.pipeline import make_dataset, make_documents
from mmntp_jax.data.prepare import PrepareOptions, prepare
from mmntp_jax.data.shards import ShardSet
from mmntp_jax.data.sources import shards_source
from mmntp_jax.data.tokenize import ModalityEncoder

EXPERIMENT = "experiments/text_stdlib.py"


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    write_manifest(folder, n_docs=60)
    encoders = {"image": ModalityEncoder(PatchMeanTokenizer(), PARAMS, preprocess=InlineScale(), batch_size=8)}
    prepare(folder / "m.jsonl", folder / "out", PrepareOptions(docs_per_shard=16, seq_len=32, progress=False), encoders)
    return folder / "out"


def shards_config(path, **data):
    base = load_config(EXPERIMENT)
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, vocab_size=288),
        data=dataclasses.replace(base.data, **{"source": "shards", "path": str(path), "eval_fraction": 0.2, "read_threads": 0, **data}),
        train=dataclasses.replace(base.train, seq_len=32, batch_size=4, seed=3),
    )


def same_batches(a, b):
    return len(a) == len(b) and all(set(x) == set(y) and all((x[k] == y[k]).all() for k in x) for x, y in zip(a, b))


def take(it, n):
    return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def test_resume_mid_epoch_gives_the_next_100_batches_exactly(shards_dir):
    config = shards_config(shards_dir)
    vocab, ds = make_dataset(config, "train")
    assert vocab.size == 288
    it = iter(ds)
    take(it, 29)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = take(it, 100)
    tokens_per_epoch = sum(len(d["tokens"]) - 1 for d in make_documents(config, "train")[1][:48])
    assert 100 * 4 * 32 > 2 * tokens_per_epoch, "the 100 batches should cross epoch boundaries"
    resumed = iter(make_dataset(config, "train")[1])
    resumed.set_state(state)
    assert same_batches(take(resumed, 100), expected)
    fresh = iter(make_dataset(config, "train")[1])
    take(fresh, 29)
    assert same_batches(take(fresh, 3), expected[:3]), "same config and seed → same batches"


def doc_tokens_from_rows(batches):
    """Each segment of a row is one whole document here (all shorter than T)."""
    docs = []
    for batch in batches:
        for r in range(batch["inputs"].shape[0]):
            seg = batch["segment_ids"][r]
            for s in range(1, seg.max() + 1):
                idx = np.flatnonzero(seg == s)
                docs.append(tuple(batch["inputs"][r, idx]) + (batch["targets"][r, idx[-1]],))
    return docs


def test_two_processes_read_disjoint_documents_that_cover_the_data(shards_dir):
    config = shards_config(shards_dir, eval_fraction=0.5)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seq_len=128))
    everything = {tuple(d["tokens"]) for d in make_documents(config, "eval")[1]}
    per_process = []
    for p in range(2):
        batches = list(make_dataset(config, "eval", process_index=p, process_count=2, batch_size=1)[1])
        per_process.append(doc_tokens_from_rows(batches))
    a, b = (set(x) for x in per_process)
    assert len(per_process[0]) == len(a) and len(per_process[1]) == len(b), "no document twice"
    assert not a & b and a | b == everything and len(everything) > 20
    # training streams: the shuffled epoch stream, split between the processes
    n = len(shards_source(config, "train")[1])
    single = make_documents(config, "train")[1]
    train = [make_documents(config, "train", process_index=p, process_count=2)[1] for p in range(2)]
    first_epochs = [tuple(single[i]["tokens"]) for i in range(2 * n)]
    split = [tuple(train[i % 2][i // 2]["tokens"]) for i in range(2 * n)]
    assert split == first_epochs and set(first_epochs[:n]) == set(first_epochs[n:]) and len(set(first_epochs[:n])) == n
    assert first_epochs[:n] != first_epochs[n:], "each epoch is shuffled afresh"

def test_mixture_follows_weights_and_shares_a_vocab(shards_dir):
    config = shards_config(shards_dir, source="mixture", mixture=(("stdlib", 0.7), ("shards", 0.3, str(shards_dir))))
    vocab, docs = make_documents(config, "train")
    assert vocab == ShardSet(shards_dir).vocab  # extends the stdlib byte vocab
    from_shards = sum(bool((docs[i]["modality"] > 0).any() or docs[i]["loss"][1] == 0) for i in range(1000))
    assert abs(from_shards / 1000 - 0.3) < 0.02
    batch = next(iter(make_dataset(config, "train")[1]))
    assert batch["inputs"].shape == (4, 32) and batch["inputs"].max() < vocab.size
    bad = shards_config(shards_dir, source="mixture", mixture=(("stdlib", 0.0),))
    with pytest.raises(ConfigError, match=r"data.mixture\[0\]: weight must be > 0"):
        make_dataset(bad, "train")


def test_output_does_not_depend_on_the_number_of_reading_workers(shards_dir):
    config = shards_config(shards_dir)
    serial = take(iter(make_dataset(config, "train")[1]), 30)
    ds = make_dataset(shards_config(shards_dir, num_workers=2), "train")[1]
    it = iter(ds)
    try:
        parallel = take(it, 30)
    finally:
        it.close()
    assert same_batches(serial, parallel)


def test_stdlib_source_still_feeds_the_default_job():
    config = load_config(EXPERIMENT)
    vocab, ds = make_dataset(config, "train", batch_size=2)
    batch = next(iter(ds))
    assert batch["inputs"].shape == (2, config.train.seq_len) and vocab.size == 272
    assert batch["inputs"].max() < 272 and (batch["segment_ids"] > 0).mean() > 0.99


def test_configuration_errors_are_clear(shards_dir, tmp_path):
    small = dataclasses.replace(shards_config(shards_dir), model=dataclasses.replace(load_config(EXPERIMENT).model, vocab_size=272))
    with pytest.raises(ConfigError, match="model.vocab_size=272 does not cover the vocabulary of 288 ids"):
        make_dataset(small, "train")
    with pytest.raises(ConfigError, match="needs data.path"):
        make_dataset(shards_config(""), "train")
    short = shards_config(shards_dir)
    short = dataclasses.replace(short, train=dataclasses.replace(short.train, seq_len=5))
    with pytest.raises(ConfigError, match="blocks of 6 tokens, longer than train.seq_len=5"):
        make_dataset(short, "train")
    with pytest.raises(FileNotFoundError, match="dataset.json: not found"):
        make_dataset(shards_config(tmp_path), "train")
