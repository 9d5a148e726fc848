"""The judge's classifier: a small multi-head conv net, trained with optax on real images and their labels.

    images [N, H, W, C] (uint8 or float in [0, 1], grey, RGB or RGBA, any size)
      │ `prepare_images`: RGB float32 in [0, 1], resized to S×S (linear, antialiased)
      ▼ ×2 − 1, space-to-depth 2×2                               [N, S/2, S/2, 12]
    1×1 conv → c0, 3×3 conv stride 2 → c1, 3×3 conv → c2, 3×3 conv → c3  (GELU after each)
      ▼ global mean ‖ global max                                 [N, 2·c3]
    one linear head per label head                               {head: logits [N, K]}

Trained from scratch on the training images only (never the model under
evaluation), with soft cross-entropy against each head's target distribution,
AdamW and a warm-up + cosine schedule, for a fixed number of steps (`auto_steps`
unless set) of fixed batches: each step's images are drawn from a permutation seeded by
`ClassifierConfig.seed`, and with `augment="dihedral"` each image is turned by a
seeded multiple of 90° and maybe mirrored (for labels that do not depend on
orientation only) — and `predict` then averages the 8 turned and mirrored views.
Parameters are initialised from the same seed, so training is deterministic for
given inputs on a given backend.

Dimension legend: N images, H height, W width, C channels, S side after resizing,
K classes of a head, B batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

AUGMENTATIONS = ("none", "dihedral")
MIN_STEPS, MAX_STEPS = 600, 1200


def auto_steps(n_images: int) -> int:
    """Training steps for a set of `n_images`: a third of the set size, within [600, 1200]
    (a larger set keeps improving with more steps; a small one only overfits)."""
    return int(np.clip(n_images // 3, MIN_STEPS, MAX_STEPS))


@dataclass(frozen=True)
class ClassifierConfig:
    size: int = 32                       # S: images are resized to S×S
    channels: tuple[int, ...] = (32, 64, 64, 64)
    steps: int | None = None             # None: `auto_steps(N)`, from 600 (≤ 1 800 images) to 1 200 (≥ 3 600)
    batch_size: int = 64
    lr: float = 1e-2
    warmup_steps: int = 60
    weight_decay: float = 1e-4
    augment: str = "dihedral"
    seed: int = 0
    predict_batch: int = 256

    def validate(self) -> None:
        if self.size < 4 or self.size % 4:
            raise ValueError(f"classifier size must be a multiple of 4, ≥ 4; got {self.size}")
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"classifier channels must be four positive widths; got {self.channels}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"classifier augment {self.augment!r} is not one of {', '.join(AUGMENTATIONS)}")
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1:
            raise ValueError("classifier steps and batch_size must be ≥ 1")


def prepare_images(images, size: int) -> np.ndarray:
    """Any image batch → RGB float32 `[N, size, size, 3]` in [0, 1]. Integer images are
    8-bit (16-bit if a value exceeds 255); float images are clipped to [0, 1]; grey is
    repeated into three channels and alpha dropped."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got shape {x.shape}")
    if x.dtype.kind in "iu":  # 8-bit, or 16-bit when any value exceeds 255
        x = x.astype(np.float32) / (255.0 if x.size == 0 or x.max() <= 255 else 65535.0)
    elif x.dtype.kind not in "fb":
        raise ValueError(f"images must be numeric, got dtype {x.dtype}")
    x = np.clip(x.astype(np.float32), 0.0, 1.0)
    x = x[..., :3] if x.shape[-1] == 4 else (np.repeat(x, 3, -1) if x.shape[-1] == 1 else x)
    if x.shape[1:3] != (size, size):
        x = np.asarray(_resize(jnp.asarray(x), size))
    return np.ascontiguousarray(x, np.float32)


@partial(jax.jit, static_argnums=1)
def _resize(images_NHWC, size: int):
    N, _, _, C = images_NHWC.shape
    return jnp.clip(jax.image.resize(images_NHWC, (N, size, size, C), "linear", antialias=True), 0.0, 1.0)


