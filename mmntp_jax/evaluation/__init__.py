"""Multimodal evaluation, independent of the model: caption accuracy and generated-image agreement.

    shapes_grammar  parse / compose captioned-shapes captions
    captions        caption_accuracy: shapes attributes, exact match or token F1
    labels          image labels from captions (shapes attributes or caption classes)
    classifier      the judge's small conv net, trained with optax
    scores          image_agreement, classifier_accuracy, evaluate_images
    pairs           image–caption pairs read from held-out and training manifests
    multimodal      evaluate_run: a trained run's captions and drawings of a held-out set, scored

See docs/evaluation.md.
"""

from mmntp_jax.evaluation.captions import caption_accuracy, caption_scheme, exact_match, token_f1
from mmntp_jax.evaluation.classifier import ClassifierConfig, prepare_images, train_classifier
from mmntp_jax.evaluation.labels import caption_labels, image_scheme
from mmntp_jax.evaluation.scores import (
    ImageJudge,
    agreement,
    classifier_accuracy,
    evaluate_images,
    image_agreement,
    train_judge,
)
from mmntp_jax.evaluation.shapes_grammar import compose_shapes_caption, parse_shapes_caption

__all__ = [
    "ClassifierConfig", "ImageJudge", "agreement", "caption_accuracy", "caption_labels", "caption_scheme",
    "classifier_accuracy", "compose_shapes_caption", "evaluate_images", "exact_match", "image_agreement",
    "image_scheme", "parse_shapes_caption", "prepare_images", "token_f1",
    "train_classifier", "train_judge",
]
