"""Evaluates a trained captioned-images run: it captions held-out images and draws held-out captions.

`evaluate_run(run, train_manifest, heldout_manifest)`:

    captions   for every held-out image, the run's greedy caption (prompt: the image
               block, as in its captioning documents), scored against the reference
               by `captions.caption_accuracy` (the shapes grammar, exact match or F1)
    images     for every held-out caption, the image the run draws (prompt: the
               caption then `<boi>`, the block grammar enforced, sampled at
               `temperature` (0 = greedy) with guidance `guidance`, seed 0), decoded
               by the run's image tokenizer and judged by a
               classifier trained on the *training* images and their captions'
               labels (`scores.evaluate_images`: image_agreement, and
               classifier_accuracy on the real held-out images, the ceiling)

Greedy captions, a fixed sampling seed and a fixed classifier seed make the
figures a function of the workdir and the settings. Returns the figures and what the sample sheet shows.
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.evaluation.captions import caption_accuracy
from mmntp_jax.evaluation.classifier import ClassifierConfig
from mmntp_jax.evaluation.scores import evaluate_images
from mmntp_jax.generation.sample import generate
from mmntp_jax.evaluation.pairs import heldout_pairs, training_pairs

CAPTION_SLACK = 8  # tokens allowed beyond the longest reference caption


def fitted_images(run, paths) -> np.ndarray:
    """The images `[N, H, W, C]` at `paths`, fitted to the run's image tokenizer (size, channels)."""
    return np.stack([run.media.fit("image", p, str(p)) for p in paths])


def draw(run, captions, *, batch_size: int = 64, **sampling) -> np.ndarray:
    """The images `[N, H, W, C]` the run draws for `captions` (prompt: the caption then `<boi>`),
    seed 0; `sampling`: `generate`'s temperature, top_k, top_p, guidance."""
    drawn = generate(run, [[{"type": "text", "text": c}, {"type": "image"}] for c in captions], batch_size=batch_size, seed=0, **sampling)
    return np.stack([d["image"] for d in drawn])


def evaluate_run(run, train_manifest, heldout_manifest, *, limit: int = 0, classifier_items: int = 0, classifier_steps: int = 0,
                 batch_size: int = 64, guidance: float = 1.0, temperature: float = 0.0) -> tuple[dict, dict]:
    """(figures, artefacts {"real", "drawn", "references", "captions"}) over the first
    `limit` held-out pairs (all when 0); the classifier trains on `classifier_items`
    training images (all when 0) for `classifier_steps` (its default when 0)."""
    paths, references = heldout_pairs(heldout_manifest)
    if limit:
        paths, references = paths[:limit], references[:limit]
    real = fitted_images(run, paths)
    longest = max(len(run.tokenizer.encode(" " + r)) for r in references)
    captioned = generate(run, [[{"type": "image", "array": x}, {"type": "text"}] for x in real],
                         max_new_tokens=longest + CAPTION_SLACK, batch_size=batch_size)
    captions = [c["text"].strip() for c in captioned]
    drawn = draw(run, references, batch_size=batch_size, guidance=guidance, temperature=temperature)
    train_paths, train_captions = training_pairs(train_manifest, limit=classifier_items)
    figures = {"eval_items": len(references), **caption_accuracy(captions, references, train_references=train_captions)}
    config = ClassifierConfig(steps=classifier_steps) if classifier_steps else None
    figures.update(evaluate_images(fitted_images(run, train_paths), train_captions, real, references, drawn, config=config))
    return figures, {"real": real, "drawn": drawn, "references": references, "captions": captions}
