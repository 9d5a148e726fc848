"""Tokenizer training experiments: frozen configs, loading, overrides, JSON round trip.

An experiment is `experiments/tokenizers/<name>.py` with `get_config() -> TokenizerExperiment`.
`kind` selects the model config class (image, audio, video); the optimizer,
checkpoint and mesh sections are the backbone's own (`mmntp_jax.config`).
Overrides are `section.key=value`, e.g. `train.steps=200` or `model.quantizer.kind=vq`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmntp_jax.config import CheckpointConfig, ConfigError, MeshConfig, OptimConfig, apply_overrides, check_types, check_guard_keys, from_dict, load_experiment, mesh_shape
from mmntp_jax.paths import resolve_config_paths
from mmntp_jax.tokenizers.audio import AudioTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.gan import GanConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.tokenizers.video import VideoTokenizerConfig

MODEL_CONFIGS = {"image": ImageTokenizerConfig, "audio": AudioTokenizerConfig, "video": VideoTokenizerConfig}
SOURCES = {"image": ("shapes", "photos", "folder", "manifest"), "audio": ("digits", "folder"), "video": ("videos", "npy")}


@dataclass(frozen=True)
class TokenizerDataConfig:
    """source: shapes | photos | folder | manifest (image), digits | folder (audio), videos | npy (video).
    path: the folder (PNG/JPEG or WAV; its last eval_items files are held out), the manifest
    (its distinct image files; the last eval_items, at most a tenth, are held out) or the .npy
    file ([N, T, H, W, C] in [0, 1]). train_items are generated (or cut) once; clip_seconds: audio length."""

    source: str = "shapes"
    path: str = field(default="", metadata={"path": True})
    train_items: int = 8192
    eval_items: int = 256
    seed: int = 0
    clip_seconds: float = 0.5


@dataclass(frozen=True)
class LossConfig:
    """reconstruction: l1 or l2 on pixels / samples; stft_weight: multi-resolution STFT (audio)."""

    reconstruction: str = "l2"
    reconstruction_weight: float = 1.0
    stft_weight: float = 1.0
    gan: GanConfig = field(default_factory=GanConfig)


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """ema_decay: keep an exponential moving average of the parameters (0 = off); when on,
    evaluation, samples and the exported tokenizer use the average, and eval also reports
    the raw parameters' figures as `raw/…`. max_bad_steps, spike_factor, on_schedule_change:
    the fault guards and schedule changes of the backbone's train section (docs/reliability.md)."""

    steps: int = 2000
    batch_size: int = 32
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    samples: int = 8
    ema_decay: float = 0.0
    progress: bool = True
    compilation_cache: str = field(default="~/.cache/mmntp_jax/xla", metadata={"path": True})
    max_bad_steps: int = 10
    spike_factor: float = 0.0
    on_schedule_change: str = "refuse"


@dataclass(frozen=True)
class TokenizerExperiment:
    name: str = "tokenizer"
    kind: str = "image"
    model: Any = field(default_factory=ImageTokenizerConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=100, weight_decay=0.0, b2=0.99))
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=500, keep=2))
    mesh: MeshConfig = field(default_factory=MeshConfig)


def validate(exp: TokenizerExperiment, *, device_count: int | None = None) -> None:
    if exp.kind not in MODEL_CONFIGS:
        raise ConfigError(f"config key 'kind': {exp.kind!r} is not one of {', '.join(MODEL_CONFIGS)}")
    if not isinstance(exp.model, MODEL_CONFIGS[exp.kind]):
        raise ConfigError(f"config key 'model': kind {exp.kind!r} needs a {MODEL_CONFIGS[exp.kind].__name__}, got {type(exp.model).__name__}")
    check_types(exp, "")
    exp.model.validate("model")
    exp.loss.gan.validate("loss.gan")
    d, t = exp.data, exp.train
    if d.source not in SOURCES[exp.kind]:
        raise ConfigError(f"config key 'data.source': {d.source!r} is not one of {', '.join(SOURCES[exp.kind])} for {exp.kind} tokenizers")
    if d.source in ("folder", "npy", "manifest") and not d.path:
        raise ConfigError(f"config key 'data.path': data.source={d.source} needs a path")
    if exp.loss.reconstruction not in ("l1", "l2"):
        raise ConfigError(f"config key 'loss.reconstruction': {exp.loss.reconstruction!r} is not one of l1, l2")
    if exp.loss.gan.weight > 0 and exp.kind == "audio":
        raise ConfigError("config key 'loss.gan.weight': the patch GAN is for image and video tokenizers; set it to 0 for audio")
    for key, value in (("train.steps", t.steps), ("train.batch_size", t.batch_size), ("data.train_items", d.train_items), ("data.eval_items", d.eval_items), ("train.log_every", t.log_every), ("train.eval_every", t.eval_every)):
        if value < 1:
            raise ConfigError(f"config key '{key}': must be ≥ 1, got {value}")
    check_guard_keys(t)
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"config key 'train.ema_decay': must be in [0, 1), got {t.ema_decay}")
    if device_count is not None:
        sizes = mesh_shape(exp.mesh, device_count)
        if sizes["tensor"] != 1 or sizes["sequence"] != 1:
            raise ConfigError("mesh: tokenizer training is data-parallel; set mesh.tensor=1 and mesh.sequence=1")
        shards = sizes["data"] * sizes["fsdp"]
        if t.batch_size % shards:
            raise ConfigError(f"config key 'train.batch_size': {t.batch_size} is not divisible by mesh data×fsdp={shards}")


def load(path, overrides=(), *, device_count: int | None = None) -> TokenizerExperiment:
    exp = load_experiment(path, TokenizerExperiment)
    exp = resolve_config_paths(apply_overrides(exp, overrides))
    validate(exp, device_count=device_count)
    return exp


def to_json(exp: TokenizerExperiment) -> str:
    return json.dumps(dataclasses.asdict(exp), indent=2)


def model_from_dict(kind: str, data: dict):
    """A model config of `kind` from its dict (the quantizer sub-config included)."""
    if kind not in MODEL_CONFIGS:
        raise ConfigError(f"tokenizer kind {kind!r} is not one of {', '.join(MODEL_CONFIGS)}")
    data = dict(data)
    quantizer = from_dict(QuantizerConfig, data.pop("quantizer"))
    return dataclasses.replace(from_dict(MODEL_CONFIGS[kind], data), quantizer=quantizer)


def from_json(text: str) -> TokenizerExperiment:
    data = json.loads(text)
    model = model_from_dict(data["kind"], data.pop("model"))
    return dataclasses.replace(from_dict(TokenizerExperiment, {k: v for k, v in data.items()}), model=model)


def load_workdir_config(workdir) -> TokenizerExperiment:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a tokenizer workdir (made by `mmntp tokenizer train`)?")
    return from_json(path.read_text())
