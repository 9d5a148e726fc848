"""Validation of a Config: types, choices, positive sizes, the mesh against the devices.

`validate` runs when a config is loaded; each problem is one `ConfigError`
line naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Sequence

from mmntp_jax.config import (
    ATTENTION_IMPLS, DATA_ON_ERROR, DIFFUSION_FORMS, DTYPES, IMAGE_INPUTS, IMAGE_OUTPUTS, IMAGE_READERS, JOB_KINDS, JOB_TEXT_TOKENIZERS, LAYER_LOOPS, MASK_KINDS, ON_SCHEDULE_CHANGE, REGRESSION_LOSSES, REMAT_POLICIES,
    SCHEDULES, Config, ConfigError, MeshConfig,
)


def check_types(node, prefix: str) -> None:
    """Every field of the dataclass tree `node` has its declared type (one ConfigError naming the key otherwise)."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, expected, key = getattr(node, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_types(value, key + ".")
            continue
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(expected, isinstance(value, (tuple, list)) if typing.get_origin(expected) in (tuple, list) or expected is tuple else True)
        if not ok:
            name = getattr(expected, "__name__", str(expected))
            raise ConfigError(f"config key {key!r}: expected {name}, got {type(value).__name__} {value!r}")


def _choice(value, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, choices))}")


def _positive(node, prefix: str, names: Sequence[str]) -> None:
    for name in names:
        if getattr(node, name) <= 0:
            raise ConfigError(f"config key '{prefix}.{name}': must be > 0, got {getattr(node, name)}")


def check_loss_weights(weights, key: str = "train.loss_weights") -> None:
    """Each entry a (modality, weight) pair with a known modality, once, and a finite weight ≥ 0."""
    from mmntp_jax.data.vocab import MODALITIES

    seen = set()
    for entry in weights:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or isinstance(entry[1], bool) or not isinstance(entry[1], (int, float)):
            raise ConfigError(f"config key {key!r}: entry {entry!r} is not a (modality, weight) pair, e.g. ('image', 0.5)")
        name, weight = entry
        if name not in MODALITIES:
            raise ConfigError(f"config key {key!r}: unknown modality {name!r}; valid modalities: {', '.join(MODALITIES)}")
        if name in seen:
            raise ConfigError(f"config key {key!r}: modality {name!r} is given twice")
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"config key {key!r}: weight of {name!r} must be a finite number ≥ 0, got {weight}")
        seen.add(name)


def check_guard_keys(train, prefix: str = "train") -> None:
    """train.max_bad_steps ≥ 1, train.spike_factor 0 (off) or > 1, train.on_schedule_change a known choice."""
    if isinstance(train.max_bad_steps, bool) or not isinstance(train.max_bad_steps, int) or train.max_bad_steps < 1:
        raise ConfigError(f"config key '{prefix}.max_bad_steps': must be an integer ≥ 1, got {train.max_bad_steps!r}")
    if not (train.spike_factor == 0 or (math.isfinite(train.spike_factor) and train.spike_factor > 1)):
        raise ConfigError(f"config key '{prefix}.spike_factor': must be 0 (off) or a finite number > 1, got {train.spike_factor}")
    _choice(train.on_schedule_change, ON_SCHEDULE_CHANGE, f"{prefix}.on_schedule_change")


