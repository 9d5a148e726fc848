"""Text tokenizers as Hugging Face `tokenizer.json` files whose ids are our unified ids.

A workdir's text tokenizer is `WORKDIR/tokenizers/text/tokenizer.json` when
that file exists (its ids are global ids of the unified vocabulary); otherwise
it is the byte tokenizer (one id per UTF-8 byte, text range of 256 ids).

`byte_tokenizer_json(vocab)` builds the byte tokenizer for the `tokenizers`
library: a byte-level BPE with no merges whose 256 byte symbols carry the ids
`offset(text) + byte`, so it encodes exactly as `ByteTokenizer`. Every special
token (`<pad>` … `<reserved_k>`) and every modality code (`<image_17>` is image
code 17) is declared as an added special token at its unified id, so
`decode(ids, skip_special_tokens=True)` returns only the text.

`shift_tokenizer_json(data, offset)` moves every id of a foreign (BPE,
WordPiece or WordLevel) tokenizer up by `offset`, which is how an imported
Llama's tokenizer takes its place after our specials.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from mmntp_jax.data.vocab import Vocab

TEXT_TOKENIZER_PATH = ("tokenizers", "text", "tokenizer.json")
DICT_VOCAB_MODELS = ("BPE", "WordPiece", "WordLevel")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (what the ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def token_names(vocab: Vocab) -> list[tuple[int, str]]:
    """(id, name) of every special token and every non-text code, e.g. (272, '<image_0>')."""
    named = list(enumerate(vocab.special_names()))
    for modality, size in vocab.ranges:
        if modality != "text":
            start = vocab.offset(modality)
            named += [(start + k, f"<{modality}_{k}>") for k in range(size)]
    return named


def _added(token_id: int, content: str) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}


def declare_tokens(data: dict, vocab: Vocab) -> dict:
    """Adds our specials and modality codes (model vocab + added special tokens) at their ids."""
    data = copy.deepcopy(data)
    model = data.get("model", {})
    if model.get("type") not in DICT_VOCAB_MODELS:
        raise ValueError(f"tokenizer model type {model.get('type')!r} is not supported; expected one of {', '.join(DICT_VOCAB_MODELS)}")
    table = model["vocab"]
    by_id = {i: t for t, i in table.items()}
    names = token_names(vocab)
    for token_id, name in names:
        if table.get(name, token_id) != token_id:
            raise ValueError(f"tokenizer already has {name!r} at id {table[name]}, but the vocab puts it at {token_id}")
        if by_id.get(token_id, name) != name:
            raise ValueError(f"tokenizer id {token_id} is {by_id[token_id]!r}; the vocab reserves it for {name!r}")
        table[name] = token_id
    ours = {i for i, _ in names}
    kept = [t for t in data.get("added_tokens", []) if t["id"] not in ours]
    data["added_tokens"] = sorted(kept + [_added(i, n) for i, n in names], key=lambda t: t["id"])
    return data


def byte_tokenizer_json(vocab: Vocab) -> str:
    """tokenizer.json of the byte tokenizer over `vocab` (text range of 256 ids)."""
    if vocab.range_size("text") != 256:
        raise ValueError(f"the byte tokenizer needs a text range of 256 ids; this vocab has {vocab.range_size('text')}")
    offset = vocab.offset("text")
    table = {char: offset + b for b, char in bytes_to_unicode().items()}
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": table, "merges": [],
        },
    }
    return json.dumps(declare_tokens(data, vocab), ensure_ascii=False)


def _shift_processor(proc, offset: int):
    if not isinstance(proc, dict):
        return
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(proc.get(key), list) and len(proc[key]) == 2:
            proc[key][1] += offset
    for special in (proc.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [i + offset for i in special.get("ids", [])]
    for inner in proc.get("processors") or []:
        _shift_processor(inner, offset)


def shift_tokenizer_json(data: dict, offset: int) -> dict:
    """Every id of a dict-vocab tokenizer (model, added tokens, post-processor, padding) + offset."""
    data = copy.deepcopy(data)
    model = data.get("model", {})
    if model.get("type") not in DICT_VOCAB_MODELS:
        raise ValueError(f"tokenizer model type {model.get('type')!r} cannot be moved to other ids; supported: {', '.join(DICT_VOCAB_MODELS)}")
    model["vocab"] = {token: i + offset for token, i in model["vocab"].items()}
    for token in data.get("added_tokens") or []:
        token["id"] += offset
    _shift_processor(data.get("post_processor"), offset)
    if isinstance(data.get("padding"), dict) and "pad_id" in data["padding"]:
        data["padding"]["pad_id"] += offset
    return data


def tokenizer_config(vocab: Vocab) -> dict:
    """tokenizer_config.json for `AutoTokenizer` (fast tokenizer over tokenizer.json).

    `split_special_tokens` makes transformers encode a literal "<eos>" in text
    as its bytes, as our tokenizers do.
    """
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }


class HFTextTokenizer:
    """encode/decode like `ByteTokenizer`, backed by a tokenizer.json with unified ids."""

    kind = "tokenizer.json"

    def __init__(self, path, vocab: Vocab):
        from tokenizers import Tokenizer

        self.path, self.vocab = Path(path), vocab
        self.tokenizer = Tokenizer.from_file(str(self.path))
        self.tokenizer.encode_special_tokens = True

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        start = self.vocab.offset("text")
        keep = ids[(ids >= start) & (ids < start + self.vocab.range_size("text"))]
        return self.tokenizer.decode(keep.tolist(), skip_special_tokens=True)


def workdir_text_tokenizer(workdir, vocab: Vocab):
    """The workdir's text tokenizer: its tokenizer.json when present, else the byte tokenizer
    (None when neither applies: a text range of other than 256 ids and no tokenizer.json)."""
    from mmntp_jax.tokenizers.text import ByteTokenizer

    path = Path(str(workdir)).joinpath(*TEXT_TOKENIZER_PATH)
    if path.exists():
        return HFTextTokenizer(path, vocab)
    return ByteTokenizer(vocab) if vocab.range_size("text") == 256 else None


def install_workdir_text_tokenizer(workdir, text, vocab: Vocab) -> Path | None:
    """Writes a BPE text tokenizer (ids 0 … n-1, as data shards store it) as the workdir's
    tokenizer.json with unified ids, so sampling, evaluation and export read the text the
    run was trained on. Byte tokenizers need no file; returns the path written, if any."""
    if getattr(text, "kind", "bytes") != "bpe":
        return None
    path = Path(str(workdir)).joinpath(*TEXT_TOKENIZER_PATH)
    data = shift_tokenizer_json(json.loads(text.to_str()), vocab.offset("text"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    tmp.replace(path)
    return path


def workdir_tokenizer_json(workdir, vocab: Vocab) -> str:
    """tokenizer.json text for the export: the workdir's own (tokens declared) or the byte tokenizer."""
    path = Path(str(workdir)).joinpath(*TEXT_TOKENIZER_PATH)
    if path.exists():
        return json.dumps(declare_tokens(json.loads(path.read_text()), vocab), ensure_ascii=False)
    if vocab.range_size("text") != 256:
        raise FileNotFoundError(f"the vocab's text range has {vocab.range_size('text')} ids, so it is no byte tokenizer, and {path} is missing")
    return byte_tokenizer_json(vocab)
