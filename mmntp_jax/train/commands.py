"""`mmntp train`, `mmntp eval`, `mmntp sample`."""

from __future__ import annotations

import json
import sys


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    if name == "train":
        parser.add_argument("--config", help="experiment file experiments/<name>.py (default: the embedded default job)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. model.n_layers=4 (repeatable)")
        parser.add_argument("--workdir", default=None, help="run directory (local path or any path orbax accepts; default workdirs/<name>)")
        parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        parser.add_argument("--profile-steps", default=None, metavar="A:B", help="write a JAX profiler trace of steps A..B-1 to WORKDIR/profile")
        parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host; see docs/multihost.md)")
        parser.add_argument("--cpu-devices", type=int, metavar="N", help="on a CPU-only machine, train data-parallel over N CPU devices (e.g. the core count)")
        parser.set_defaults(func=run_train)
    elif name == "eval":
        parser.add_argument("--workdir", required=True)
        parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
        parser.add_argument("--batches", type=int, default=None, help="eval batches (default: train.eval_batches)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.set_defaults(func=run_eval)
    elif name == "sample":
        parser.add_argument("--workdir", required=True)
        parser.add_argument("--step", type=int, default=None)
        parser.add_argument("--prompt", default="", help="text prompt (default: empty, i.e. just <bos>)")
        parser.add_argument("--max-new-tokens", type=int, default=128)
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--top-k", type=int, default=0)
        parser.add_argument("--num-samples", type=int, default=1)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default=None, help="also write the samples to OUT/samples.jsonl (default WORKDIR/samples)")
        parser.set_defaults(func=run_sample)


def run_train(args) -> int:
    import jax

    from mmntp_jax.config import load_config, to_json
    from mmntp_jax.paths import resolve_path
    from mmntp_jax.sharding import use_cpu_devices
    from mmntp_jax.train.loop import train

    use_cpu_devices(args.cpu_devices)
    if args.distributed:
        jax.distributed.initialize()
    config = load_config(args.config, args.overrides, device_count=jax.device_count())
    if args.print_config:
        print(to_json(config))
        return 0
    workdir = args.workdir or resolve_path(f"workdirs/{config.name}")
    summary = train(config, workdir, profile_steps=args.profile_steps, log=lambda m: print(m, file=sys.stderr))
    if summary.get("interrupted"):
        return 130
    final = {k: round(v, 4) for k, v in summary.items() if k in ("train/loss", "eval/loss") and isinstance(v, float)}
    if final:
        print(f"step {summary['step']}: " + ", ".join(f"{k} {v}" for k, v in final.items()), file=sys.stderr)
    return 0


def run_eval(args) -> int:
    import dataclasses

    import jax

    from mmntp_jax.api import load
    from mmntp_jax.sharding import make_mesh
    from mmntp_jax.train.loop import evaluate
    from mmntp_jax.train.step import StepBuilder

    run = load(args.workdir, step=args.step)
    config = run.config
    config = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, data=-1, fsdp=1, tensor=1, sequence=1))
    if args.batches:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, eval_batches=args.batches))
    mesh = make_mesh(config.mesh)
    builder = StepBuilder(config, mesh)
    params = jax.device_put(run.params, builder.state_shardings.params)
    metrics = {"step": run.step, **evaluate(builder, params, config, mesh)}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


def run_sample(args) -> int:
    from etils import epath

    from mmntp_jax.api import load

    run = load(args.workdir, step=args.step)
    prompts = [args.prompt] * args.num_samples
    seeds_differ = args.temperature > 0
    texts = [run.generate(p, args.max_new_tokens, args.temperature, args.top_k, seed=args.seed + (i if seeds_differ else 0)) for i, p in enumerate(prompts)]
    out = epath.Path(args.out) if args.out else epath.Path(args.workdir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("a") as f:
        for text in texts:
            f.write(json.dumps({"step": run.step, "prompt": args.prompt, "temperature": args.temperature, "text": text}) + "\n")
    for text in texts:
        print(args.prompt + text)
    return 0
