"""What an image reader costs per train step: the captioned job's step without a reader, with the conv reader and with the pixel reader, in one run.

    python tools/bench/image_reader_step.py                       # 10 rounds of 4 steps, one device
    python tools/bench/image_reader_step.py --rounds 20 --steps 8

The shape is the multimodal default job's (`experiments/captioned.py`: d_model
192, 4 layers, vocab 1528 = 16 specials + 512 text + 1000 image codes, sequence
512, batch 8). Every variant trains on the same packed rows of the job's two
documents, alternating: captioning (`<boi>` 64 codes `<eoi>` as context, a
24-token caption trained) and drawing (the caption as context, the image
trained), so about half the image blocks are context images that a reader
reads (three or four in a row of 512). The pixel reader decodes with the
default job's tokenizer architecture (experiments/tokenizers/image_job.py)
given random weights, saved to a temporary folder: the cost does not depend on
the weights. Variants (`model.image_reader`): none, conv, pixels.

Rounds alternate the variants' order. Prints one JSON object: median step time
of each and its ratio to none. Measured: docs/benchmarks.md, "What limits the shape".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import jax
import numpy as np

from mmntp_jax.config import MeshConfig, repo_experiment
from mmntp_jax.data.documents import assemble_document
from mmntp_jax.data.packing import write_row
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.experiment_file import load_module
from mmntp_jax.sharding import make_mesh, shard_batch
from mmntp_jax.train.backbone import code_latent_params
from mmntp_jax.train.step import StepBuilder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from image_output_step import compiled, median_step_times  # noqa: E402 — the same compile and timing as the image-output benchmark

VARIANTS = ("none", "conv", "pixels")
CAPTION, IMAGE = 24, 64


def job_tokenizer(folder: str) -> str:
    """The default job's image tokenizer architecture, random weights, saved in `folder`."""
    from mmntp_jax.tokenizers import experiment
    from mmntp_jax.tokenizers.io import save_tokenizer
    from mmntp_jax.tokenizers.registry import Tokenizer

    config = experiment.load(repo_experiment("tokenizers/image_job"), []).model
    return str(save_tokenizer(Tokenizer.create("image", config), os.path.join(folder, "image")))


def job_config(variant: str, tokenizer: str):
    config = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments", "captioned.py")).get_config()
    model = dataclasses.replace(config.model, image_reader=variant, image_grid_width=8, image_tokenizer=tokenizer, image_feature_dim=4)
    return dataclasses.replace(config, model=model, mesh=MeshConfig(data=1))


def rows(config, vocab: Vocab) -> dict:
    """Rows of whole captioning and drawing documents, packed in turn, padded at the end."""
    rng = np.random.default_rng(0)
    t = config.train.seq_len
    out = []
    for _ in range(config.train.batch_size):
        docs, chunks, at = {}, [], 0
        while True:
            caption = vocab.offset("text") + rng.integers(0, 512, CAPTION)
            image = vocab.offset("image") + rng.integers(0, 1000, IMAGE)
            parts = [("image", image, False), ("text", caption, True)] if len(docs) % 2 == 0 else [("text", caption, False), ("image", image, True)]
            doc = assemble_document(parts, vocab)
            if at + len(doc["tokens"]) - 1 > t:
                break
            docs[len(docs)] = doc
            chunks.append((len(docs) - 1, 0, len(doc["tokens"]) - 1))
            at += len(doc["tokens"]) - 1
        out.append(write_row(chunks, docs, t))
    return {k: np.stack([r[k] for r in out]) for k in out[0]}


def build(variant: str, tokenizer: str, vocab: Vocab):
    config = job_config(variant, tokenizer)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    builder = StepBuilder(config, mesh, vocab=None)
    state = builder.init_state(0)
    if variant == "pixels":
        state = state.replace(params=code_latent_params(state.params, config.model, vocab))
    return compiled(builder, state, shard_batch(rows(config, vocab), mesh))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    vocab = Vocab.build(text=512, image=1000)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = job_tokenizer(folder)
        built = {name: build(name, tokenizer, vocab) for name in VARIANTS}
    median = median_step_times(built, VARIANTS, args.rounds, args.steps)
    batch = built["none"]["batch"]
    print(json.dumps({
        "shape": {"vocab_size": vocab.size, "seq_len": batch["inputs"].shape[1], "batch_size": batch["inputs"].shape[0],
                  "context_images_per_row": float(np.mean(np.sum(np.asarray(batch["inputs"]) == vocab.markers("image")[0], 1) / 2))},
        "step_s_median": median,
        "ratio_to_none": {name: median[name] / median["none"] for name in VARIANTS},
        "compile_s": {name: built[name]["compile_s"] for name in VARIANTS},
        "rounds": args.rounds, "steps": args.steps, "load_avg_1m": os.getloadavg()[0],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
