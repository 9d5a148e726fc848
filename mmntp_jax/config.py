"""Frozen dataclass configs, experiment loading, overrides and validation.

An experiment is a Python file exposing `get_config() -> Config`. Overrides are
`section.key=value` strings, parsed against the field's declared type. Every
error is a `ConfigError` whose message is one line naming the key and the
valid choices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is valid."""


DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("xla", "reference", "blockwise")
MASK_KINDS = ("causal", "prefix", "block")  # model.attention_mask; index = PackedBatch `mask_kind`
SCHEDULES = ("cosine", "wsd", "constant")
ON_SCHEDULE_CHANGE = ("refuse", "restart_schedule")  # train.on_schedule_change (mmntp_jax/train/resume_check.py)
DATA_ON_ERROR = ("stop", "skip")  # data.on_error (mmntp_jax/data/records.py)
JOB_KINDS = ("", "captioned")
JOB_TEXT_TOKENIZERS = ("bytes", "bpe")
LossWeights = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer. HF Llama naming; head_dim 0 = d_model // n_heads."""

    vocab_size: int = 256 + 16
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0
    d_ff: int = 1024
    rope_theta: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "blockwise"  # fastest measured (docs/benchmarks.md); T ≤ attention_block runs xla
    attention_block: int = 512
    # causal | prefix (bidirectional context prefix) | block (bidirectional context media blocks)
    attention_mask: str = "causal"
    remat: str = "none"
    scan_layers: bool = True
    max_seq_len: int = 8192

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


@dataclass(frozen=True)
class DataConfig:
    """Where training tokens come from."""

    source: str = "stdlib"
    path: str = field(default="", metadata={"path": True})
    eval_fraction: float = 0.02
    pack_window: int = 256
    num_workers: int = 0
    read_threads: int = 2
    mixture: tuple = field(default=(), metadata={"path": "entries"})
    # stdlib: cut each file into pieces of at most this many bytes before the shuffle
    # (0 = whole files), so one long file does not fill many consecutive batches
    piece_bytes: int = 0
    # the staged captioned job (job.kind="captioned"): the user's documents and held-out
    # image/caption pairs (JSONL, docs/data.md); both empty = the embedded captioned shapes
    manifest: str = field(default="", metadata={"path": True})
    eval_manifest: str = field(default="", metadata={"path": True})
    # caption dropout: the probability that a training document's context text before
    # a trained media block is dropped (classifier-free guidance; see data/pipeline.py)
    cfg_dropout: float = 0.0
    # a bad shard record (truncated, wrong token dtype, id outside the vocabulary):
    # stop = one error naming shard, record and manifest line; skip = drop it, counted
    # (data/skipped_records) and listed in WORKDIR/data_errors.jsonl (data/records.py)
    on_error: str = "stop"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with decoupled weight decay, a schedule and global-norm clipping."""

    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    grad_accum: int = 1


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape over ("data", "fsdp", "tensor", "sequence"); -1 fills."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    sequence: int = 1

    def axis_sizes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor, "sequence": self.sequence}


@dataclass(frozen=True)
class CheckpointConfig:
    """orbax checkpointing: save every N steps (and at the last), keep the last K."""

    every: int = 200
    keep: int = 3
    async_save: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The loop: steps, global batch, sequence length, seed, logging and eval."""

    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    seed: int = 0
    z_loss: float = 1e-4
    loss_chunk: int = 0
    # per-modality loss weights as (modality, weight) pairs, e.g. (("image", 0.5),);
    # unlisted modalities weigh 1 (`--set train.loss_weights=text:1,image:0.5`)
    loss_weights: tuple[tuple[str, float], ...] = ()
    # normalise each target's softmax over its modality's ids + the legal specials only
    modality_softmax: bool = False
    eval_every: int = 200
    eval_batches: int = 4
    log_every: int = 10
    peak_flops: float = 0.0
    # on a CPU-only machine, train data-parallel over this many CPU devices (0 = JAX's
    # default of one, -1 = one per core); `--cpu-devices N` overrides it
    cpu_devices: int = 0
    compilation_cache: str = field(default="~/.cache/mmntp_jax/xla", metadata={"path": True})
    progress: bool = True
    # fault guards (train/guards.py): stop after this many steps in a row were not applied
    # (non-finite loss, gradient norm or parameters; or a loss spike); spike_factor k > 0 also
    # skips a step whose loss exceeds k × the running mean (0 = off)
    max_bad_steps: int = 10
    spike_factor: float = 0.0
    # resuming with another learning-rate schedule (optim.lr, train.steps, …): refuse | restart_schedule
    on_schedule_change: str = "refuse"

    def __post_init__(self):
        if isinstance(self.loss_weights, dict):  # an experiment may write {"image": 0.5}
            object.__setattr__(self, "loss_weights", tuple(self.loss_weights.items()))


