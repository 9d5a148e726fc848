"""Captioned-job benchmark: the whole staged job from an empty workdir, timed per stage, with its evaluation.

    python tools/bench/captioned_job.py --out /tmp/bench_job                  # the default job (embedded shapes)
    python tools/bench/captioned_job.py --out /tmp/bench_classes --classes 900  # 900 ten-class images + 100 held out

`--classes N` first writes the ten-class captioned set (`mmntp data classes`)
and trains on it through `data.manifest` / `data.eval_manifest`, as a user's
own captioned images would be. The job is `mmntp train` with the experiment's
defaults (`--config`, default experiments/captioned.py) plus any `--set`
overrides, run as a subprocess in a fresh `OUT/workdir` (an existing one is an
error, so a result is never a resumed run). Prints one JSON object: wall
seconds of the whole command, each stage's seconds (job.json), the evaluation's
figures (caption_accuracy, image_agreement, classifier_accuracy and the
per-attribute parts) and the targets they are held to.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mmntp_jax.config import repo_experiment

TARGETS = {  # issue targets, on the quiet 2-core CPU
    "default": {"caption_accuracy": 0.90, "image_agreement": 0.80, "classifier_accuracy": 0.90, "wall_s": 25 * 60},
    "classes": {"caption_accuracy": 0.85, "image_agreement": 0.75, "wall_s": 35 * 60},
}
FIGURES = ("caption_accuracy", "image_agreement", "classifier_accuracy", "image_chance", "eval_items")


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"captioned_job: {' '.join(cmd)} exited {code}; see {log}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="an empty or absent folder for the data, workdir and log")
    parser.add_argument("--classes", type=int, default=0, help="train on N generated ten-class images instead of the embedded shapes")
    parser.add_argument("--config", default=None, help="experiment file (default: the job's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    workdir, log = out / "workdir", out / "job.log"
    if workdir.exists():
        sys.exit(f"captioned_job: {workdir} exists; give a fresh --out")
    out.mkdir(parents=True, exist_ok=True)
    mmntp = [sys.executable, "-m", "mmntp_jax.cli"]
    overrides = list(args.set)
    config = args.config
    data_s = 0.0
    if args.classes:
        data_s = run(mmntp + ["data", "classes", "--out", str(out / "classes"), "--items", str(args.classes)], log)
        overrides = [f"data.manifest={out / 'classes' / 'TRAIN.jsonl'}", f"data.eval_manifest={out / 'classes' / 'HELDOUT.jsonl'}"] + overrides
        config = config or str(repo_experiment("captioned"))
    cmd = mmntp + ["train", "--workdir", str(workdir)] + (["--config", config] if config else [])
    for item in overrides:
        cmd += ["--set", item]
    wall = run(cmd, log)
    record = json.loads((workdir / "job.json").read_text())
    evals = sorted((workdir / "eval").glob("*.json"), key=lambda p: int(p.stem))
    figures = json.loads(evals[-1].read_text())
    kind = "classes" if args.classes else "default"
    print(json.dumps({
        "job": kind, "command": " ".join(cmd[2:]), "wall_s": round(wall, 1), "write_set_s": round(data_s, 1),
        "stages_s": {name: entry["seconds"] for name, entry in record.items()},
        **{k: figures.get(k) for k in FIGURES},
        "parts": {k: v for k, v in figures.items() if k.startswith(("caption_accuracy_", "image_agreement_", "classifier_accuracy_"))},
        "targets": TARGETS[kind], "log": str(log),
    }))


if __name__ == "__main__":
    main()
