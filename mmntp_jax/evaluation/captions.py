"""Caption accuracy: generated captions scored against their references, by the scheme the references call for.

The scheme follows from the references (`caption_scheme`; the training captions
of the manifest, when given, count too):

    shapes  every reference is a captioned-shapes caption (`shapes_grammar`): the
            mean over three attributes — the first object's colour, its shape and
            the background colour — of the fraction of items whose generated
            caption, parsed by the same grammar, names the reference's value.
            Objects are named largest first, so the first is the one the image
            shows most of. A square and a diamond are the same figure at random
            angles, so either name matches either (`visual_shape`), as for the
            image judge. An unparseable generated caption is wrong on all three.
    exact   at most `MAX_CLASSES` distinct references (after stripping
            whitespace): the fraction of items whose stripped generated caption
            equals the stripped reference.
    f1      anything else: token F1 over whitespace tokens, SQuAD-style (the
            multiset overlap of tokens; F1 of its precision and recall), averaged
            over items. Tokens are compared as they are (case-sensitive, no
            punctuation or article removal); two empty texts score 1, one empty 0.

`caption_accuracy(generated, references)` returns
`{"caption_accuracy", "caption_scheme", …}` plus, for shapes,
`caption_accuracy_<attribute>` for each attribute and `caption_parsed` (the
fraction of generated captions in the grammar). Lists are aligned: item i's
generated caption is scored against reference i.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mmntp_jax.evaluation.shapes_grammar import all_shapes_captions, shapes_attributes, visual_shape

MAX_CLASSES = 50  # at most this many distinct references: the captions are class names
SCHEMES = ("shapes", "exact", "f1")
SHAPES_ATTRIBUTES = ("colour", "shape", "background")


def distinct_captions(texts) -> list[str]:
    """The distinct texts after stripping whitespace, sorted."""
    return sorted({t.strip() for t in texts})


def caption_scheme(references, train_references=()) -> str:
    """"shapes", "exact" or "f1" — how captions against these references are scored.

    `train_references`, the training captions of the same manifest, count too: a
    free-text manifest with a small held-out set is still free text."""
    references = list(references)
    if not references:
        raise ValueError("caption scheme: no references")
    every = references + list(train_references)
    if all_shapes_captions(every):
        return "shapes"
    return "exact" if len(distinct_captions(every)) <= MAX_CLASSES else "f1"


def exact_match(generated: str, reference: str) -> float:
    """1.0 if the texts are equal after stripping surrounding whitespace, else 0.0."""
    return float(generated.strip() == reference.strip())


def token_f1(generated: str, reference: str) -> float:
    """SQuAD-style F1 of the whitespace tokens of `generated` against those of `reference`."""
    pred, gold = generated.split(), reference.split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def shapes_attribute_hits(generated, references) -> dict[str, np.ndarray]:
    """Per attribute, a bool `[N]`: does generated caption i name reference i's value?"""
    hits = {a: np.zeros(len(references), bool) for a in SHAPES_ATTRIBUTES}
    for i, (gen, ref) in enumerate(zip(generated, references)):
        want = shapes_attributes(ref)
        if want is None:
            raise ValueError(f"reference {i} is not a captioned-shapes caption: {ref!r}")
        got = shapes_attributes(gen)
        for a in SHAPES_ATTRIBUTES:
            same = (visual_shape(got[a]) == visual_shape(want[a])) if a == "shape" and got is not None else got is not None and got[a] == want[a]
            hits[a][i] = same
    return hits


def _check_aligned(generated, references) -> tuple[list[str], list[str]]:
    generated, references = list(generated), list(references)
    if len(generated) != len(references):
        raise ValueError(f"caption accuracy: {len(generated)} generated captions for {len(references)} references")
    if not references:
        raise ValueError("caption accuracy: no references")
    bad = next((i for i, t in enumerate(generated + references) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"caption accuracy: item {bad % len(references)} is not a string")
    return generated, references


def caption_accuracy(generated, references, scheme: str | None = None, *, train_references=()) -> dict:
    """Scores `generated[i]` against `references[i]`; `scheme` defaults to
    `caption_scheme(references, train_references)`."""
    generated, references = _check_aligned(generated, references)
    scheme = caption_scheme(references, train_references) if scheme is None else scheme
    if scheme not in SCHEMES:
        raise ValueError(f"caption scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if scheme == "shapes":
        hits = shapes_attribute_hits(generated, references)
        out = {f"caption_accuracy_{a}": float(h.mean()) for a, h in hits.items()}
        result = {"caption_accuracy": float(np.mean(list(out.values()))), "caption_scheme": scheme}
        result.update(out)
        result["caption_parsed"] = float(np.mean([shapes_attributes(g) is not None for g in generated]))
        return result
    score = exact_match if scheme == "exact" else token_f1
    return {"caption_accuracy": float(np.mean([score(g, r) for g, r in zip(generated, references)])), "caption_scheme": scheme}


def constant_caption_chance(references, scheme: str | None = None) -> float | None:
    """The score of the best single caption written for every item: the chance level of a
    captioner that ignores its image (shapes: per attribute the most frequent value; exact:
    the most frequent reference). Not defined for f1 (None)."""
    references = list(references)
    scheme = caption_scheme(references) if scheme is None else scheme
    if scheme == "shapes":
        attrs = [shapes_attributes(r) for r in references]
        value = lambda a, k: visual_shape(a[k]) if k == "shape" else a[k]  # noqa: E731
        return float(np.mean([max(Counter(value(a, k) for a in attrs).values()) / len(attrs) for k in SHAPES_ATTRIBUTES]))
    if scheme == "exact":
        return max(Counter(r.strip() for r in references).values()) / len(references)
    return None