@dataclass(frozen=True)
class JobConfig:
    """The staged job `mmntp train` runs when `kind` is set (docs/job.md).

    kind "captioned": image tokenizer → shards → backbone → evaluation → sample sheet, on
    captioned images (the embedded shapes, or `data.manifest` / `data.eval_manifest`).
    tokenizer: a trained image tokenizer folder to use; "" trains one in the workdir from
    `tokenizer_config` (an experiment file; "" = experiments/tokenizers/image_job.py), with
    `tokenizer_steps` / `tokenizer_items` overriding its train.steps / data.train_items when
    > 0. items / eval_items: embedded shapes drawn for training / held out for evaluation.
    text_tokenizer: "bpe" trains a byte-level BPE of at most `text_vocab` ids on the
    training documents' text (a caption becomes a few word tokens instead of one id per
    byte, so a step sees twice the items); "bytes" keeps one id per UTF-8 byte.
    model.vocab_size must cover 16 specials + the text ids + the image codes.
    classifier_steps: training steps of the evaluation's image classifier (0 = its default).
    guidance, temperature: classifier-free guidance scale (1 = none) and sampling
    temperature (0 = greedy) of the evaluation's drawings (seed 0, so deterministic).
    """

    kind: str = ""
    tokenizer: str = field(default="", metadata={"path": True})
    tokenizer_config: str = field(default="", metadata={"path": True})
    tokenizer_steps: int = 0
    tokenizer_items: int = 0
    text_tokenizer: str = "bytes"
    text_vocab: int = 512
    items: int = 4000
    eval_items: int = 500
    sheet_items: int = 8
    generate_batch: int = 64
    classifier_steps: int = 0
    guidance: float = 1.0
    temperature: float = 0.0


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    job: JobConfig = field(default_factory=JobConfig)


# ----------------------------------------------------------------------------
# Loading and overrides


DEFAULT_EXPERIMENT = "captioned"


def repo_experiment(name: str) -> Path:
    """experiments/<name>.py of this checkout (the files the defaults refer to)."""
    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"experiment {path} is missing; pass --config experiments/<name>.py")
    return path


def default_experiment_path() -> Path:
    """The no-config job: experiments/<DEFAULT_EXPERIMENT>.py of this checkout."""
    return repo_experiment(DEFAULT_EXPERIMENT)


def load_experiment(path: str | Path, expected: type | tuple[type, ...] | None = None):
    """Imports `path` and returns its `get_config()` (a .json file is a resolved config, e.g. a workdir's);
    with `expected`, anything else is a ConfigError. Every failure is one ConfigError line naming the file
    (mmntp_jax/experiment_file.py)."""
    from mmntp_jax.experiment_file import run_experiment_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: {'is a directory' if path.is_dir() else 'not found'}")
    if path.suffix != ".json":
        return run_experiment_file(path, expected)
    config = load_json(path)
    if expected is not None and not isinstance(config, expected):
        raise ConfigError(f"config file {path}: a resolved training config (.json), expected the .py experiment of a {getattr(expected, '__name__', expected)}")
    return config


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, device_count: int | None = None):
    """Experiment file (or the default job) + `key=value` overrides, validated;
    path-valued keys are made absolute against the current directory."""
    from mmntp_jax.paths import resolve_config_paths

    if path is None:
        path = default_experiment_path()
    config = resolve_config_paths(apply_overrides(load_experiment(path, Config), overrides))
    validate(config, device_count=device_count)
    return config


