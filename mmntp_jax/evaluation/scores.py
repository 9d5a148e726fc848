"""Image agreement and classifier accuracy: do images show what their captions ask for, by an independent judge.

The judge (`train_judge`) is a `classifier.ConvClassifier` trained on the
*training* images with the labels their captions give (`labels.caption_labels`);
it never sees the model under evaluation. Then, for images and the captions
they should show:

    agreement per head   the fraction of items whose prompted class the judge
                         recognises (`labels.recognised`: among the `named`
                         top-ranked classes; the argmax when one is named)
    image_agreement      mean over heads, on the images generated for the
                         held-out captions
    classifier_accuracy  the same on the real held-out images — the ceiling
                         that image_agreement can reach with this judge
    image_chance         the expected agreement of images unrelated to their
                         prompts (`labels.ignoring_chance`)

`evaluate_images` does all of it. For free-text captions (more than
`MAX_CLASSES` distinct, not shapes) there is no judge and every figure is None.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmntp_jax.evaluation.classifier import Classifier, ClassifierConfig, train_classifier
from mmntp_jax.evaluation.labels import (
    ImageLabels,
    caption_labels,
    ignoring_chance,
    image_scheme,
    label_classes,
    recognised,
)


@dataclass(frozen=True)
class ImageJudge:
    """A classifier and the label space it was trained on."""

    scheme: str
    classes: dict[str, tuple[str, ...]]
    classifier: Classifier

    def labels(self, captions) -> ImageLabels:
        return caption_labels(captions, self.classes, self.scheme)


def judge_config(scheme: str, config: ClassifierConfig | None = None) -> ClassifierConfig:
    """The classifier settings for a scheme: shapes labels do not depend on orientation, so
    shapes training turns and mirrors its batches; class labels might (a "6" is not a "9")."""
    config = ClassifierConfig() if config is None else config
    return config if scheme == "shapes" else replace(config, augment="none")


def train_judge(train_images, train_captions, *, scheme: str | None = None, config: ClassifierConfig | None = None) -> ImageJudge:
    """Trains the judge on real training images and their captions."""
    train_captions = list(train_captions)
    if len(train_captions) != len(train_images):
        raise ValueError(f"judge: {len(train_images)} training images for {len(train_captions)} captions")
    scheme = image_scheme(train_captions) if scheme is None else scheme
    if scheme is None:
        raise ValueError("judge: free-text captions have no classes to judge by")
    classes = label_classes(train_captions, scheme)
    labels = caption_labels(train_captions, classes, scheme)
    classifier = train_classifier(train_images, labels.targets, judge_config(scheme, config))
    return ImageJudge(scheme, classes, classifier)


def agreement(judge: ImageJudge, images, captions) -> dict[str, float]:
    """Per head, the fraction of `images[i]` in which the judge recognises what `captions[i]` asks for."""
    captions = list(captions)
    if len(captions) != len(images):
        raise ValueError(f"agreement: {len(images)} images for {len(captions)} captions")
    if not captions:
        raise ValueError("agreement: no images")
    hits = recognised(judge.classifier.predict(images), judge.labels(captions))
    return {head: float(h.mean()) for head, h in hits.items()}


def image_agreement(judge: ImageJudge, generated_images, prompts) -> float:
    """Mean over heads of the agreement of images generated for `prompts`."""
    return float(np.mean(list(agreement(judge, generated_images, prompts).values())))


def classifier_accuracy(judge: ImageJudge, heldout_images, heldout_captions) -> float:
    """Mean over heads of the agreement of the real held-out images with their own captions."""
    return float(np.mean(list(agreement(judge, heldout_images, heldout_captions).values())))


def _with_heads(prefix: str, per_head: dict[str, float]) -> dict[str, float]:
    out = {prefix: float(np.mean(list(per_head.values())))}
    if len(per_head) > 1:
        out.update({f"{prefix}_{head}": value for head, value in per_head.items()})
    return out


def evaluate_images(train_images, train_captions, heldout_images, heldout_captions, generated_images=None, *,
                    prompts=None, config: ClassifierConfig | None = None, judge: ImageJudge | None = None) -> dict:
    """{"image_agreement", "classifier_accuracy", "image_chance", "image_scheme", …}.

    `generated_images[i]` answers `prompts[i]` (default: the held-out captions);
    without generated images image_agreement is None. The scheme is chosen from
    the training and held-out captions together. Pass `judge` to reuse one."""
    train_captions, heldout_captions = list(train_captions), list(heldout_captions)
    scheme = image_scheme(train_captions + heldout_captions) if judge is None else judge.scheme
    result = {"image_agreement": None, "classifier_accuracy": None, "image_chance": None, "image_scheme": scheme}
    if scheme is None:
        return result
    if judge is None:
        judge = train_judge(train_images, train_captions, scheme=scheme, config=config)
    result.update(_with_heads("classifier_accuracy", agreement(judge, heldout_images, heldout_captions)))
    prompts = heldout_captions if prompts is None else list(prompts)
    result["image_chance"] = float(np.mean(list(ignoring_chance(judge.labels(prompts)).values())))
    if generated_images is not None:
        result.update(_with_heads("image_agreement", agreement(judge, generated_images, prompts)))
    result["classifier_train_seconds"] = round(judge.classifier.train_seconds, 2)
    return result
