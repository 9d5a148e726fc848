"""Saving and loading tokenizers: `tokenizer.safetensors` (tensors) + `tokenizer.json` (kind, config, version).

Tensor names are the module's parameter paths joined by dots
(`encoder.down_blocks.0.resnets.0.conv1.conv.kernel`, `quantize.embedding`).
Loading rebuilds the module from the JSON config and fills it; a file whose
tensors do not match the config (names or shapes), a config that differs from
the one expected, or a newer format version fails with a message naming them.
Both files are read only from inside the folder: a symbolic link out of it is
refused (`mmntp_jax.paths.inside`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmntp_jax.tokenizers.registry import MODULES, Tokenizer, build_module

FORMAT = "mmntp_jax.tokenizer"
VERSION = 1
WEIGHTS, CONFIG = "tokenizer.safetensors", "tokenizer.json"


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be loaded as asked; the message names the file."""


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


def config_dict(tokenizer: Tokenizer) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": tokenizer.kind, "config": dataclasses.asdict(tokenizer.config)}


def save_tokenizer(tokenizer: Tokenizer, directory, params=None) -> Path:
    """Writes `directory/tokenizer.safetensors` and `directory/tokenizer.json`; returns the directory."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _flat(tokenizer.params if params is None else params)
    meta = config_dict(tokenizer)
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION), "kind": tokenizer.kind})
    if tokenizer.discrete:
        meta["vocab_size"] = tokenizer.vocab_size
    meta["tokens_per_item"] = tokenizer.tokens_per_item()
    (directory / CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def _config_from(kind: str, data: dict, source: Path):
    from mmntp_jax.config import ConfigError, from_dict
    from mmntp_jax.tokenizers.bottleneck import QuantizerConfig

    if kind not in MODULES:
        raise TokenizerFileError(f"{source}: unknown tokenizer kind {kind!r}; expected one of {', '.join(MODULES)}")
    data = dict(data)
    try:
        quantizer = from_dict(QuantizerConfig, data.pop("quantizer")) if "quantizer" in data else None
        config = from_dict(MODULES[kind][1], data)
    except (ConfigError, TypeError) as err:
        raise TokenizerFileError(f"{source}: config does not fit a {kind} tokenizer: {err}") from None
    return dataclasses.replace(config, quantizer=quantizer) if quantizer is not None else config


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {vb!r} in the file, {va!r} expected")
    return out


def read_config(directory) -> dict:
    from mmntp_jax.paths import inside

    path = inside(directory, CONFIG)  # a symbolic link out of the folder is refused
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer config {path}: not found (a tokenizer directory holds {CONFIG} and {WEIGHTS})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TokenizerFileError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise TokenizerFileError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise TokenizerFileError(f"{path}: format version {meta['version']} is newer than this library's {VERSION}; upgrade mmntp_jax")
    return meta


def load_tokenizer(directory, *, expect_config=None) -> Tokenizer:
    """Rebuilds the tokenizer saved in `directory`. With `expect_config`, a different saved config is an error."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from mmntp_jax.paths import inside

    directory = Path(directory)
    meta = read_config(directory)
    config = _config_from(meta["kind"], meta["config"], directory / CONFIG)
    if expect_config is not None and config != expect_config:
        diffs = _differences(dataclasses.asdict(expect_config), dataclasses.asdict(config))
        raise TokenizerFileError(f"{directory}: saved with a different config ({'; '.join(diffs[:6])})")
    graph, state = nnx.split(nnx.eval_shape(lambda: build_module(meta["kind"], config)))  # shapes only: every value comes from the file
    weights = inside(directory, WEIGHTS)
    if not weights.is_file():
        raise FileNotFoundError(f"tokenizer weights {weights}: not found")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise TokenizerFileError(f"{weights}: not a readable safetensors file ({err})") from None
    expected = {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tensors[k].shape} vs {tuple(expected[k].shape)}" for k in expected if k in tensors and tensors[k].shape != tuple(expected[k].shape)]
    if missing or extra or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {extra[:4]}" if extra else "", f"shapes differ: {wrong[:4]}" if wrong else ""]
        raise TokenizerFileError(f"{weights}: tensors do not match the config in {CONFIG} ({'; '.join(p for p in parts if p)})")
    for path, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(tensors[".".join(map(str, path))], expected[".".join(map(str, path))].dtype))
    return Tokenizer(meta["kind"], config, nnx.merge(graph, state))
