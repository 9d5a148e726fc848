"""Can a reader tell a shape from an image tokenizer's code latents or its reconstructions? Probes on them.

    python tools/probes/shape_from_latents.py --tokenizer workdirs/default/tokenizers/image
    python tools/probes/shape_from_latents.py --tokenizer DIR --items 24000 --probes pixels,captions

Draws `--items` training and `--heldout` evaluation images of the embedded
captioned shapes (`mmntp_jax.data.synthetic`), encodes each to codes and looks
up their quantized latents (what the tokenizer's decoder reads; 8 × 8 × 4 for
the default job's FSQ), flattens them, and trains two probes on the first
object's shape (the caption's first-named object, square ≡ diamond as the
evaluation scores it): a linear softmax classifier and a one-hidden-layer MLP
(256 ReLU units), full batch, AdamW, 3000 steps. Neither probe shares weights
across positions, as a transformer reading the codes need not either. The third,
`conv`, does: three 3 × 3 convolutions of 64 channels over the 8 × 8 grid (as
`model.image_reader=conv` runs them), then max and mean over the grid and a
linear layer, AdamW on batches of 128, 3000 steps. The fourth, `pixels`, reads
what `model.image_reader=pixels` reads: each image encoded and decoded by the
tokenizer, through the reader's own CNN (`model.pixel_reader.PixelEncoder`, two
layers after the stride-2 one, `--channels` wide), mean ‖ max over the grid and
a linear layer, trained on the shape directly: AdamW with warm-up and cosine
decay on batches of 128, 600 steps (as many image presentations as the judge
sees), no augmentation — the most a reader of these reconstructions learns
from the same images when the shape is all it is taught. The fifth, `captions`,
is that CNN pretrained from the captions alone, as a vision encoder is before
it feeds a language model: the same training on each image's multi-hot set of
caption words (sigmoid cross-entropy, as SuperClass trains its encoders),
then frozen, and a linear probe (as above) on its standardised mean ‖ max
features names the shape. Prints one JSON line per probe (train and held-out
accuracy) after one with the classes and the held-out majority-class rate
(chance).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmntp_jax.data import synthetic
from mmntp_jax.evaluation.shapes_grammar import VISUAL_SHAPES, parse_shapes_caption
from mmntp_jax.model.pixel_reader import PixelEncoder
from mmntp_jax.tokenizers.io import load_tokenizer


def first_shape(caption: str) -> str:
    shape = parse_shapes_caption(caption).objects[0].shape
    return VISUAL_SHAPES.get(shape, shape)


def latents(module, images_NHWC, batch: int = 256) -> np.ndarray:
    """[N, H, W, F]: each image's code latents on the grid."""
    out = []
    for i in range(0, len(images_NHWC), batch):
        codes_BN = module.encode(jnp.asarray(images_NHWC[i : i + batch]))
        grid = (codes_BN.shape[0], *module.latent_shape())
        out.append(np.asarray(module.quantize.lookup(codes_BN.reshape(grid), grid)).reshape(*grid, -1))
    return np.concatenate(out)


def reconstructions(module, images_NHWC, batch: int = 250) -> np.ndarray:
    """[N, H, W, C] in [-1, 1]: each image through the tokenizer's codes and back (what the pixel reader reads)."""
    out = [np.asarray(module.decode(module.encode(jnp.asarray(images_NHWC[i : i + batch])))) for i in range(0, len(images_NHWC), batch)]
    return np.concatenate(out) * 2.0 - 1.0


class PixelProbe(nnx.Module):
    """The pixel reader's CNN, mean ‖ max over the grid, a linear layer."""

    def __init__(self, in_channels: int, factor: int, channels: int, outputs: int, *, rngs: nnx.Rngs):
        self.encoder = PixelEncoder(in_channels, factor, channels, 2, rngs=rngs)
        self.head = nnx.Linear(2 * channels, outputs, rngs=rngs)

    def features(self, pixels_NHWC):
        h = self.encoder(pixels_NHWC)
        return jnp.concatenate([h.mean((1, 2)), h.max((1, 2))], -1)

    def __call__(self, pixels_NHWC):
        return self.head(self.features(pixels_NHWC))


def train_pixel_probe(x_NHWC, targets, outputs: int, factor: int, channels: int, *, words: bool = False, steps: int = 600, batch: int = 128):
    """A PixelProbe trained on class ids (softmax) or, with `words`, on each image's multi-hot caption words (sigmoid)."""
    probe = PixelProbe(x_NHWC.shape[-1], factor, channels, outputs, rngs=nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, min(50, steps // 2), steps)
    optimizer = nnx.Optimizer(probe, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)

    def loss(p, x, y):
        if words:
            return optax.sigmoid_binary_cross_entropy(p(x), y).sum(-1).mean()
        return optax.softmax_cross_entropy_with_integer_labels(p(x), y).mean()

    @nnx.jit
    def step(probe, optimizer, x, y):
        optimizer.update(probe, nnx.grad(loss)(probe, x, y))

    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(x_NHWC), batch)
        step(probe, optimizer, jnp.asarray(x_NHWC[idx]), jnp.asarray(targets[idx]))
    return probe


def in_batches(fn, x, batch: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)])


def caption_words(captions) -> np.ndarray:
    """[N, W] multi-hot: which of the captions' words each caption uses."""
    vocab = sorted({w for c in captions for w in c.split()})
    hot = np.zeros((len(captions), len(vocab)), np.float32)
    for i, c in enumerate(captions):
        hot[i, [vocab.index(w) for w in set(c.split())]] = 1.0
    return hot


