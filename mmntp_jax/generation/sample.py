"""Multimodal generation for a trained run: prompts of segments in, text and decoded media out.

`generate(run, prompts, …)` encodes each prompt (`prompts.encode_prompt`), samples
with the one KV-cache sampler (`model.generate.generate_ids`) under the run's
block grammar (`model.block_rules.BlockRules`: inside a media block only that
modality's codes, exactly the tokenizer's count, then the end marker), and turns
the new ids back into text, or into the item the run's tokenizer decodes them to.
Prompts are batched `batch_size` at a time and left-padded to a multiple of
`LENGTH_BUCKET`, so a run of many prompts compiles a few programs, not one per
prompt. Results come back in prompt order as segments:
`{"type": "text", "text": …}`, `{"type": "image", "image": float32 [H, W, 3], "ids": …}` or
`{"type": "audio", "audio": float32 [L], "ids": …}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.generation.prompts import Prompt, encode_prompts, fit_length
from mmntp_jax.model.block_rules import BlockRules
from mmntp_jax.model.generate import generate_ids, left_pad

LENGTH_BUCKET = 64


def block_rules(run) -> BlockRules:
    return BlockRules.from_vocab(run.vocab, run.media.block_lengths())


def _until_eos(row: np.ndarray, eos_id: int) -> np.ndarray:
    hits = np.flatnonzero(row == eos_id)
    return row[: hits[0]] if hits.size else row


def _padded(prompts: list[np.ndarray], pad_id: int, rows: int):
    """left_pad to `rows` prompts (repeating the last) and a bucketed length."""
    prompts = prompts + [prompts[-1]] * (rows - len(prompts))
    length = -(-max(len(p) for p in prompts) // LENGTH_BUCKET) * LENGTH_BUCKET
    return left_pad(prompts, pad_id, length=length)


def _sample(run, rules, batch: list[Prompt], new_tokens: int, rows: int, key, sampling: dict):
    """New ids [len(batch), new_tokens] for one batch of prompts asking for the same modality."""
    guidance = sampling["guidance"]
    ids = [p.ids for p in batch]
    if guidance != 1.0:  # [conditional; context-free] pairs
        ids = ids + [ids[-1]] * (rows - len(ids)) + [p.context_free for p in batch]
        rows *= 2
    ids_BP, seg_BP, pos_BP = _padded(ids, run.vocab.pad_id, rows)
    block_B, filled_B = rules.state_after([row[seg > 0] for row, seg in zip(ids_BP, seg_BP)])
    out = generate_ids(
        run.graph, run.params, jnp.asarray(ids_BP), jnp.asarray(seg_BP), jnp.asarray(pos_BP), key,
        max_new_tokens=new_tokens, temperature=float(sampling["temperature"]), top_k=int(sampling["top_k"]), top_p=float(sampling["top_p"]),
        rules=rules, block_B=jnp.asarray(block_B), filled_B=jnp.asarray(filled_B), guidance=None if guidance == 1.0 else float(guidance),
        image_first=bool((block_B == rules.media.index("image")).all() and (filled_B == 0).all()) if "image" in rules.media else False,
    )
    return np.asarray(out)[: len(batch)]


def generate(run, prompts: list, *, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, guidance: float = 1.0, batch_size: int = 16) -> list[dict]:
    """One result segment per prompt (see the module docstring)."""
    encoded = encode_prompts(prompts, run.vocab, run.tokenizer, run.media)
    rules = block_rules(run)
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "guidance": guidance}
    results: list[dict | None] = [None] * len(encoded)
    key = jax.random.key(seed)
    for modality in sorted({p.generate for p in encoded}):
        order = [i for i, p in enumerate(encoded) if p.generate == modality]
        new_tokens = max_new_tokens if modality == "text" else rules.block_length(modality) + 1  # codes + end marker
        new_tokens = fit_length([encoded[i] for i in order], new_tokens, run.config.model.max_seq_len, exact=modality != "text")
        rows = min(batch_size, len(order))
        for start in range(0, len(order), rows):
            part = order[start : start + rows]
            new = _sample(run, rules, [encoded[i] for i in part], new_tokens, rows, jax.random.fold_in(key, start), sampling)
            for i, row in zip(part, new):
                results[i] = _result(run, modality, row)
    return results


def _result(run, modality: str, row: np.ndarray) -> dict:
    if modality == "text":
        return {"type": "text", "text": run.tokenizer.decode(_until_eos(row, run.vocab.eos_id)), "ids": row}
    codes = row[:-1]
    item = run.media.decode(modality, [codes])[0]
    return {"type": modality, modality: item, "ids": row}
