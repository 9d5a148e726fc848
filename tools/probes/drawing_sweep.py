"""How do a trained captioned-images run's drawings score under other sampling settings? One judge for all.

    python tools/probes/drawing_sweep.py --workdir workdirs/default \
        --sampling temperature=1,guidance=3 --sampling temperature=1,guidance=3,top_p=0.9

Loads the workdir's newest step as `mmntp eval` does, trains the evaluation's
judge once (`evaluation.scores.train_judge`: a classifier on the training
images and their captions' labels, `job.classifier_steps` as the evaluation
uses them), then, for each `--sampling` setting, draws an image for each of the
first `job.eval_items` held-out captions (seed 0, batches of
`job.generate_batch`, the block grammar enforced) and scores them as
`mmntp eval` scores `image_agreement`: the fraction of the prompted attributes
(or classes) the judge recognises. A setting's keys are those of
`mmntp_jax.generation.sample.generate`: `temperature` (0 = greedy), `top_k`
(0 = all), `top_p` and `guidance` (1 = none); unnamed keys take their defaults.
A setting of `job.temperature` and `job.guidance` reproduces the workdir's
`image_agreement` exactly.

Prints one JSON line with the judge's accuracy on the real held-out images (the
ceiling), then one per setting: the setting, `image_agreement` and, with more
than one attribute, its value per attribute — scored by the evaluation's own
`evaluation.scores.evaluate_images`, with the one judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


KEYS = {"temperature": float, "top_k": int, "top_p": float, "guidance": float}


def parse_setting(text: str) -> dict:
    """`"temperature=1,guidance=3"` → {"temperature": 1.0, "guidance": 3.0}; one line naming a bad key or value."""
    setting = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise ValueError(f"--sampling {text!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            setting[key] = KEYS[key](value)
        except ValueError:
            raise ValueError(f"--sampling {text!r}: {key} expects {'a whole number' if KEYS[key] is int else 'a number'}, got {value!r}") from None
    if not setting:
        raise ValueError(f"--sampling {text!r}: no KEY=VALUE given")
    return setting


def sweep(workdir, settings: list[dict], log=print) -> list[dict]:
    """The judge's ceiling, then image_agreement per setting, as dicts (also logged as JSON lines)."""
    import mmntp_jax
    from mmntp_jax.evaluation.classifier import ClassifierConfig
    from mmntp_jax.evaluation.multimodal import draw, fitted_images
    from mmntp_jax.evaluation.pairs import heldout_pairs, training_pairs
    from mmntp_jax.evaluation.scores import evaluate_images, image_scheme, train_judge
    from mmntp_jax.job.captioned import heldout_manifest, train_manifest

    run = mmntp_jax.load(workdir)
    job = run.config.job
    paths, references = heldout_pairs(heldout_manifest(run.config, run.workdir))
    if job.eval_items:
        paths, references = paths[:job.eval_items], references[:job.eval_items]
    train_paths, train_captions = training_pairs(train_manifest(run.config, run.workdir))
    start = time.perf_counter()
    config = ClassifierConfig(steps=job.classifier_steps) if job.classifier_steps else None
    scheme = image_scheme(list(train_captions) + list(references))  # as the evaluation chooses it
    if scheme is None:
        raise ValueError(f"{workdir}: its captions are free text; image_agreement needs captions with classes to judge by")
    judge = train_judge(fitted_images(run, train_paths), train_captions, scheme=scheme, config=config)
    real = fitted_images(run, paths)
    score = lambda drawn, prefix: {k: v for k, v in evaluate_images(None, train_captions, real, references, drawn, judge=judge).items()
                                   if k.startswith(prefix)}
    rows = [{"step": run.step, "eval_items": len(references), **score(None, "classifier_accuracy"),
             "judge_seconds": round(time.perf_counter() - start, 1)}]
    log(json.dumps(rows[0]))
    for setting in settings:
        drawn = draw(run, references, batch_size=job.generate_batch, **setting)
        rows.append({**setting, **score(drawn, "image_agreement")})
        log(json.dumps(rows[-1]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained captioned-images workdir (e.g. workdirs/default)")
    parser.add_argument("--sampling", action="append", required=True,
                        help=f"comma-separated KEY=VALUE of {', '.join(KEYS)}; repeat for more settings")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.sampling]
    except ValueError as err:
        parser.error(str(err))
    try:
        sweep(args.workdir, settings)
    except (ValueError, FileNotFoundError) as err:
        print(f"drawing_sweep: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