def _space_to_depth(x_NHWC, p: int):
    N, H, W, C = x_NHWC.shape
    return x_NHWC.reshape(N, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(N, H // p, W // p, p * p * C)


class ConvClassifier(nnx.Module):
    """Images `[B, S, S, 3]` in [0, 1] → {head: logits `[B, K]`}."""

    def __init__(self, heads: dict[str, int], channels=(32, 64, 64, 64), *, rngs: nnx.Rngs):
        c0, c1, c2, c3 = channels
        self.stem = nnx.Conv(12, c0, (1, 1), rngs=rngs)
        self.down = nnx.Conv(c0, c1, (3, 3), strides=2, rngs=rngs)
        self.mid = nnx.Conv(c1, c2, (3, 3), rngs=rngs)
        self.top = nnx.Conv(c2, c3, (3, 3), rngs=rngs)
        self.heads = nnx.Dict({name: nnx.Linear(2 * c3, K, rngs=rngs) for name, K in heads.items()})

    def __call__(self, images_BHWC):
        h = _space_to_depth(images_BHWC * 2.0 - 1.0, 2)
        for conv in (self.stem, self.down, self.mid, self.top):
            h = jax.nn.gelu(conv(h))
        features_BF = jnp.concatenate([h.mean((1, 2)), h.max((1, 2))], -1)
        return {name: head(features_BF) for name, head in self.heads.items()}


class Classifier:
    """A trained `ConvClassifier` with its config; `predict` gives probabilities per head."""

    def __init__(self, graphdef, params, config: ClassifierConfig, heads: dict[str, int], train_seconds: float, final_loss: float):
        self.graphdef, self.params, self.config, self.heads = graphdef, params, config, dict(heads)
        self.train_seconds, self.final_loss = train_seconds, final_loss
        self._forward = jax.jit(lambda p, x: {k: jax.nn.softmax(v) for k, v in nnx.merge(graphdef, p)(x).items()})

    def predict(self, images) -> dict[str, np.ndarray]:
        """{head: probabilities float32 `[N, K]`} for any image batch (see `prepare_images`)."""
        x = prepare_images(images, self.config.size)
        views = range(8) if self.config.augment == "dihedral" else range(1)
        probs = [self._predict_prepared(_augment(x, np.full(len(x), v))) for v in views]
        return {h: np.mean([p[h] for p in probs], 0) for h in self.heads}

    def _predict_prepared(self, x: np.ndarray) -> dict[str, np.ndarray]:
        B = self.config.predict_batch
        parts = {h: [] for h in self.heads}
        for start in range(0, len(x), B):
            chunk = x[start:start + B]
            padded = np.concatenate([chunk, np.zeros((B - len(chunk),) + chunk.shape[1:], np.float32)])
            out = self._forward(self.params, padded)
            for h in self.heads:
                parts[h].append(np.asarray(out[h])[: len(chunk)])
        return {h: np.concatenate(p) if p else np.zeros((0, K), np.float32) for (h, p), K in zip(parts.items(), self.heads.values())}


def _augment(x_BHWC: np.ndarray, turns_B: np.ndarray) -> np.ndarray:
    """Image b turned by 90°·(turns_B[b] mod 4), then mirrored when turns_B[b] ≥ 4."""
    out = np.empty_like(x_BHWC)
    for turn in np.unique(turns_B):
        pick = turns_B == turn
        x = np.rot90(x_BHWC[pick], turn % 4, axes=(1, 2))
        out[pick] = x[:, :, ::-1] if turn >= 4 else x
    return out


def _batches(n: int, config: ClassifierConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices `[steps, B]` (consecutive permutations, so every image is seen as evenly as
    possible) and each image's dihedral turn `[steps, B]`."""
    rng = np.random.default_rng([config.seed, 1])
    shape = (config.steps, config.batch_size)
    idx = np.concatenate([rng.permutation(n) for _ in range(-(-shape[0] * shape[1] // n))])[: shape[0] * shape[1]]
    turns = rng.integers(0, 8, shape) if config.augment == "dihedral" else np.zeros(shape, np.int64)
    return idx.reshape(shape), turns


def train_classifier(images, targets: dict[str, np.ndarray], config: ClassifierConfig = ClassifierConfig()) -> Classifier:
    """Trains on `images` with per-head target distributions `targets[head]` `[N, K]`."""
    config.validate()
    x_NHWC = prepare_images(images, config.size)
    targets = {h: np.asarray(t, np.float32) for h, t in targets.items()}
    if not targets or any(t.ndim != 2 or len(t) != len(x_NHWC) for t in targets.values()):
        raise ValueError(f"targets must be {{head: [N, K]}} with N = {len(x_NHWC)} images")
    if len(x_NHWC) == 0:
        raise ValueError("classifier: no training images")
    heads = {h: t.shape[1] for h, t in targets.items()}
    config = replace(config, steps=auto_steps(len(x_NHWC)) if config.steps is None else config.steps)
    graphdef, params = nnx.split(ConvClassifier(heads, config.channels, rngs=nnx.Rngs(config.seed)))
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, min(config.warmup_steps, config.steps // 2), config.steps)
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)

    def loss_fn(p, x_BHWC, t):
        logits = nnx.merge(graphdef, p)(x_BHWC)
        return sum(optax.softmax_cross_entropy(logits[h], t[h]).mean() for h in logits)

    @jax.jit
    def step(p, opt_state, x_BHWC, t):
        loss, grads = jax.value_and_grad(loss_fn)(p, x_BHWC, t)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    start = time.perf_counter()
    opt_state, losses = optimizer.init(params), []
    idx_SB, turns = _batches(len(x_NHWC), config)
    for ix, turn in zip(idx_SB, turns):
        batch = {h: t[ix] for h, t in targets.items()}
        params, opt_state, loss = step(params, opt_state, _augment(x_NHWC[ix], turn), batch)
        losses.append(loss)
    final = float(np.mean(jax.device_get(losses[-min(20, len(losses)):])))
    return Classifier(graphdef, params, config, heads, time.perf_counter() - start, final)
