"""Generating media from an mmntp_jax Hugging Face export in transformers: the block grammar as a LogitsProcessor.

This file is copied into every `mmntp export hf` folder as `mmntp_generation.py`
and imports nothing from mmntp_jax or jax (numpy, torch, transformers and the
standard library only). Dimensions: B batch, T ids so far, V vocab, M media
modalities, N codes of one block.

`BlockRulesProcessor` allows, at every step, exactly what mmntp_jax's sampler
allows (`mmntp_jax.model.block_rules.BlockRules`):

    outside a block      the text range, `<eos>`, and the begin marker of every
                         modality the folder has a tokenizer for
    in a block, k < N    the codes of the level position k holds (per-level
                         layouts: level k mod L; otherwise the modality's range)
    in a block, k = N    only the end marker, so a block holds exactly N codes
    after `<eos>`        only `<pad>`

The state is read from each row's ids at every call (the last begin marker not
yet closed, and the ids after it), so batches, left padding and any prompt that
ends inside a block work. N is the tokenizer's `tokens_per_item` (its
`tokenizer.json`): every level of every position, as the data holds it.

    codes, images = generate_image(model, tokenizer, ["a small red circle …"])
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor

VOCAB_FILE = "mmntp_vocab.json"
TOKENIZERS_DIR = "tokenizers"
TOKENIZER_CONFIG = "tokenizer.json"
DECODER_FILE = "mmntp_image_decoder.py"
MARKERS = {"image": ("<boi>", "<eoi>"), "audio": ("<boa>", "<eoa>"), "video": ("<bov>", "<eov>")}


def read_layout(folder) -> dict:
    """The unified vocabulary of an export folder (`mmntp_vocab.json`)."""
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an mmntp_jax Hugging Face export: {VOCAB_FILE} is missing")
    return json.loads(path.read_text())


def _levels(entry: dict) -> int:
    return int(entry.get("levels", 1))


def block_lengths(folder, layout: dict) -> dict[str, int]:
    """{modality: codes of one block} for every modality whose tokenizer the folder carries."""
    lengths = {}
    for entry in layout["ranges"]:
        path = Path(folder) / TOKENIZERS_DIR / entry["modality"] / TOKENIZER_CONFIG
        if entry["modality"] != "text" and path.is_file():
            lengths[entry["modality"]] = int(json.loads(path.read_text())["tokens_per_item"])  # every level of every position
    return lengths


class BlockRulesProcessor(LogitsProcessor):
    """Sets the score of every id the block grammar forbids after a row's ids to -inf."""

    def __init__(self, layout: dict, lengths: dict[str, int]):
        specials = layout["specials"]
        self.pad_id, self.eos_id = specials.index("<pad>"), specials.index("<eos>")
        ranges = {e["modality"]: e for e in layout["ranges"]}
        text = ranges.get("text", {"start": 0, "size": 0})
        self.text_range = (int(text["start"]), int(text["start"]) + int(text["size"]))
        self.media = [m for m in ranges if m != "text"]
        unknown = sorted(set(lengths) - set(self.media))
        if unknown:
            raise ValueError(f"block lengths given for {', '.join(unknown)}, which the vocabulary has no range for")
        self.lengths = {m: int(lengths.get(m, 0)) for m in self.media}
        rows = [self._row(ranges[m], specials) for m in self.media] or [(0, 0, 0, 1, -1, -1, 0)]
        table = torch.tensor(rows, dtype=torch.long)
        self.offsets, self.codebooks, self.strides, self.levels, self.begins, self.ends, self.sizes = table.T
        self.openers = torch.tensor([b for m, b in zip(self.media, self.begins.tolist()) if self.lengths[m]], dtype=torch.long)

    def _row(self, entry: dict, specials: list[str]) -> tuple:
        levels, size = _levels(entry), int(entry["size"])
        per_level = entry.get("layout", "per_level") == "per_level"
        codebook = size // levels if per_level else size
        begin, end = (specials.index(name) for name in MARKERS[entry["modality"]])
        n = self.lengths[entry["modality"]]
        if n % levels:
            raise ValueError(f"{entry['modality']} blocks of {n} codes do not hold whole positions of {levels} levels")
        return int(entry["start"]), codebook, codebook if per_level and levels > 1 else 0, levels, begin, end, n

    @classmethod
    def from_folder(cls, folder) -> "BlockRulesProcessor":
        layout = read_layout(folder)
        return cls(layout, block_lengths(folder, layout))

    def block_length(self, modality: str) -> int:
        """Codes of one block of `modality` (its end marker not counted)."""
        if not self.lengths.get(modality):
            known = "".join(f", {m}" for m in self.media if self.lengths[m])
            raise ValueError(f"cannot generate {modality}: this export carries no {modality} tokenizer (it can generate: text{known})")
        return self.lengths[modality]

    def state(self, input_ids: torch.Tensor):
        """(block [B]: index into `media` or -1, filled [B]: codes already in it, ended [B]: `<eos>` seen)."""
        ids = torch.as_tensor(input_ids).long()
        index = torch.arange(ids.shape[1], device=ids.device)
        last_begin = torch.where(torch.isin(ids, self.begins.to(ids.device)), index, -1).amax(-1)
        last_end = torch.where(torch.isin(ids, self.ends.to(ids.device)), index, -1).amax(-1)
        inside = last_begin > last_end
        opener = ids.gather(1, last_begin.clamp(min=0)[:, None])[:, 0]
        block = torch.where(inside, (opener[:, None] == self.begins.to(ids.device)[None]).long().argmax(-1), -1)
        filled = torch.where(inside, ids.shape[1] - 1 - last_begin, 0)
        over = inside & (filled > self.sizes.to(ids.device)[block.clamp(min=0)])
        if over.any():
            row = int(over.nonzero()[0, 0])
            raise ValueError(f"row {row}: its open {self.media[int(block[row])]} block already holds {int(filled[row])} codes, more than a block has")
        return block, filled, (ids == self.eos_id).any(-1)

    def allowed(self, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """bool [B, V]: the ids that may come next in each row."""
        block, filled, ended = self.state(input_ids)
        device = block.device
        m = block.clamp(min=0)
        table = lambda t: t.to(device)[m][:, None]  # noqa: E731
        ids = torch.arange(vocab_size, device=device)[None]
        inside = (block >= 0)[:, None]
        codes_left = inside & (filled[:, None] < table(self.sizes))
        lo = table(self.offsets) + table(self.strides) * (filled[:, None] % table(self.levels))
        codes = codes_left & (ids >= lo) & (ids < lo + table(self.codebooks))
        text = ~inside & (ids >= self.text_range[0]) & (ids < self.text_range[1])
        outside = ~inside & ((ids == self.eos_id) | torch.isin(ids, self.openers.to(device)))
        close = inside & ~codes_left & (ids == table(self.ends))
        return torch.where(ended[:, None], ids == self.pad_id, codes | text | outside | close)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.allowed(input_ids, scores.shape[-1]), float("-inf"))


