"""The tokenized document record that sources yield and the packer consumes.

A document is a dict of equal-length 1-D numpy arrays:
    tokens    int32  global token ids (see `Vocab`)
    modality  int    modality id of each token (0 text, 1 image, 2 audio, 3 video);
                     block markers carry the modality of their block
    loss      uint8  1 where the token is trained on as a prediction target
    mask_kind int    optional, one for the document: its attention mask kind (an
                     index into `config.MASK_KINDS`), set by a mixture source
                     that has its own; absent = `model.attention_mask`

Layout: <bos> segment … segment <eos>; a text segment is its ids, a media
segment is a block `<boi> c1 … cN <eoi>` (audio <boa>/<eoa>, video <bov>/<eov>).
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.data.vocab import MODALITY_ID, Vocab


def text_document(ids, vocab: Vocab, *, add_bos: bool = True, add_eos: bool = True) -> dict[str, np.ndarray]:
    """Wraps text ids as a document: <bos> ids <eos>, all text, all trained on."""
    parts = [np.asarray(ids, np.int32)]
    if add_bos:
        parts.insert(0, np.array([vocab.bos_id], np.int32))
    if add_eos:
        parts.append(np.array([vocab.eos_id], np.int32))
    tokens = np.concatenate(parts)
    return {
        "tokens": tokens,
        "modality": np.zeros_like(tokens),
        "loss": np.ones(tokens.shape, np.uint8),
    }


def assemble_document(parts, vocab: Vocab) -> dict[str, np.ndarray]:
    """Builds a document from [(modality name, global ids, trained on?), …].

    Media ids are wrapped in their block markers; the whole is framed by
    <bos> … <eos>. A segment's loss flag covers its markers; <eos> is trained on.
    """
    tokens, modality, loss = [np.array([vocab.bos_id], np.int32)], [np.zeros(1, np.uint8)], [np.zeros(1, np.uint8)]
    for name, ids, trained in parts:
        ids = np.asarray(ids, np.int32).reshape(-1)
        if name != "text":
            begin, end = vocab.markers(name)
            ids = np.concatenate([[begin], ids, [end]]).astype(np.int32)
        tokens.append(ids)
        modality.append(np.full(ids.shape, MODALITY_ID[name], np.uint8))
        loss.append(np.full(ids.shape, 1 if trained else 0, np.uint8))
    tokens.append(np.array([vocab.eos_id], np.int32))
    modality.append(np.zeros(1, np.uint8))
    loss.append(np.ones(1, np.uint8))
    return {"tokens": np.concatenate(tokens), "modality": np.concatenate(modality), "loss": np.concatenate(loss)}


def check_document(doc: dict[str, np.ndarray], where: str = "document") -> None:
    """Raises ValueError naming `where` if the record is malformed."""
    for key in ("tokens", "modality", "loss"):
        if key not in doc:
            raise ValueError(f"{where}: missing field {key!r}")
    n = len(doc["tokens"])
    for key in ("modality", "loss"):
        if len(doc[key]) != n:
            raise ValueError(f"{where}: field {key!r} has length {len(doc[key])}, expected {n} (len of 'tokens')")


class ContextDropout:
    """Caption dropout for classifier-free guidance (`data.cfg_dropout`): with probability
    `p` a document that opens with context text (`loss` 0) followed by a trained media
    block loses that text, so the model also learns the block with no context: the
    unconditional half of guided sampling. Other documents pass unchanged. A grain
    `random_map` transform: the draw is a function of the seed and the document's index."""

    def __init__(self, p: float, begin_ids):
        self.p, self.begin_ids = float(p), np.asarray(begin_ids)

    def __call__(self, doc: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return doc
        tokens, loss = doc["tokens"], doc["loss"]
        opens = np.flatnonzero(np.isin(tokens, self.begin_ids))
        if not opens.size or opens[0] <= 1 or loss[1 : opens[0]].any() or not loss[opens[0] + 1]:
            return doc
        keep = np.r_[0, opens[0] : tokens.size]
        return {k: (v[keep] if isinstance(v, np.ndarray) and v.shape == tokens.shape else v) for k, v in doc.items()}

