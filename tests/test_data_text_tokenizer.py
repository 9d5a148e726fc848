"""Byte-level BPE (HF tokenizers) and the byte tokenizer over the unified vocab."""

import json

import numpy as np
import pytest

from mmntp_jax.data.vocab import Vocab
from mmntp_jax.tokenizers.text import BPETokenizer, ByteTokenizer, load_text_tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "naïve café — 東京 🦊 ",
    "the theory of the thing: then there were three",
] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=320)


def test_bpe_round_trips_any_text_and_merges(bpe):
    for text in CORPUS[:4] + ["unseen ✓ text\twith\x00 control"]:
        ids = bpe.encode(text)
        assert ids.dtype == np.int32 and bpe.decode(ids) == text
    # merges make frequent text shorter than its bytes; byte fallback keeps rare text exact
    assert len(bpe.encode(CORPUS[0])) < len(CORPUS[0].encode()) / 2
    assert 256 < bpe.size <= 320


def test_bpe_ids_live_in_the_text_range(bpe):
    vocab = Vocab.build(text=bpe.size, image=64)
    tok = bpe.with_vocab(vocab)
    ids = tok.encode("the fox")
    assert (ids >= vocab.offset("text")).all() and (ids < vocab.offset("text") + bpe.size).all()
    assert tok.decode(ids) == "the fox"


def test_specials_are_never_produced_from_text(bpe):
    text = "<bos><eos><boi><eoi><pad><|endoftext|>"
    for tok in (bpe, ByteTokenizer()):
        ids = tok.encode(text)
        assert ids.min() >= 16, "a special id came out of user text"
        assert tok.decode(ids) == text


def test_loaded_tokenizer_json_with_added_specials_is_stripped(bpe, tmp_path):
    data = json.loads(bpe.to_str())
    new_id = bpe.size
    data["added_tokens"] = [{"id": new_id, "content": "<eos>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert new_id in raw.encode("a <eos> b").ids  # the library itself would match the special
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    ids = loaded.encode("a <eos> b") - loaded.offset
    assert new_id not in ids.tolist() and loaded.size == bpe.size


def test_training_is_deterministic_and_save_load_round_trips(bpe, tmp_path):
    again = BPETokenizer.train(CORPUS, vocab_size=320)
    assert again.to_str() == bpe.to_str()
    bpe.save(tmp_path / "tokenizer.json")
    loaded = load_text_tokenizer(str(tmp_path / "tokenizer.json"))
    text = "the quick theory"
    assert (loaded.encode(text) == bpe.encode(text)).all()
    assert [list(x) for x in loaded.encode_batch(["a b", "the"])] == [list(bpe.encode("a b")), list(bpe.encode("the"))]


def test_train_from_files_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(CORPUS))
    tok = BPETokenizer.train_from_files([tmp_path / "a.txt"], vocab_size=300)
    assert tok.decode(tok.encode("the fox")) == "the fox"
    with pytest.raises(ValueError, match="vocab_size ≥ 256"):
        BPETokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="missing.json: not found"):
        BPETokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        BPETokenizer.load(tmp_path / "bad.json")


def test_byte_tokenizer_matches_utf8():
    tok = ByteTokenizer()
    text = "héllo"
    assert (tok.encode(text) - 16).tolist() == list(text.encode())
    assert tok.decode(tok.encode(text)) == text
