"""The multimodal bundle next to an exported LM: modality tokenizers and a README.

Modality tokenizers live in a workdir as
`WORKDIR/tokenizers/<modality>/{tokenizer.json, tokenizer.safetensors}` (the
format `mmntp_jax.tokenizers.io` saves and loads: architecture as JSON, encoder
and decoder weights as safetensors) and are copied as they are into
`OUT/tokenizers/<modality>/`. Two files make the folder generate media in
transformers without mmntp_jax: `mmntp_generation.py` (the block grammar as a
`LogitsProcessor`, drawing prompts, `generate_image`) and
`mmntp_image_decoder.py` (the image tokenizer's decoder in torch), copied from
`hf_generation.py` and `hf_image_decoder.py` beside this module. The README
explains the unified vocabulary, how to turn generated ids back into text and
modality codes, and which tokenizers the bundled decoder handles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mmntp_jax.data.vocab import BLOCK_MARKERS, Vocab
from mmntp_jax.tokenizers.io import CONFIG, WEIGHTS

TOKENIZER_FILES = (CONFIG, WEIGHTS)
GENERATION_FILES = {"hf_generation.py": "mmntp_generation.py", "hf_image_decoder.py": "mmntp_image_decoder.py"}  # source → bundled name
DECODABLE = {"image": ("fsq", "vq", "lfq", "bsq")}  # as hf_image_decoder.DECODABLE (tokenizer kind → quantizer kinds)


def modality_tokenizers(workdir, vocab: Vocab, *, root=None) -> dict[str, Path]:
    """{modality: folder} of the workdir's (or model folder's) modality tokenizers, checked complete;
    their files must lie inside the folder (`root`: a folder that counts as inside, see `mmntp_jax.paths.inside`)."""
    from mmntp_jax.paths import inside

    base = Path(str(workdir))
    tokenizers = inside(base, "tokenizers", root=root)
    found = {}
    if not tokenizers.is_dir():
        return found
    for name in sorted(p.name for p in tokenizers.iterdir() if p.is_dir() and p.name != "text"):
        folder = inside(base, Path("tokenizers") / name, root=root)
        missing = [f for f in TOKENIZER_FILES if not inside(folder, f, root=root).is_file()]
        if missing:
            raise FileNotFoundError(f"modality tokenizer {folder} lacks {', '.join(missing)} (expected {', '.join(TOKENIZER_FILES)})")
        if vocab.range_size(name) == 0:
            ranges = ", ".join(m for m, _ in vocab.ranges)
            raise ValueError(f"modality tokenizer {folder} has no id range in the vocab (ranges: {ranges})")
        found[name] = folder
    return found


def copy_modality_tokenizers(found: dict[str, Path], out, *, root=None) -> list[str]:
    """Copies each tokenizer folder to OUT/tokenizers/<modality>/, refusing a file that lies outside
    its folder (or `root`); returns the copied paths."""
    from mmntp_jax.paths import inside

    copied = []
    for modality, folder in found.items():
        target = Path(out) / "tokenizers" / modality

        def copy_inside(source, destination, folder=folder):
            return shutil.copy2(inside(folder, os.path.relpath(source, folder), root=root), destination)

        shutil.copytree(folder, target, copy_function=copy_inside)
        copied += [str(p.relative_to(out)) for p in sorted(target.rglob("*")) if p.is_file()]
    return copied


def copy_generation_files(out) -> list[str]:
    """Copies the transformers generation helpers into OUT; returns their names."""
    for source, name in GENERATION_FILES.items():
        shutil.copyfile(Path(__file__).with_name(source), Path(out) / name)
    return list(GENERATION_FILES.values())


def decoder_notes(found: dict[str, Path]) -> dict[str, str]:
    """{modality: one line}: whether `mmntp_image_decoder.py` decodes that tokenizer's codes."""
    notes = {}
    for modality, folder in found.items():
        try:
            meta = json.loads((folder / CONFIG).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"modality tokenizer {folder / CONFIG}: not valid JSON ({err})") from None
        kind, quantizer = meta.get("kind"), (meta.get("config") or {}).get("quantizer", {}).get("kind")
        if quantizer in DECODABLE.get(kind, ()):
            notes[modality] = f"`tokenizers/{modality}/` ({kind}, {quantizer}): decoded in torch by `mmntp_image_decoder.load_image_decoder(FOLDER)`."
        else:
            notes[modality] = f"`tokenizers/{modality}/` ({kind}, {quantizer}): decoding is not bundled for this tokenizer kind; decode its codes with mmntp_jax."
    return notes


