"""`mmntp train` and `mmntp eval`."""

from __future__ import annotations

import json
import math
import sys

from mmntp_jax.train.distributed import add_arguments as add_distributed_arguments


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    if name == "train":
        parser.add_argument("--config", help="experiment file experiments/<name>.py (default: the embedded default job)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. model.n_layers=4 (repeatable)")
        parser.add_argument("--workdir", default=None, help="run directory (local path or any path orbax accepts; default workdirs/<name>)")
        parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        parser.add_argument("--profile-steps", default=None, metavar="A:B", help="write a JAX profiler trace of steps A..B-1 to WORKDIR/profile")
        parser.add_argument("--cpu-devices", type=int, metavar="N", help="on a CPU-only machine, train data-parallel over N CPU devices (e.g. the core count)")
        add_distributed_arguments(parser)
        parser.set_defaults(func=run_train)
    elif name == "eval":
        parser.add_argument("--workdir", required=True)
        parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
        parser.add_argument("--batches", type=int, default=None, help="eval batches (default: train.eval_batches)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.set_defaults(func=run_eval)


def run_train(args) -> int:
    import jax

    from mmntp_jax.config import load_config, to_json, validate
    from mmntp_jax.paths import resolve_path
    from mmntp_jax.sharding import cpu_device_count, use_cpu_devices
    from mmntp_jax.train.distributed import initialize, launch_from_args
    from mmntp_jax.train.loop import train

    launch = launch_from_args(args)  # a partial --coordinator/--num-processes/--process-id set fails here, at once
    config = load_config(args.config, args.overrides)  # before JAX starts, so train.cpu_devices can apply
    use_cpu_devices(args.cpu_devices or cpu_device_count(config.train.cpu_devices))
    if launch is not None:
        initialize(launch)
    validate(config, device_count=jax.device_count())
    if args.print_config:
        print(to_json(config))
        return 0
    workdir = args.workdir or resolve_path(f"workdirs/{config.name}")
    log = lambda m: print(m, file=sys.stderr)
    if config.job.kind:
        from mmntp_jax.job.captioned import run_captioned_job

        return 0 if run_captioned_job(config, workdir, log=log, profile_steps=args.profile_steps)["complete"] else 130
    summary = train(config, workdir, profile_steps=args.profile_steps, log=log)
    if summary.get("interrupted"):
        return 130
    final = {k: round(v, 4) for k, v in summary.items() if k in ("train/loss", "eval/loss") and isinstance(v, float)}
    if final:
        print(f"step {summary['step']}: " + ", ".join(f"{k} {v}" for k, v in final.items()), file=sys.stderr)
    return 0


def run_eval(args) -> int:
    from mmntp_jax.api import load
    from mmntp_jax.train.loop import run_losses

    run = load(args.workdir, step=args.step)
    metrics = {"step": run.step, **run_losses(run, args.batches)}
    if run.config.job.kind:
        from mmntp_jax.job.report import multimodal_figures

        metrics.update(multimodal_figures(run, log=lambda m: print(m, file=sys.stderr)))
    if args.json:  # a non-finite figure is null, as in metrics.jsonl (JSON has no NaN)
        print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}))
    else:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0