def mesh_shape(mesh: MeshConfig, device_count: int) -> dict[str, int]:
    """Resolves a -1 axis so the mesh covers `device_count` devices exactly."""
    sizes = mesh.axis_sizes()
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got {', '.join(free)}")
    for k, v in sizes.items():
        if v == 0 or v < -1:
            raise ConfigError(f"config key 'mesh.{k}': must be ≥ 1 or -1 (fill), got {v}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if device_count % fixed:
            raise ConfigError(f"mesh: fixed axes multiply to {fixed}, which does not divide the {device_count} devices")
        sizes[free[0]] = device_count // fixed
    if math.prod(sizes.values()) != device_count:
        shape = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ConfigError(f"mesh: {shape} has {math.prod(sizes.values())} devices but {device_count} are available; set the axes to multiply to {device_count} or one axis to -1")
    return sizes


def validate(config: Config, *, device_count: int | None = None) -> None:
    """Raises ConfigError on the first invalid key or impossible combination."""
    check_types(config, "")
    m, t, o, c, d = config.model, config.train, config.optim, config.checkpoint, config.data
    _positive(m, "model", ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"])
    _positive(t, "train", ["steps", "batch_size", "seq_len"])
    check_guard_keys(t)
    _positive(c, "checkpoint", ["every", "keep"])
    _positive(o, "optim", ["grad_accum"])
    _choice(m.dtype, DTYPES, "model.dtype")
    _choice(m.param_dtype, DTYPES, "model.param_dtype")
    _choice(m.remat, REMAT_POLICIES, "model.remat")
    _choice(m.scan_layers, LAYER_LOOPS, "model.scan_layers")
    _choice(m.attention, ATTENTION_IMPLS, "model.attention")
    _choice(m.attention_mask, MASK_KINDS, "model.attention_mask")
    _choice(m.image_input, IMAGE_INPUTS, "model.image_input")
    _choice(m.image_output, IMAGE_OUTPUTS, "model.image_output")
    _choice(m.image_reader, IMAGE_READERS, "model.image_reader")
    if m.image_reader != "none":
        _positive(m, "model", ["image_reader_layers", "image_grid_width"])
    _choice(m.regression_loss, REGRESSION_LOSSES, "model.regression_loss")
    _choice(m.diffusion_form, DIFFUSION_FORMS, "model.diffusion_form")
    _positive(m, "model", ["diffusion_width", "diffusion_depth", "diffusion_samples", "diffusion_steps"])
    for k, entry in enumerate(d.mixture):
        if isinstance(entry, (tuple, list)) and len(entry) == 4:
            _choice(entry[3], MASK_KINDS, f"data.mixture[{k}] mask kind")
    _choice(o.schedule, SCHEDULES, "optim.schedule")
    _choice(config.job.kind, JOB_KINDS, "job.kind")
    _positive(config.job, "job", ["items", "eval_items", "sheet_items", "generate_batch"])
    _choice(config.job.text_tokenizer, JOB_TEXT_TOKENIZERS, "job.text_tokenizer")
    if config.job.temperature < 0 or config.job.guidance <= 0:
        raise ConfigError(f"config keys 'job.temperature' ≥ 0 and 'job.guidance' > 0 expected, got {config.job.temperature} and {config.job.guidance}")
    if config.job.text_tokenizer == "bpe" and config.job.text_vocab < 257:
        raise ConfigError(f"config key 'job.text_vocab': a byte-level BPE needs at least 257 ids (256 bytes + merges), got {config.job.text_vocab}")
    if bool(d.manifest) != bool(d.eval_manifest):
        raise ConfigError("config keys 'data.manifest' and 'data.eval_manifest': give both (training documents and held-out pairs) or neither")
    check_loss_weights(t.loss_weights)
    from mmntp_jax.data.sources import SOURCES

    _choice(d.source, tuple(SOURCES), "data.source")
    _choice(d.on_error, DATA_ON_ERROR, "data.on_error")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"config key 'model.n_heads': {m.n_heads} is not divisible by model.n_kv_heads={m.n_kv_heads}")
    if not m.head_dim and m.d_model % m.n_heads:
        raise ConfigError(f"config key 'model.d_model': {m.d_model} is not divisible by model.n_heads={m.n_heads}; set model.head_dim")
    if m.resolved_head_dim % 2:
        raise ConfigError(f"config key 'model.head_dim': RoPE needs an even head dim, got {m.resolved_head_dim}")
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"config key 'train.seq_len': {t.seq_len} exceeds model.max_seq_len={m.max_seq_len}")
    if t.cpu_devices < -1:
        raise ConfigError(f"config key 'train.cpu_devices': expected 0 (default), -1 (one per core) or a count ≥ 1, got {t.cpu_devices}")
    if not 0.0 <= d.cfg_dropout < 1.0:
        raise ConfigError(f"config key 'data.cfg_dropout': must be in [0, 1), got {d.cfg_dropout}")
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ConfigError(f"config key 'data.eval_fraction': must be in [0, 1), got {d.eval_fraction}")
    if d.piece_bytes < 0 or (d.piece_bytes and d.source != "stdlib"):
        raise ConfigError(f"config key 'data.piece_bytes': {d.piece_bytes} must be 0, or > 0 with data.source='stdlib' (got {d.source!r})")
    if not 0.0 <= o.decay_fraction <= 1.0:
        raise ConfigError(f"config key 'optim.decay_fraction': must be in [0, 1], got {o.decay_fraction}")
    if t.batch_size % o.grad_accum:
        raise ConfigError(f"config key 'train.batch_size': {t.batch_size} is not divisible by optim.grad_accum={o.grad_accum}")
    if device_count is not None:
        sizes = mesh_shape(config.mesh, device_count)
        batch_shards = sizes["data"] * sizes["fsdp"]
        micro = t.batch_size // o.grad_accum
        if micro % batch_shards:
            raise ConfigError(f"config key 'train.batch_size': micro-batch {micro} is not divisible by mesh data×fsdp={batch_shards}")
        if t.seq_len % sizes["sequence"]:
            raise ConfigError(f"config key 'train.seq_len': {t.seq_len} is not divisible by mesh.sequence={sizes['sequence']}")
        if m.n_kv_heads % sizes["tensor"] or m.n_heads % sizes["tensor"]:
            raise ConfigError(f"config key 'mesh.tensor': {sizes['tensor']} does not divide model.n_kv_heads={m.n_kv_heads} and model.n_heads={m.n_heads}")


