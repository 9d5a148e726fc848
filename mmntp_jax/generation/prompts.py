"""Prompts in the manifest schema → the ids a model continues, laid out as training documents are.

A prompt is a string (text) or a list of segments as in docs/data.md:
`{"type": "text", "text": …}`, `{"type": "image", "path": …}`,
`{"type": "audio", "path": "x.wav"}` (or `"array"`, or a key named as the type:
the item itself). A last segment without content asks for that modality:
`[{"type": "text", "text": "a red circle"}, {"type": "image"}]` is a
caption→image prompt, `[{"type": "image", "path": "x.png"}, {"type": "text"}]`
an image→caption one, `[{"type": "text", "text": "hi"}, {"type": "audio"}]`
a text→audio one. The ids are those of `data.documents.assemble_document`
without its closing `<eos>` (so `<bos>` text… `<boi>` codes `<eoi>` …), followed
by the requested block's begin marker when a media item is asked for.

`Prompt.context_free` is the same request with every context segment dropped
(`<bos>` and the begin marker): what classifier-free guidance compares with, and
what caption dropout (`data.cfg_dropout`) trains the model on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.vocab import MODALITIES


class PromptError(ValueError):
    """A prompt that cannot be encoded; the message names the prompt and segment."""


@dataclass(frozen=True)
class Prompt:
    ids: np.ndarray  # int32 [P]
    generate: str  # the modality asked for ("text" when nothing else is)
    context_free: np.ndarray  # int32: the request with no context


def _content(seg: dict):
    for key in ("text", "path", "array", seg.get("type")):
        if seg.get(key) is not None:
            return seg[key]
    return None


def _check(segments, where: str) -> list[dict]:
    if isinstance(segments, str):
        return [{"type": "text", "text": segments}]
    if not isinstance(segments, (list, tuple)) or not segments:
        raise PromptError(f"{where}: expected a string or a non-empty list of segments, got {type(segments).__name__}")
    for k, seg in enumerate(segments):
        if not isinstance(seg, dict) or seg.get("type") not in MODALITIES:
            kind = seg.get("type") if isinstance(seg, dict) else type(seg).__name__
            raise PromptError(f"{where}: segment {k} has type {kind!r}; expected one of {', '.join(MODALITIES)}")
        if _content(seg) is None and k != len(segments) - 1:
            raise PromptError(f"{where}: segment {k} ({seg['type']}) has no content; only the last segment may ask for generation")
    return list(segments)


def encode_prompts(prompts: list, vocab, text_tokenizer, media) -> list[Prompt]:
    """The ids of each prompt. Media items go through `media` (a `RunMedia`): each is
    checked and fitted on its own (errors name the prompt and segment), then every
    item of a modality is encoded in one batch."""
    checked = [_check(p, f"prompt {i}") for i, p in enumerate(prompts)]
    items: dict[str, list] = {}  # modality → fitted items, in (prompt, segment) order
    for i, segments in enumerate(checked):
        for k, seg in enumerate(segments):
            if seg["type"] != "text" and _content(seg) is not None:
                where = f"prompt {i}, segment {k} ({seg['type']})"
                try:
                    items.setdefault(seg["type"], []).append(media.fit(seg["type"], _content(seg), where))
                except ValueError as err:
                    raise PromptError(str(err) if str(err).startswith(where) else f"{where}: {err}") from None
    blocks = {m: iter(media.encode(m, xs)) for m, xs in items.items()}
    return [_assemble(segments, vocab, text_tokenizer, blocks) for segments in checked]


def encode_prompt(segments, vocab, text_tokenizer, media, where: str = "prompt") -> Prompt:
    """The ids of one prompt (see `encode_prompts`)."""
    try:
        return encode_prompts([segments], vocab, text_tokenizer, media)[0]
    except PromptError as err:
        raise PromptError(str(err).replace("prompt 0", where, 1)) from None


def _assemble(segments: list[dict], vocab, text_tokenizer, blocks: dict) -> Prompt:
    asked = segments[-1]["type"] if _content(segments[-1]) is None else "text"
    context = segments[:-1] if _content(segments[-1]) is None else segments
    parts = [("text", text_tokenizer.encode(str(seg["text"])), False) if seg["type"] == "text" else (seg["type"], next(blocks[seg["type"]]), False)
             for seg in context]
    opener = [vocab.markers(asked)[0]] if asked != "text" else []
    ids = np.concatenate([assemble_document(parts, vocab)["tokens"][:-1], opener]).astype(np.int32)
    context_free = np.asarray([vocab.bos_id, *opener], np.int32)
    return Prompt(ids, asked, context_free)


def fit_length(prompts: list[Prompt], new_tokens: int, max_len: int, *, exact: bool) -> int:
    """The new tokens that fit the model's context after the longest prompt: `new_tokens`,
    or fewer for text (`exact` False). A one-line error when even the prompt (or, for a
    media block, the prompt and its block) does not fit."""
    longest = max(range(len(prompts)), key=lambda i: prompts[i].ids.size)
    room = max_len - prompts[longest].ids.size
    if room < (new_tokens if exact else 1):
        need = f" + {new_tokens} for its block" if exact else ""
        raise PromptError(f"prompt {longest}: {prompts[longest].ids.size} ids{need} exceed the model's context of {max_len} (model.max_seq_len)")
    return min(new_tokens, room)