def apply_overrides(config, overrides: Sequence[str]):
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.n_layers=4")
        key, raw = item.split("=", 1)
        config = _set_path(config, key.strip().split("."), raw.strip(), key.strip())
    return config


def _set_path(node, parts: list[str], raw: str, full_key: str):
    names = [f.name for f in dataclasses.fields(node)]
    if parts[0] not in names:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys here: {', '.join(names)}")
    hints = typing.get_type_hints(type(node))
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {full_key!r}: {parts[0]} has no sub-keys")
        return dataclasses.replace(node, **{parts[0]: _set_path(current, parts[1:], raw, full_key)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config key {full_key!r} is a section; set one of its keys, e.g. {full_key}.{dataclasses.fields(current)[0].name}=…")
    return dataclasses.replace(node, **{parts[0]: parse_value(raw, hints[parts[0]], full_key)})


def parse_value(raw: str, annotation, key: str):
    """Parses `raw` as `annotation` (int, float, bool, str, tuple)."""
    origin = typing.get_origin(annotation) or annotation
    if annotation == LossWeights:
        return parse_loss_weights(raw, key)
    try:
        if annotation is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is str:
            return raw
        if origin in (tuple, list):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    except (ValueError, json.JSONDecodeError):
        name = getattr(annotation, "__name__", str(annotation))
        hint = " (a JSON list, e.g. [1, 2])" if origin in (tuple, list) else ""
        raise ConfigError(f"config key {key!r}: cannot parse {raw!r} as {name}{hint}") from None
    raise ConfigError(f"config key {key!r}: unsupported type {annotation}")


def parse_loss_weights(raw: str, key: str) -> LossWeights:
    """`text:1,image:0.5`, a JSON object or list of pairs, or empty → ((modality, weight), …)."""
    try:
        if raw.lstrip().startswith(("{", "[")):
            value = json.loads(raw)
            pairs = value.items() if isinstance(value, dict) else value
        else:
            pairs = [item.split(":") for item in raw.split(",") if item.strip()]
        return tuple((str(name).strip(), float(weight)) for name, weight in pairs)
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError):
        raise ConfigError(f"config key {key!r}: cannot parse {raw!r} as modality:weight pairs, e.g. text:1,image:0.5") from None


# ----------------------------------------------------------------------------
# Validation


def _check_type(node, prefix: str) -> None:
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, expected, key = getattr(node, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_type(value, key + ".")
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
    _check_type(config, "")
    m, t, o, c, d = config.model, config.train, config.optim, config.checkpoint, config.data
    _positive(m, "model", ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"])
    _positive(t, "train", ["steps", "batch_size", "seq_len"])
    check_guard_keys(t)
    _positive(c, "checkpoint", ["every", "keep"])
    _positive(o, "optim", ["grad_accum"])
    _choice(m.dtype, DTYPES, "model.dtype")
    _choice(m.param_dtype, DTYPES, "model.param_dtype")
    _choice(m.remat, REMAT_POLICIES, "model.remat")
    _choice(m.attention, ATTENTION_IMPLS, "model.attention")
    _choice(m.attention_mask, MASK_KINDS, "model.attention_mask")
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


# ----------------------------------------------------------------------------
# Serialisation


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_dict(cls, data: dict[str, Any]):
    """Rebuilds a dataclass tree from `to_dict` output (unknown keys are errors)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_json(path: str | Path) -> Config:
    """The resolved config saved as JSON (a workdir's config.json); a damaged file is one ConfigError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as err:  # bad JSON or bad UTF-8
        raise ConfigError(f"config file {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a JSON object of config sections, got {type(data).__name__}")
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except (TypeError, AttributeError) as err:  # a section that is not an object, a value of the wrong shape
        raise ConfigError(f"config file {path}: not a resolved config ({err})") from None
