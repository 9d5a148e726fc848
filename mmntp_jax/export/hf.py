"""`mmntp export hf`: a workdir's checkpoint as a Hugging Face LlamaForCausalLM / Qwen3ForCausalLM.

Writes, into a fresh folder (see staging.py):
    config.json, generation_config.json         the architecture over the unified vocabulary
    model.safetensors | model-0000k-of-0000n.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the text tokenizer
    mmntp_vocab.json                            the unified vocabulary layout
    tokenizers/<modality>/…                     modality tokenizers, when the workdir has them
    mmntp_generation.py, mmntp_image_decoder.py block-grammar LogitsProcessor and torch image decoder (bundle.py)
    README.md                                   vocab layout and how to decode generated codes

Tensors are produced one at a time (one layer of one stacked kernel is read
from the checkpoint, transposed, cast and written), so the host never holds the
model; no torch is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from mmntp_jax.export import bundle, hf_layout, safetensors_io, text_tokenizer
from mmntp_jax.export.reader import CheckpointReader, open_for_output
from mmntp_jax.export.staging import staged_output

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
VOCAB_FILE = "mmntp_vocab.json"


def export_dtype(name: str) -> np.dtype:
    if name not in EXPORT_DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[name]


def check_params(reader: CheckpointReader) -> dict:
    """Params metadata of the reader, checked exportable and against its config; {name: ArrayInfo}."""
    hf_layout.check_expressible(reader.config.model, reader.params_info())
    return reader.checked_params_info()


def tensor_plans(reader: CheckpointReader, info: dict, dtype: np.dtype) -> list[safetensors_io.TensorPlan]:
    """Every Hugging Face tensor in file order, each with a function that reads and converts it."""
    cfg = reader.config.model

    def plan(mapping, index=None):
        shape = info[mapping.ours].shape[1:] if index is not None else info[mapping.ours].shape
        name = mapping.hf.format(i=index)
        produce = lambda: np.ascontiguousarray(hf_layout.to_hf(mapping.kind, reader.read(mapping.ours, index)), dtype=dtype)
        return safetensors_io.TensorPlan(name, hf_layout.hf_shape(mapping.kind, shape), dtype, produce)

    present = [m for m in hf_layout.MAPPINGS if m.ours in info]
    plans = [plan(m) for m in present if m.ours == "embed_tokens.embedding"]
    for m in present:  # all layers of one stacked array in a row: each storage chunk is read once
        plans += [plan(m, i) for i in range(cfg.n_layers)] if m.per_layer else []
    plans += [plan(m) for m in present if not m.per_layer and m.ours != "embed_tokens.embedding"]
    return plans


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def export_hf(workdir, out, *, step: int | None = None, dtype: str = "float32", shard_size: int | None = None, force: bool = False, progress: bool = False) -> dict:
    """Exports checkpoint `step` (latest if None) of `workdir` to the folder `out`; returns a summary."""
    np_dtype = export_dtype(dtype)
    reader = open_for_output(workdir, step, out, force)
    cfg, vocab = reader.config.model, reader.vocab
    info = check_params(reader)
    tokenizer_json = text_tokenizer.workdir_tokenizer_json(reader.workdir, vocab)
    modality_tokenizers = bundle.modality_tokenizers(reader.workdir, vocab)
    plans = tensor_plans(reader, info, np_dtype)
    arch = hf_layout.architecture(cfg)

    from tqdm import tqdm

    bar = tqdm(total=sum(p.nbytes for p in plans), unit="B", unit_scale=True, desc="export hf", disable=not progress)
    with staged_output(out, force) as stage:
        files = safetensors_io.write_model(stage, plans, shard_size, {"format": "pt"}, on_tensor=lambda p: bar.update(p.nbytes))
        bar.close()
        ids = {"bos_id": vocab.bos_id, "eos_id": vocab.eos_id, "pad_id": vocab.pad_id}
        _write_json(stage / "config.json", hf_layout.hf_config(cfg, dtype, **ids))
        _write_json(stage / "generation_config.json", {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id})
        (stage / "tokenizer.json").write_text(tokenizer_json)
        _write_json(stage / "tokenizer_config.json", text_tokenizer.tokenizer_config(vocab))
        _write_json(stage / "special_tokens_map.json", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"})
        (stage / VOCAB_FILE).write_text(vocab.to_json())
        copied = bundle.copy_modality_tokenizers(modality_tokenizers, stage)
        listing = files + ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", VOCAB_FILE]
        listing += bundle.copy_generation_files(stage)
        text = bundle.readme(
            arch=arch, dtype=dtype, vocab=vocab, vocab_size=cfg.vocab_size, step=reader.step, workdir=str(reader.workdir),
            files=listing, tokenizers=sorted(modality_tokenizers), decoders=bundle.decoder_notes(modality_tokenizers),
        )
        (stage / "README.md").write_text(text)
    return {
        "out": str(out), "architecture": arch, "step": reader.step, "dtype": dtype, "files": listing + copied + ["README.md"],
        "tensors": len(plans), "bytes": sum(p.nbytes for p in plans),
    }