def _range(layout: dict, modality: str) -> dict:
    entry = next((e for e in layout["ranges"] if e["modality"] == modality), None)
    if entry is None:
        raise ValueError(f"the vocabulary has no {modality} range (it has {', '.join(e['modality'] for e in layout['ranges'])})")
    return entry


def media_prompts(tokenizer, captions, layout: dict, modality: str = "image"):
    """Left-padded (input_ids, attention_mask) [B, P] of `<bos>` caption `<boi>` (the `<bos>`
    text … opener layout mmntp_jax's drawing documents and prompts use)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    specials = layout["specials"]
    if modality not in MARKERS:
        raise ValueError(f"{modality!r} is not a media modality; expected one of {', '.join(MARKERS)}")
    _range(layout, modality)
    opener = specials.index(MARKERS[modality][0])
    rows = [[specials.index("<bos>"), *tokenizer.encode(c, add_special_tokens=False), opener] for c in captions]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), specials.index("<pad>"), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def block_codes(new_ids, layout: dict, modality: str = "image") -> np.ndarray:
    """Local codes of blocks generated right after their opener: [B, N] ([B, N/L, L] with L levels).
    Every row must hold N codes of the range and then the end marker."""
    entry = _range(layout, modality)
    ids = np.asarray(torch.as_tensor(new_ids).cpu(), np.int64)
    n = ids.shape[1] - 1
    levels, size = _levels(entry), int(entry["size"])
    per_level = entry.get("layout", "per_level") == "per_level"
    codebook = size // levels if per_level else size
    end = layout["specials"].index(MARKERS[modality][1])
    if n < 1 or n % levels or not (ids[:, -1] == end).all():
        raise ValueError(f"expected rows of {modality} codes closed by {MARKERS[modality][1]}; got ids of shape {ids.shape} ending in {ids[:, -1].tolist()}")
    shift = (np.arange(levels) * codebook) if per_level else np.zeros(levels, np.int64)
    local = ids[:, :n].reshape(len(ids), n // levels, levels) - int(entry["start"]) - shift
    if local.min() < 0 or local.max() >= codebook:
        raise ValueError(f"generated ids are not {modality} codes in per-level order")
    return local[..., 0] if levels == 1 else local


def _decoder_module():
    path = Path(__file__).with_name(DECODER_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: copy it from the export folder beside {Path(__file__).name}")
    spec = importlib.util.spec_from_file_location("mmntp_image_decoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_folder(model, folder=None) -> Path:
    """`folder`, or the folder the model was loaded from."""
    folder = Path(folder if folder is not None else getattr(model, "name_or_path", "") or ".")
    if not (folder / VOCAB_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not an mmntp_jax Hugging Face export ({VOCAB_FILE} is missing); pass folder=")
    return folder


def generate_image(model, tokenizer, captions, folder=None, **generate_kwargs):
    """Greedy (unless `generate_kwargs` say otherwise) drawings of `captions`:
    (codes int64 [B, N], images float32 [B, H, W, 3] in [0, 1])."""
    folder = export_folder(model, folder)
    layout = read_layout(folder)
    rules = BlockRulesProcessor(layout, block_lengths(folder, layout))
    decoder = _decoder_module().load_image_decoder(folder)
    ids, mask = media_prompts(tokenizer, captions, layout, "image")
    options = {"do_sample": False, **generate_kwargs, "max_new_tokens": rules.block_length("image") + 1}
    with torch.no_grad():
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), logits_processor=[rules], **options)
    codes = block_codes(out[:, ids.shape[1]:], layout, "image")
    return codes, decoder(codes)
