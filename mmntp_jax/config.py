"""Frozen dataclass configs: every section of a run and the valid choices of its keys.

An experiment is a Python file exposing `get_config() -> Config`. Loading,
`section.key=value` overrides and JSON live in config_load.py, validation in
config_checks.py; both are re-exported here, so `mmntp_jax.config` is the one
import for configs. Every error is a `ConfigError` whose message is one line
naming the key and the valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is valid."""


DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ATTENTION_IMPLS = ("xla", "reference", "blockwise")
MASK_KINDS = ("causal", "prefix", "block")  # model.attention_mask; index = PackedBatch `mask_kind`
IMAGE_INPUTS = ("discrete", "continuous")  # model.image_input
IMAGE_OUTPUTS = ("discrete", "regression", "diffusion")  # model.image_output (model/continuous_output.py)
IMAGE_READERS = ("none", "conv", "pixels")  # model.image_reader (model/image_reader.py, model/pixel_reader.py)
REGRESSION_LOSSES = ("mse", "cosine")  # model.regression_loss
# model.diffusion_form: token = a denoiser per position, conditioned on its hidden state (MAR);
# block = the image block noised in the sequence, bidirectional, denoised at once (Transfusion)
DIFFUSION_FORMS = ("token", "block")
# model.scan_layers: auto = unroll small models, scan the rest (model/transformer.py `layer_loop`)
LAYER_LOOPS = ("auto", "scan", "unroll")
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
    attention: str = "blockwise"  # fastest measured (docs/benchmarks.md); T ≤ attention_block: two tiles of T/2 (xla when T/2 < 128)
    attention_block: int = 512
    # causal | prefix (bidirectional context prefix) | block (bidirectional context media blocks)
    attention_mask: str = "causal"
    # discrete: image codes have embedding rows | continuous: an image code enters as the image
    # tokenizer's quantized latent, projected (model/continuous_input.py); the job sets the two keys below
    image_input: str = "discrete"
    # discrete: the next image code through lm_head | regression: its latent, by a linear head (CTP) |
    # diffusion: its latent, sampled by a flow-matching denoiser (model/continuous_output.py)
    image_output: str = "discrete"
    image_feature_dim: int = 0  # the latent width F of continuous input and output
    image_tokenizer: str = field(default="", metadata={"path": True})  # the tokenizer folder the latents come from
    # none | conv: 3 × 3 convolutions over each context image's code grid, added to its embeddings (model/image_reader.py)
    # | pixels: each context image decoded by the (frozen) tokenizer decoder, read by a trained CNN (model/pixel_reader.py)
    image_reader: str = "none"
    image_reader_layers: int = 3
    image_reader_channels: int = 64  # C; 0 = d_model
    image_grid_width: int = 8  # codes per grid row (the captioned job sets it from its image tokenizer)
    regression_loss: str = "mse"  # image_output=regression: mse | cosine
    diffusion_form: str = "token"  # image_output=diffusion: token (a denoiser per position) | block (model/diffusion_block.py)
    diffusion_width: int = 128  # W of the denoiser MLP
    diffusion_depth: int = 3  # its residual blocks
    diffusion_samples: int = 4  # (t, noise) draws per image target and step
    diffusion_steps: int = 32  # Euler steps when sampling
    remat: str = "none"
    # auto | scan (jax.lax.scan over the stacked layers: compile time flat in depth) | unroll
    # (a Python loop over the same parameters); auto unrolls up to 8 layers whose [B, T, D]
    # activations hold at most 2^21 elements, where it measured faster (docs/benchmarks.md).
    # The booleans of older configs read as scan (true) and unroll (false).
    scan_layers: str = "auto"
    max_seq_len: int = 8192

    def __post_init__(self):
        if isinstance(self.scan_layers, bool) or self.scan_layers in ("true", "false"):
            object.__setattr__(self, "scan_layers", "scan" if self.scan_layers in (True, "true") else "unroll")

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


from mmntp_jax.config_checks import check_guard_keys, check_loss_weights, check_types, mesh_shape, validate  # noqa: E402,F401
from mmntp_jax.config_load import (  # noqa: E402,F401
    DEFAULT_EXPERIMENT, apply_overrides, default_experiment_path, from_dict, load_config, load_experiment, load_json,
    parse_loss_weights, parse_value, repo_experiment, save_json, to_dict, to_json,
)
