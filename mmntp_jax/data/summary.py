"""`mmntp data inspect`: what a prepared folder holds, and one document decoded.

`describe(folder)` gathers counts (documents, tokens per modality, trained-on
share, skipped documents), a document-length histogram in powers of two, and
the first documents rendered as text: text runs decoded, each block shown as
`<image: N codes>`, context-only (`"loss": false`) runs wrapped in `[ctx: …]`.
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.data.shards import ShardSet
from mmntp_jax.data.vocab import MODALITIES, NAMED_SPECIALS, Vocab

BAR_WIDTH = 40


def render_document(doc: dict, vocab: Vocab, text_tokenizer, max_chars: int = 400) -> str:
    """Human-readable view of a token record."""
    tokens, modality, loss = doc["tokens"], np.asarray(doc["modality"]), np.asarray(doc["loss"])
    pieces, i, n = [], 0, len(tokens)
    while i < n:
        tok = int(tokens[i])
        if tok < len(NAMED_SPECIALS) and NAMED_SPECIALS[tok] in ("<boi>", "<boa>", "<bov>"):
            j = i + 1
            while j < n and int(tokens[j]) != tok + 1:
                j += 1
            piece = f"<{MODALITIES[int(modality[i])]}: {j - i - 1} codes>"
            end = min(j, n - 1)
        elif tok < vocab.n_specials:
            piece, end = vocab.special_names()[tok], i
        else:
            j = i
            while j + 1 < n and int(tokens[j + 1]) >= vocab.n_specials and modality[j + 1] == 0 and loss[j + 1] == loss[i]:
                j += 1
            piece, end = text_tokenizer.decode(tokens[i : j + 1]), j
        pieces.append(f"[ctx: {piece}]" if not loss[i] and tok not in (vocab.bos_id,) else piece)
        i = end + 1
    text = "".join(pieces)
    return text if len(text) <= max_chars else text[:max_chars] + f"… ({len(text) - max_chars} more characters)"


def describe(folder, samples: int = 1) -> dict:
    shards = ShardSet(folder)
    stats = shards.shard_stats()
    by_modality = np.sum([s["by_modality"] for s in stats], axis=0).tolist()
    lengths = np.sum([s["log2_lengths"] for s in stats], axis=0)
    tokens = int(shards.info["tokens"])
    docs = shards.documents(with_meta=True) if len(shards) else None
    text = shards.text_tokenizer()
    shown = []
    for k in range(min(samples, len(shards))):
        doc = docs[k]
        shown.append({"meta": doc["meta"], "tokens": int(len(doc["tokens"])), "text": render_document(doc, shards.vocab, text)})
    return {
        "folder": str(shards.folder),
        "docs": len(shards),
        "shards": len(shards.info["shards"]),
        "tokens": tokens,
        "tokens_by_modality": dict(zip(MODALITIES, by_modality)),
        "trained_fraction": sum(s["loss_tokens"] for s in stats) / max(tokens, 1),
        "skipped": int(shards.info["skipped"]),
        "max_len": max(s["max_len"] for s in stats),
        "max_block": shards.max_block,
        "vocab_size": shards.vocab.size,
        "text_tokenizer": shards.info["text_tokenizer"],
        "length_histogram": {f"{2**k}-{2**(k + 1) - 1}": int(c) for k, c in enumerate(lengths) if c},
        "samples": shown,
    }


def format_summary(info: dict) -> str:
    lines = [
        f"{info['folder']}: {info['docs']} documents in {info['shards']} shards, {info['tokens']} tokens "
        f"(vocab {info['vocab_size']} ids, text tokenizer {info['text_tokenizer']})",
        "tokens by modality: " + ", ".join(f"{m} {n}" for m, n in info["tokens_by_modality"].items() if n),
        f"trained on: {100 * info['trained_fraction']:.1f}% of tokens; longest document {info['max_len']}, longest block {info['max_block']}",
        f"skipped documents: {info['skipped']}" + (" (see report.json)" if info["skipped"] else ""),
        "document length (tokens):",
    ]
    hist = info["length_histogram"]
    top = max(hist.values(), default=1)
    width = max((len(k) for k in hist), default=0)
    for bucket, count in hist.items():
        lines.append(f"  {bucket:>{width}} {'#' * max(1, round(BAR_WIDTH * count / top))} {count}")
    for k, sample in enumerate(info["samples"]):
        lines.append(f"document {k} ({sample['tokens']} tokens, {sample['meta']}):")
        lines.append("  " + sample["text"].replace("\n", "\n  "))
    return "\n".join(lines)
