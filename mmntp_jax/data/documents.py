"""The tokenized document record that sources yield and the packer consumes.

A document is a dict of equal-length 1-D numpy arrays:
    tokens    int32  global token ids (see `Vocab`)
    modality  int32  modality id of each token (0 text, 1 image, 2 audio, 3 video);
                     block markers carry the modality of their block
    loss      uint8  1 where the token is trained on as a prediction target
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.data.vocab import Vocab


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


def check_document(doc: dict[str, np.ndarray], where: str = "document") -> None:
    """Raises ValueError naming `where` if the record is malformed."""
    for key in ("tokens", "modality", "loss"):
        if key not in doc:
            raise ValueError(f"{where}: missing field {key!r}")
    n = len(doc["tokens"])
    for key in ("modality", "loss"):
        if len(doc[key]) != n:
            raise ValueError(f"{where}: field {key!r} has length {len(doc[key])}, expected {n} (len of 'tokens')")
