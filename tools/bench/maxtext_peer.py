"""MaxText 0.2.5 and our tuned train step at the peer shape, side by side (one JSON line).

    python tools/bench/maxtext_peer.py --install           # once: MaxText's own virtualenv
    python tools/bench/maxtext_peer.py --steps 8           # MaxText settings, then ours
    python tools/bench/maxtext_peer.py --maxtext-settings remat_policy=full "remat_policy=none,scan_layers=false"

MaxText is never a dependency of this project: `--install` makes a virtualenv under
~/.cache/mmntp_jax/maxtext-0.2.5 (`--venv DIR`) with a Python >= 3.12 (`--python PATH`, else
python3.13 / python3.12 on PATH, else pyenv's), installs maxtext==0.2.5 without its
dependencies, then only what a CPU train step imports (DEPS below) under the version floors of
its decoupled requirements (`dependencies/.../decoupled-requirements.txt` in the wheel, used as
pip constraints: no Google Cloud clients, no TPU/GPU wheels; tokamax pinned to 0.0.12).

Each MaxText setting runs `python -m maxtext.trainers.pre_train.train <its configs/base.yml>` in
a subprocess (DECOUPLE_GCLOUD=TRUE, JAX_PLATFORMS=cpu, hardware=cpu, one device) at the peer
shape: d_model 256, 4 layers, 4 heads of 64 (4 kv), MLP 1024 (base.yml's default activations
[silu, linear] are SwiGLU), vocab 32000, seq 512, batch 8, float32 activations and weights
(`dtype`, `weight_dtype`), synthetic data, AdamW, no checkpoints, output in a temp folder
(kept and named if the run fails; 0.2.5 dumps the step's HLO there whatever `dump_hlo` says).
Its step times are its own log's `completed step: k, seconds: s`: the time from dispatching
step k-1 to dispatching step k. Its loop waits for step k-2's metrics in between, so s is
step k-1's execution for k >= 2 and dispatch only for k = 0, 1 (compilation comes before
step 0). `--skip` (3) drops steps 0-2 (dispatch, first execution); tokens/s = batch * seq /
median of the rest. `step_s_log_gap_median`, the median gap between those log lines (each
written as its step finishes), is a cross-check. MFU for both sides uses MaxText's FLOP count
(mmntp_jax.model.flops) against the float32 matmul peak measured in this run.
Then our tuned step (fused chunked cross-entropy, blockwise attention) runs in this process
through tools/bench/train_step.py, timing steps - skip steps after compile and 2 warm-up steps.

Settings (each `key=value[,key=value]`, MaxText overrides; default list in DEFAULT_SETTINGS):
  remat_policy=full             MaxText's default (base.yml); ratio_vs_default is against it
  remat_policy=minimal          saves every projection output, recomputes attention context
  remat_policy=minimal_with_context   also saves the attention context (all dots saved)
  remat_policy=none,scan_layers=false no remat at all. With scan_layers=true (default) 0.2.5
                                wraps the scanned layer in jax.checkpoint with policy None,
                                which is the same as `full`, so `none` alone is not listed.
Left out on CPU: attention=flash (tokamax Pallas-Triton kernel: "NotImplementedError: Not
supported on cpu."); attention=autoselected (default) is dot_product on CPU, so dot_product is
not a separate setting; *_offloaded / custom offload to pinned host memory, meaningless here.
Exit 2 with one line for: no Python >= 3.12 (on --install), no venv, a failing MaxText run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.2.5"
VENV = Path("~/.cache/mmntp_jax") / f"maxtext-{VERSION}"
READY = "mmntp_ready.json"  # written last by --install
DEPS = [  # what `maxtext.trainers.pre_train.train` imports on a CPU synthetic-data run
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "absl-py", "pyyaml", "omegaconf", "pydantic", "jinja2",
    "pathwaysutils", "ml-collections", "aqtp", "qwix", "tokamax", "drjax", "grain", "transformers", "huggingface-hub",
    "tiktoken", "sentencepiece", "pillow", "sympy",
]
CONSTRAINTS = "dependencies/requirements/generated_requirements/decoupled-requirements.txt"
DEFAULT = "remat_policy=full"
DEFAULT_SETTINGS = [DEFAULT, "remat_policy=minimal", "remat_policy=minimal_with_context", "remat_policy=none,scan_layers=false"]
PEER = {  # tools/bench/train_step.py SHAPES["peer"] in MaxText's keys
    "base_emb_dim": 256, "base_num_decoder_layers": 4, "base_num_query_heads": 4, "base_num_kv_heads": 4, "head_dim": 64,
    "base_mlp_dim": 1024, "vocab_size": 32000, "max_target_length": 512, "per_device_batch_size": 8,
}
COMMON = {
    "hardware": "cpu", "dataset_type": "synthetic", "dtype": "float32", "weight_dtype": "float32", "opt_type": "adamw",
    "enable_checkpointing": "false", "skip_jax_distributed_system": "true", "jax_cache_dir": "", "enable_tensorboard": "false",
    "log_config": "false",
}
STEP = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*completed step: (\d+), seconds: ([0-9.]+)")
ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)")


class Fail(Exception):
    """One line for the user, exit 2."""


def good_python(path: str) -> bool:
    try:
        return subprocess.run([path, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_python(explicit: str | None) -> str:
    if explicit:
        if not good_python(explicit):
            raise Fail(f"--python {explicit} is not a working Python >= 3.12")
        return explicit
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    version = lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parents[1].name)]  # noqa: E731
    found = [shutil.which(n) for n in ("python3.13", "python3.12")] + sorted(glob.glob(f"{pyenv}/versions/3.*/bin/python"), key=version, reverse=True)
    for path in filter(None, found):  # pyenv shims are on PATH even where they do not run, so each is tried
        if good_python(path):
            return path
    raise Fail("no Python >= 3.12 found (python3.13 / python3.12 on PATH, pyenv versions); pass --python PATH")


def pip(venv: Path, *args: str) -> None:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], stdout=sys.stderr)
    if done.returncode != 0:
        raise Fail(f"pip install {' '.join(args)} failed (exit {done.returncode}) in {venv}")


def purelib(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def install(venv: Path, python: str | None) -> dict:
    if (venv / READY).exists():
        return json.loads((venv / READY).read_text())
    exe, t0 = find_python(python), time.perf_counter()
    print(f"creating {venv} with {exe}", file=sys.stderr)
    if subprocess.run([exe, "-m", "venv", "--clear", str(venv)]).returncode != 0:
        raise Fail(f"{exe} -m venv {venv} failed")
    pip(venv, "--no-deps", f"maxtext=={VERSION}")
    pip(venv, "-c", str(purelib(venv) / CONSTRAINTS), *DEPS)
    probe = "import importlib.metadata as m, maxtext.trainers.pre_train.train; print(m.version('maxtext'), m.version('jax'))"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=maxtext_env())
    if done.returncode != 0:
        raise Fail(f"MaxText does not import in {venv}: {meaningful_line(done.stderr)}")
    maxtext, jax = done.stdout.split()[-2:]
    info = {"maxtext": maxtext, "jax": jax, "python": exe, "venv": str(venv), "install_s": round(time.perf_counter() - t0, 1), "deps": DEPS}
    (venv / READY).write_text(json.dumps(info))
    return info


def maxtext_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "XLA_FLAGS")}
    return {**env, "DECOUPLE_GCLOUD": "TRUE", "JAX_PLATFORMS": "cpu", "PYTHONNOUSERSITE": "1"}


def meaningful_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ERROR.match(ln)]
    line = errors[-1] if errors else (lines[-1] if lines else "(no stderr)")
    return line if len(line) <= 300 else line[:297] + "..."


def parse_steps(log: str) -> list[tuple[int, float, float]]:
    """(step, seconds it reports, log time of day in s) for every `completed step` line."""
    rows = []
    for ln in log.splitlines():
        m = STEP.match(ln)
        if m:
            rows.append((int(m[4]), float(m[5]), int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])))
    return rows


def run_maxtext(venv: Path, setting: str, steps: int, skip: int, timeout: int) -> dict:
    overrides = {**COMMON, **PEER, "steps": steps, **dict(kv.split("=", 1) for kv in setting.split(",") if kv)}
    work = Path(tempfile.mkdtemp(prefix="maxtext_peer_"))
    overrides |= {"base_output_directory": str(work / "out"), "run_name": "peer", "dump_hlo_local_dir": str(work / "xla_dump")}
    cmd = [str(venv / "bin" / "python"), "-m", "maxtext.trainers.pre_train.train", str(purelib(venv) / "maxtext/configs/base.yml"),
           *(f"{k}={v}" for k, v in overrides.items())]
    print(f"MaxText {setting}: {steps} steps", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(work / "stdout.log", "w") as out, open(work / "stderr.log", "w") as err:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=err, cwd=work, env=maxtext_env(), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise Fail(f"MaxText ({setting}) ran past --timeout {timeout} s; its logs are in {work}") from None
    wall = time.perf_counter() - t0
    stderr = (work / "stderr.log").read_text(errors="replace")
    if rc != 0:
        raise Fail(f"MaxText ({setting}) failed (exit {rc}): {meaningful_line(stderr)}  [logs: {work}]")
    rows = parse_steps(stderr + "\n" + (work / "stdout.log").read_text(errors="replace"))
    timed = [s for step, s, _ in rows if step >= skip]
    if len(timed) < steps - skip:
        raise Fail(f"MaxText ({setting}) logged {len(rows)} `completed step` lines, expected {steps}; logs: {work}")
    gaps = [(b[2] - a[2]) % 86400 for a, b in zip(rows, rows[1:]) if b[0] >= skip]
    shutil.rmtree(work, ignore_errors=True)
    step_s = statistics.median(timed)
    return {"settings": setting, "step_s_median": step_s, "tokens_per_s": PEER["per_device_batch_size"] * PEER["max_target_length"] / step_s,
            "step_s_min": min(timed), "step_s": timed, "step_s_log_gap_median": statistics.median(gaps) if gaps else None, "wall_s": round(wall, 1)}


def run_ours(steps: int) -> tuple[dict, float, float]:
    """Our tuned step through tools/bench/train_step.py; also the run's matmul peak and FLOPs per step."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_step
    from mmntp_jax.model.flops import training_flops_per_step

    print(f"ours (tuned): {steps} timed steps", file=sys.stderr, flush=True)
    peak = train_step.matmul_peak()
    result = train_step.bench("peer", "tuned", steps, "float32", 256, peak)
    config = train_step.make_config("peer", "tuned", "float32", 256)
    return result, peak, training_flops_per_step(config.model, config.train.seq_len, config.train.batch_size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="create the MaxText virtualenv (if not there) and exit")
    parser.add_argument("--venv", type=Path, default=VENV, help=f"MaxText's virtualenv (default {VENV})")
    parser.add_argument("--python", help="a Python >= 3.12 for --install")
    parser.add_argument("--steps", type=int, default=8, help="MaxText steps per setting (ours times steps - skip)")
    parser.add_argument("--skip", type=int, default=3, help="MaxText's first logged steps left out (dispatch, first execution)")
    parser.add_argument("--maxtext-settings", nargs="+", default=DEFAULT_SETTINGS, metavar="K=V[,K=V]")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per MaxText run")
    args = parser.parse_args(argv)
    venv = args.venv.expanduser().absolute()
    try:
        if args.install:
            info = install(venv, args.python)
            print(json.dumps(info))
            return 0
        if args.skip < 2 or args.steps <= args.skip:
            raise Fail(f"need 2 <= --skip < --steps (MaxText's steps 0 and 1 time dispatch only); got --skip {args.skip} --steps {args.steps}")
        if not (venv / READY).exists():
            raise Fail(f"no MaxText {VERSION} virtualenv at {venv}; create it with: python tools/bench/maxtext_peer.py --install"
                       + (f" --venv {venv}" if args.venv != VENV else ""))
        info = json.loads((venv / READY).read_text())
        load_start = os.getloadavg()
        maxtext = [run_maxtext(venv, s, args.steps, args.skip, args.timeout) for s in args.maxtext_settings]
    except Fail as err:
        print(f"maxtext_peer: {err}", file=sys.stderr)
        return 2
    ours, peak, flops = run_ours(args.steps - args.skip)
    for m in maxtext:
        m["mfu"] = flops / m["step_s_median"] / peak
    fastest = max(maxtext, key=lambda m: m["tokens_per_s"])
    default = next((m for m in maxtext if m["settings"] == DEFAULT), None)
    print(json.dumps({
        "shape": "peer", "dtype": "float32", "steps": args.steps, "skip": args.skip,
        "maxtext": maxtext, "maxtext_fastest": {k: fastest[k] for k in ("settings", "tokens_per_s", "step_s_median")},
        "ours": {k: ours[k] for k in ("variant", "tokens_per_s", "step_s_median", "step_s_min", "mfu", "compile_s", "loss")},
        "ratio_vs_default": ours["tokens_per_s"] / default["tokens_per_s"] if default else None,
        "ratio_vs_fastest": ours["tokens_per_s"] / fastest["tokens_per_s"],
        "tflop_per_step": flops / 1e12, "matmul_peak_flops": peak, "cpu_count": os.cpu_count(),
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "maxtext_version": info["maxtext"], "maxtext_jax": info["jax"], "maxtext_args": {**COMMON, **PEER},
        "command": shlex.join(["python", *sys.argv]),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