def train_conv_probe(x_NHWF, y_N, classes: int, steps: int = 3000, batch: int = 128, width: int = 64):
    """Three 3 × 3 convolutions (SAME, gelu), max and mean over the grid, a linear layer."""
    key = jax.random.key(0)
    widths = [x_NHWF.shape[-1]] + [width] * 3
    params = {"convs": [(jax.random.normal(jax.random.fold_in(key, i), (3, 3, a, b)) * (9 * a) ** -0.5, jnp.zeros(b))
                        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))],
              "w": jax.random.normal(jax.random.fold_in(key, 9), (2 * width, classes)) * (2 * width) ** -0.5, "b": jnp.zeros(classes)}

    def forward(p, x):
        for kernel, bias in p["convs"]:
            x = jax.nn.gelu(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias)
        return jnp.concatenate([x.max((1, 2)), x.mean((1, 2))], -1) @ p["w"] + p["b"]

    optimizer = optax.adamw(2e-3, weight_decay=1e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(p, s, x, y):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean())(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(x_NHWF), batch)
        params, state = step(params, state, jnp.asarray(x_NHWF[idx]), jnp.asarray(y_N[idx]))
    return lambda x_M: np.concatenate([np.asarray(jnp.argmax(forward(params, jnp.asarray(x_M[i : i + 500])), -1)) for i in range(0, len(x_M), 500)])


def train_probe(x_NF, y_N, classes: int, hidden: int, steps: int = 3000):
    key = jax.random.key(0)
    features = x_NF.shape[1]
    if hidden:
        params = {"w1": jax.random.normal(key, (features, hidden)) * features**-0.5, "b1": jnp.zeros(hidden),
                  "w": jax.random.normal(jax.random.fold_in(key, 1), (hidden, classes)) * hidden**-0.5, "b": jnp.zeros(classes)}
    else:
        params = {"w": jnp.zeros((features, classes)), "b": jnp.zeros(classes)}

    def forward(p, x):
        h = jax.nn.relu(x @ p["w1"] + p["b1"]) if hidden else x
        return h @ p["w"] + p["b"]

    optimizer = optax.adamw(3e-3 if hidden else 1e-2, weight_decay=1e-3)
    state = optimizer.init(params)
    x, y = jnp.asarray(x_NF), jnp.asarray(y_N)

    @jax.jit
    def step(p, s):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean())(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(steps):
        params, state = step(params, state)
    return lambda x_MF: np.asarray(jnp.argmax(forward(params, jnp.asarray(x_MF)), axis=-1))


PROBES = ("linear", "mlp256", "conv", "pixels", "captions")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="an image tokenizer folder (e.g. WORKDIR/tokenizers/image)")
    parser.add_argument("--items", type=int, default=6000, help="training images (the default job trains on 6000)")
    parser.add_argument("--heldout", type=int, default=500)
    parser.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, of {', '.join(PROBES)}")
    parser.add_argument("--channels", type=int, default=64, help="the pixels and captions probes' CNN width")
    parser.add_argument("--cnn-steps", type=int, default=600, help="training steps of the pixels and captions probes' CNN")
    args = parser.parse_args(argv)
    probes = args.probes.split(",")
    if not probes or set(probes) - set(PROBES):
        parser.error(f"--probes {args.probes!r}: expected a comma-separated list of {', '.join(PROBES)}")
    module = load_tokenizer(args.tokenizer).module()
    train_images, train_captions = synthetic.shapes_images(args.items, split="train")
    eval_images, eval_captions = synthetic.shapes_images(args.heldout, split="eval")
    classes = sorted({first_shape(c) for c in train_captions})
    y_train = np.array([classes.index(first_shape(c)) for c in train_captions])
    y_eval = np.array([classes.index(first_shape(c)) for c in eval_captions])
    x_train, x_eval = latents(module, train_images), latents(module, eval_images)
    print(json.dumps({"classes": classes, "items": args.items, "features": int(np.prod(x_train.shape[1:])),
                      "heldout_majority": float(np.bincount(y_eval).max() / len(y_eval))}), flush=True)
    flat = lambda x: x.reshape(len(x), -1)
    for name in probes:
        inputs = (x_train, x_eval)
        if name in ("pixels", "captions"):
            inputs = (reconstructions(module, train_images), reconstructions(module, eval_images))
        if name == "pixels":
            probe = train_pixel_probe(inputs[0], y_train, len(classes), module.config.factor, args.channels, steps=args.cnn_steps)
            ids = nnx.jit(lambda p, b: jnp.argmax(p(b), -1))
            predict = lambda x, probe=probe, ids=ids: in_batches(lambda b: ids(probe, b), x)
        elif name == "captions":
            words = caption_words(train_captions)
            probe = train_pixel_probe(inputs[0], words, words.shape[1], module.config.factor, args.channels, words=True,
                                      steps=args.cnn_steps)
            features = nnx.jit(lambda p, b: p.features(b))
            f_train, f_eval = (in_batches(lambda b: features(probe, b), x) for x in inputs)
            mean, scale = f_train.mean(0), f_train.std(0) + 1e-6
            linear = train_probe((f_train - mean) / scale, y_train, len(classes), 0)
            inputs = (f_train, f_eval)
            predict = lambda f, linear=linear, mean=mean, scale=scale: linear((f - mean) / scale)
        elif name == "conv":
            predict = train_conv_probe(x_train, y_train, len(classes))
        else:
            flat_probe = train_probe(flat(x_train), y_train, len(classes), 256 if name == "mlp256" else 0)
            predict = lambda x, flat_probe=flat_probe: flat_probe(flat(x))
        print(json.dumps({"probe": name, "train_accuracy": float((predict(inputs[0]) == y_train).mean()),
                          "heldout_accuracy": float((predict(inputs[1]) == y_eval).mean())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
