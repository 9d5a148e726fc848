"""`mmntp import hf`: a Llama-family safetensors checkpoint as the initial parameters of a workdir.

Dimensions: V vocab rows, D model dim.

Accepted: `config.json` of model_type llama, mistral (full attention) or
qwen3, with `model.safetensors` or shards + `model.safetensors.index.json`
(float32, float16 or bfloat16). The result is a params-only workdir
(checkpoint_tools.py) at step 0, in float32, which training continues from.

Vocabulary. A folder exported by mmntp_jax (it has `mmntp_vocab.json`) keeps
its vocabulary: ids, tensors and tokenizers come back unchanged, so import →
export is the identity. Any other checkpoint's V text tokens keep their order
after our specials: unified id = `n_specials` + Hugging Face id, followed by a
new range per modality (`--image N`, `--audio N`, `--video N`). Its
tokenizer.json is moved up by `n_specials` ids and saved as the workdir's text
tokenizer (`tokenizers/text/tokenizer.json`).

New rows (our specials and the modality codes) of the embedding and of the
output head are initialised as the mean of the pretrained rows plus Gaussian
noise of `NEW_ROW_NOISE` × the per-dimension standard deviation of those rows
(seeded by `train.seed`), except `<pad>`, `<bos>` and `<eos>`, which copy the
rows of the checkpoint's own pad/bos/eos tokens when its config names them. The
mean keeps the new tokens' initial logits at the average logit, so they do not
take probability mass from the text before they are trained; the noise makes
the rows distinct.

Only files inside the model folder are read (`mmntp_jax.paths.inside`): an
index entry naming `../…` or an absolute path, or a file that is a symbolic
link out of the folder, is refused with one line naming it. A snapshot of the
Hugging Face cache (`…/models--ORG--NAME/snapshots/REV/`) links its files to
the repository's `blobs/`, so there the repository folder counts as the
folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from mmntp_jax.config import Config, validate
from mmntp_jax.data.vocab import DEFAULT_N_SPECIALS, Vocab
from mmntp_jax.errors import FileFormatError
from mmntp_jax.export import hf_layout, text_tokenizer
from mmntp_jax.export.bundle import copy_modality_tokenizers, modality_tokenizers
from mmntp_jax.export.checkpoint_tools import write_params_workdir
from mmntp_jax.export.hf import VOCAB_FILE
from mmntp_jax.export.safetensors_io import SafetensorsReader
from mmntp_jax.export.staging import check_output, staged_output
from mmntp_jax.paths import inside

NEW_ROW_NOISE = 0.1
IGNORED_TENSORS = ("rotary_emb.inv_freq",)  # buffers some older checkpoints carry
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


def _first_id(value):
    if isinstance(value, list):
        return value[0] if value else None
    return value


def extend_rows(rows_VD: np.ndarray, vocab: Vocab, size: int, copies: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """[size, D]: the pretrained rows at the text range, copies for `copies` {new id: old id}, new rows elsewhere."""
    rows_VD = rows_VD.astype(np.float32)
    mean_D, std_D = rows_VD.mean(0), rows_VD.std(0)
    out_VD = (mean_D + NEW_ROW_NOISE * std_D * rng.standard_normal((size, rows_VD.shape[1]))).astype(np.float32)
    start = vocab.offset("text")
    out_VD[start : start + rows_VD.shape[0]] = rows_VD
    for new_id, old_id in copies.items():
        out_VD[new_id] = rows_VD[old_id]
    return out_VD


def model_root(folder: Path) -> Path:
    """The folder whose files the model folder may link to: the repository for a Hugging Face cache snapshot, else itself."""
    real = Path(os.path.realpath(folder))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return folder


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as err:  # bad JSON or bad UTF-8
        raise FileFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _plan_vocab(folder: Path, hf: dict, modalities: dict[str, int], n_specials: int):
    """(vocab, model vocab_size, {new id: old id} special copies, text id shift) for the checkpoint."""
    v_hf = int(hf["vocab_size"])
    vocab_file = inside(folder, VOCAB_FILE, root=model_root(folder))
    if vocab_file.exists():
        if any(modalities.values()):
            raise ValueError(f"{folder} is an mmntp_jax export with its own vocabulary ({VOCAB_FILE}); it cannot be extended on import")
        return Vocab.from_json(json.dumps(_read_json(vocab_file))), v_hf, {}, 0
    vocab = Vocab((("text", v_hf),) + tuple((m, n) for m, n in modalities.items() if n), n_specials)
    copies = {}
    for ours, key in ((vocab.pad_id, "pad_token_id"), (vocab.bos_id, "bos_token_id"), (vocab.eos_id, "eos_token_id")):
        old = _first_id(hf.get(key))
        if old is not None and 0 <= int(old) < v_hf:
            copies[ours] = int(old)
    return vocab, vocab.size, copies, vocab.offset("text")


def _read_params(reader: SafetensorsReader, cfg, vocab: Vocab, vocab_size: int, copies: dict, shift: int, seed: int) -> dict:
    import jax

    from mmntp_jax.export.reader import flatten, unflatten
    from mmntp_jax.model.init import init_params

    shapes = {k: tuple(v.shape) for k, v in flatten(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))).items()}
    used, flat = set(), {}

    def get(name: str, shape) -> np.ndarray:
        if name not in reader:
            raise KeyError(f"checkpoint has no tensor {name!r} (expected a {hf_layout.architecture(cfg)} checkpoint)")
        if reader.shape(name) != tuple(shape):
            raise ValueError(f"checkpoint tensor {name} has shape {reader.shape(name)}, config.json implies {tuple(shape)}")
        used.add(name)
        return np.asarray(reader.get(name), np.float32)

    rng = np.random.default_rng(seed)
    for m in hf_layout.MAPPINGS:
        if m.ours not in shapes:
            continue
        shape = shapes[m.ours]
        if m.per_layer:
            layer_shape = hf_layout.hf_shape(m.kind, shape[1:])
            flat[m.ours] = np.stack([hf_layout.from_hf(m.kind, get(m.hf.format(i=i), layer_shape), shape[1:]) for i in range(cfg.n_layers)])
        elif m.ours in ("embed_tokens.embedding", "lm_head"):
            rows_VD = get(m.hf, (vocab_size if not shift else vocab.range_size("text"), cfg.d_model))
            if shift:
                rows_VD = extend_rows(rows_VD, vocab, vocab_size, copies, rng)
            flat[m.ours] = hf_layout.from_hf(m.kind, rows_VD, shape)
        else:
            flat[m.ours] = get(m.hf, shape)
    unexpected = [k for k in reader.keys() if k not in used and not k.endswith(IGNORED_TENSORS)]
    if cfg.tie_embeddings:
        unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if unexpected:
        raise hf_layout.NotExpressible(f"checkpoint tensors with no counterpart in the backbone: {', '.join(sorted(unexpected)[:8])}")
    return unflatten(flat)


def _text_tokenizer(folder: Path, vocab: Vocab, shift: int) -> tuple[str | None, str | None]:
    """(tokenizer.json text with unified ids or None, a warning or None)."""
    path = inside(folder, "tokenizer.json", root=model_root(folder))
    if not path.exists():
        return None, f"{folder} has no tokenizer.json: the workdir gets no text tokenizer"
    try:
        data = text_tokenizer.shift_tokenizer_json(json.loads(path.read_text()), shift) if shift else json.loads(path.read_text())
        text = json.dumps(text_tokenizer.declare_tokens(data, vocab), ensure_ascii=False)
    except ValueError as err:
        return None, f"{path}: {err}; the workdir gets no text tokenizer"
    if not shift and vocab.range_size("text") == 256 and text == text_tokenizer.byte_tokenizer_json(vocab):
        return None, None  # the byte tokenizer, which a workdir has by default
    return text, None


def import_hf(model_dir, out, *, config: Config | None = None, modalities: dict[str, int] | None = None, n_specials: int = DEFAULT_N_SPECIALS, force: bool = False) -> dict:
    """Writes a params-only workdir at `out` from the Hugging Face folder `model_dir`; returns a summary."""
    folder = Path(model_dir)
    root = model_root(folder)
    config_file = inside(folder, "config.json", root=root)
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    check_output(out, force)
    hf = _read_json(config_file)
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in hf]
    if missing:
        raise FileFormatError(f"{config_file}: no {', '.join(missing)} (expected the config of a Llama, Mistral or Qwen3 model, got model_type {hf.get('model_type')!r})")
    reader = SafetensorsReader.from_folder(folder, root=root)
    config = config or Config()
    vocab, vocab_size, copies, shift = _plan_vocab(folder, hf, dict(modalities or {}), n_specials)
    model = hf_layout.model_config_from_hf(hf, config.model, vocab_size)
    config = dataclasses.replace(config, model=model)
    if config.train.seq_len > model.max_seq_len:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, seq_len=model.max_seq_len))
    validate(config)
    vocab.check_model_vocab(model.vocab_size)
    params = _read_params(reader, model, vocab, vocab_size, copies, shift, config.train.seed)
    tokenizer_json, warning = _text_tokenizer(folder, vocab, shift)
    tokenizers = modality_tokenizers(folder, vocab, root=root)
    extra = {"imported_from": {"folder": str(folder.absolute()), "model_type": hf.get("model_type"), "text_id_shift": shift, "new_row_noise": NEW_ROW_NOISE}}
    with staged_output(out, force) as stage:
        write_params_workdir(stage, config, vocab, params, 0, extra)
        if tokenizer_json is not None:
            path = stage.joinpath(*text_tokenizer.TEXT_TOKENIZER_PATH)
            path.parent.mkdir(parents=True)
            path.write_text(tokenizer_json)
        copy_modality_tokenizers(tokenizers, stage, root=root)
    return {
        "out": str(out), "architecture": hf_layout.architecture(model), "vocab_size": model.vocab_size, "text_id_shift": shift,
        "ranges": [list(r) for r in vocab.ranges], "text_tokenizer": tokenizer_json is not None, "modality_tokenizers": sorted(tokenizers),
        "warning": warning,
    }
