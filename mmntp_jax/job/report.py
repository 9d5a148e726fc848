"""The captioned job's last two stages: the multimodal evaluation and the sample sheet.

    evaluation  `evaluation.multimodal.evaluate_run` on the final checkpoint, written to
                WORKDIR/eval/<step>.json (figures), eval/<step>/captions.jsonl (reference
                and generated caption per held-out image) and eval/<step>/drawn.npz (the
                drawn images with the real ones); the figures also go to metrics.jsonl
                and TensorBoard under `eval/`
    sheet       WORKDIR/samples/sheet.png from those files (`job.sheet.sample_sheet`),
                also logged to TensorBoard as the image `samples/sheet`

`mmntp eval` on a job's workdir reads eval/<step>.json when the step was evaluated,
else runs the evaluation (the same figures: it is deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmntp_jax.job.stages import Stage

SHEET = "samples/sheet.png"


def eval_dir(workdir) -> Path:
    return Path(str(workdir)) / "eval"


def _manifests(run):
    from mmntp_jax.job.captioned import heldout_manifest, train_manifest

    return train_manifest(run.config, run.workdir), heldout_manifest(run.config, run.workdir)


def evaluate_and_save(run, log=print) -> dict:
    """Runs the evaluation of `run`'s step and writes its files; returns the figures."""
    from mmntp_jax.evaluation.multimodal import evaluate_run
    from mmntp_jax.train.metrics import MetricsWriter

    job = run.config.job
    train, heldout = _manifests(run)
    log(f"evaluation: step {run.step}, the first {job.eval_items} held-out items at most")
    figures, shown = evaluate_run(run, train, heldout, limit=job.eval_items, batch_size=job.generate_batch,
                                  classifier_steps=job.classifier_steps, guidance=job.guidance, temperature=job.temperature)
    folder = eval_dir(run.workdir) / str(run.step)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "captions.jsonl", "w") as f:
        for ref, out in zip(shown["references"], shown["captions"]):
            f.write(json.dumps({"reference": ref, "generated": out}) + "\n")
    np.savez_compressed(folder / "drawn.npz", real=shown["real"], drawn=shown["drawn"])
    figures = {"step": run.step, **figures, "samples": str(Path(str(run.workdir)) / SHEET)}
    tmp = eval_dir(run.workdir) / f"{run.step}.json.tmp"
    tmp.write_text(json.dumps(figures, indent=2))
    tmp.replace(eval_dir(run.workdir) / f"{run.step}.json")
    writer = MetricsWriter(run.workdir)
    writer.write(run.step, {k: v for k, v in figures.items() if isinstance(v, (int, float)) and k != "step"}, prefix="eval/")
    writer.close()
    return figures


def multimodal_figures(run, log=print) -> dict:
    """The step's evaluation figures, from eval/<step>.json or computed now (`samples`: the sheet
    of the workdir as it is now, wherever it was when the figures were saved)."""
    path = eval_dir(run.workdir) / f"{run.step}.json"
    if path.is_file():
        saved = {k: v for k, v in json.loads(path.read_text()).items() if k != "step"}
        return {**saved, "samples": str(Path(str(run.workdir)) / SHEET)}
    return {k: v for k, v in evaluate_and_save(run, log).items() if k != "step"}


def evaluation_stage(workdir: Path, steps: int, log) -> Stage:
    def run() -> bool:
        import mmntp_jax as mm

        figures = evaluate_and_save(mm.load(workdir), log)
        shown = {k: figures.get(k) for k in ("eval_items", "caption_accuracy", "image_agreement", "classifier_accuracy")}
        log("evaluation: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
        return True

    return Stage("evaluation", lambda: (eval_dir(workdir) / f"{steps}.json").is_file(), run)


def sheet_stage(workdir: Path, steps: int, items: int, log) -> Stage:
    def run() -> bool:
        from mmntp_jax.job.sheet import sample_sheet, write_sheet
        from mmntp_jax.train.metrics import MetricsWriter

        folder = eval_dir(workdir) / str(steps)
        arrays = np.load(folder / "drawn.npz")
        lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()][:items]
        sheet = sample_sheet(arrays["real"][:items], arrays["drawn"][:items], [x["reference"] for x in lines], [x["generated"] for x in lines])
        path = write_sheet(workdir / SHEET, sheet)
        writer = MetricsWriter(workdir)
        writer.write_image(steps, "samples/sheet", sheet)
        writer.close()
        log(f"sheet: {path}")
        return True

    return Stage("sheet", lambda: (workdir / SHEET).is_file(), run)