def _generation_rows(decoders: dict[str, str]) -> list[str]:
    return [
        "## Generating images in transformers",
        "",
        "`mmntp_generation.py` (numpy, torch, transformers; no mmntp_jax) holds `BlockRulesProcessor`, a",
        "`LogitsProcessor` that allows exactly what mmntp_jax's sampler allows: inside a block only the",
        "modality's codes (the level each position holds), exactly the tokenizer's count of them, then the",
        "end marker. `mmntp_image_decoder.py` turns a block's codes into pixels float32 [H, W, 3] in [0, 1].",
        "",
        "```python",
        "import sys; sys.path.insert(0, FOLDER)",
        "import mmntp_generation, mmntp_image_decoder",
        "codes, images = mmntp_generation.generate_image(model, tokenizer, [\"a small red circle at the centre\"])",
        "mmntp_image_decoder.write_png(\"drawn.png\", images[0])",
        "```",
        "",
        *([f"- {line}" for line in decoders.values()] or ["This export carries no modality tokenizer, so `generate_image` has nothing to decode with."]),
        "",
    ]


def _layout_rows(vocab: Vocab) -> list[str]:
    names = vocab.special_names()
    rows = ["| ids | tokens | meaning |", "|---|---|---|"]
    rows.append(f"| 0, 1, 2 | `{names[0]}` `{names[1]}` `{names[2]}` | padding, begin and end of a document |")
    for modality, (start, end) in BLOCK_MARKERS.items():
        rows.append(f"| {vocab.special(start)}, {vocab.special(end)} | `{start}` `{end}` | open and close a block of {modality} codes |")
    if vocab.n_specials > 9:
        rows.append(f"| 9 … {vocab.n_specials - 1} | `<reserved_0>` … | reserved, unused by the data pipeline |")
    for modality, size in vocab.ranges:
        start = vocab.offset(modality)
        meaning = "text tokens (see tokenizer.json)" if modality == "text" else f"{modality} code k is id {start} + k, token `<{modality}_k>`"
        rows.append(f"| {start} … {start + size - 1} | {modality} ({size}) | {meaning} |")
    return rows


def readme(*, arch: str, dtype: str, vocab: Vocab, vocab_size: int, step: int, workdir: str, files: list[str], tokenizers: list[str],
           decoders: dict[str, str]) -> str:
    extra = vocab_size - vocab.size
    padding = f"\nThe model has {vocab_size} output rows; ids {vocab.size} … {vocab_size - 1} belong to no range and are never produced by training.\n" if extra > 0 else ""
    modalities = [m for m, _ in vocab.ranges if m != "text"]
    decode_section = (
        "Each modality tokenizer is a folder `tokenizers/<modality>/` with `tokenizer.json` (its architecture and\n"
        "quantizer) and `tokenizer.safetensors` (encoder and decoder weights). Load it with\n"
        "`mmntp_jax.tokenizers.io.load_tokenizer(folder)` and call `decode(params, codes)` on the local codes of\n"
        "one block, reshaped to the token grid that `tokenizer.json` describes.\n"
        if tokenizers else
        "This export carries no modality tokenizer: the workdir it came from had no `tokenizers/<modality>/` folder.\n"
    )
    lines = [
        f"# {arch} exported from mmntp_jax",
        "",
        f"Step {step} of `{workdir}`, weights in {dtype}. Files: {', '.join(f'`{f}`' for f in files)}.",
        "",
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "ids = [1] + tokenizer.encode(\"def \")          # <bos> then text",
        "```",
        "",
        "## The unified vocabulary",
        "",
        "One vocabulary holds text and the codes of every modality (`mmntp_vocab.json` has it as JSON):",
        "",
        *_layout_rows(vocab),
        padding,
        "Every special token and every modality code is declared in `tokenizer.json` as an added special",
        "token, so `tokenizer.decode(ids, skip_special_tokens=True)` returns only the text. Text that",
        "contains a literal `<eos>` is encoded as its characters, never as the special token",
        "(`split_special_tokens` in `tokenizer_config.json`; with the raw `tokenizers` library set",
        "`tokenizer.encode_special_tokens = True`).",
        "",
        "## Decoding generated ids",
        "",
        "A generated sequence interleaves text with blocks such as `<boi> c₁ … cₙ <eoi>`. Split it and turn",
        "each block's ids into local codes by subtracting the start of the modality's range:",
        "",
        "```python",
        "import json, numpy as np",
        "layout = json.load(open(FOLDER + \"/mmntp_vocab.json\"))",
        "start = {r[\"modality\"]: r[\"start\"] for r in layout[\"ranges\"]}",
        "size = {r[\"modality\"]: r[\"size\"] for r in layout[\"ranges\"]}",
        "ids = np.asarray(generated)",
        "for modality in [m for m in start if m != \"text\"]:",
        "    inside = (ids >= start[modality]) & (ids < start[modality] + size[modality])",
        "    local_codes = ids[inside] - start[modality]   # what that modality's tokenizer decodes",
        "```",
        "",
        decode_section,
    ]
    lines += _generation_rows(decoders)
    if modalities:
        lines += ["Modalities in the vocabulary: " + ", ".join(modalities) + "; tokenizers included: " + (", ".join(tokenizers) or "none") + ".", ""]
    return "\n".join(lines)
