"""Can a reader tell a shape from an image tokenizer's code latents, with and without convolutions? Probes on them.

    python tools/probes/shape_from_latents.py --tokenizer workdirs/default/tokenizers/image
    python tools/probes/shape_from_latents.py --tokenizer DIR --items 24000

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
linear layer, AdamW on batches of 128, 3000 steps. Prints one JSON line per
probe (train and held-out accuracy) after one with the classes and the
held-out majority-class rate (chance).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmntp_jax.data import synthetic
from mmntp_jax.evaluation.shapes_grammar import VISUAL_SHAPES, parse_shapes_caption
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="an image tokenizer folder (e.g. WORKDIR/tokenizers/image)")
    parser.add_argument("--items", type=int, default=6000, help="training images (the default job trains on 6000)")
    parser.add_argument("--heldout", type=int, default=500)
    args = parser.parse_args(argv)
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
    for name in ("linear", "mlp256", "conv"):
        if name == "conv":
            predict = train_conv_probe(x_train, y_train, len(classes))
        else:
            flat_probe = train_probe(flat(x_train), y_train, len(classes), 256 if name == "mlp256" else 0)
            predict = lambda x, flat_probe=flat_probe: flat_probe(flat(x))
        print(json.dumps({"probe": name, "train_accuracy": float((predict(x_train) == y_train).mean()),
                          "heldout_accuracy": float((predict(x_eval) == y_eval).mean())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
