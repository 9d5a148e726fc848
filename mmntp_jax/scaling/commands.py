"""`mmntp scaling run` and `mmntp scaling fit`."""

from __future__ import annotations

import json
import sys


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="scaling_command", metavar="COMMAND")
    run = commands.add_parser("run", help="train the runs of a sweep (resumable) and write results.csv/.jsonl")
    run.add_argument("--config", required=True, help="sweep file experiments/scaling/<name>.py (get_config() → SweepConfig)")
    run.add_argument("--workdir", required=True, help="sweep directory (re-run the same command to resume)")
    run.add_argument("--jobs", type=int, default=1, help="model sizes trained at once, each in its own process (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the planned runs as JSON lines and exit")
    run.set_defaults(func=run_sweep_command)
    fit = commands.add_parser("fit", help="fit scaling laws (Approach 2 and 3, CIs, per-modality and mixed-modal laws)")
    fit.add_argument("--runs", required=True, help="runs table (.csv/.jsonl, e.g. the Chinchilla data as downloaded) or a sweep directory")
    fit.add_argument("--out", required=True, help="output directory for fit.json and the plots")
    fit.add_argument("--drop-highest-loss", type=int, default=0, metavar="K", help="leave out the K rows of highest loss (default 0)")
    fit.add_argument("--bootstrap", type=int, default=200, metavar="B", help="bootstrap replicates for the confidence intervals (0 = none; default 200)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--fits", default=None, help="comma-separated fits that must succeed (approach2, approach3, mixed); others are skipped when unsupported")
    fit.add_argument("--grid-stride", type=int, default=1, metavar="S", help="start L-BFGS from every S-th point of Hoffmann's 4,500-point grid (default 1: all)")
    fit.add_argument("--no-plots", action="store_true", help="write fit.json only")
    fit.set_defaults(func=run_fit_command)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_sweep_command(args) -> int:
    from mmntp_jax.config import load_experiment
    from mmntp_jax.paths import resolve_config_paths
    from mmntp_jax.scaling.runner import run_sweep
    from mmntp_jax.scaling.sweep import SweepConfig, check_sweep, plan, total_flops

    sweep = resolve_config_paths(load_experiment(args.config, SweepConfig))
    check_sweep(sweep)
    if args.dry_run:
        runs, notes = plan(sweep)
        for r in runs:
            print(json.dumps({k: v for k, v in r.row().items() if v == v}))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"{len(runs)} runs, {total_flops(runs, sweep.reuse):.3g} training FLOPs", file=sys.stderr)
        return 0
    run_sweep(sweep, args.workdir, jobs=args.jobs, log=lambda m: print(m, file=sys.stderr))
    return 0


def run_fit_command(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.scaling.report import FITS, fit_runs
    from mmntp_jax.scaling.table import RunsError, load_runs

    required = tuple(f.strip() for f in args.fits.split(",") if f.strip()) if args.fits else ()
    unknown = [f for f in required if f not in FITS]
    if unknown:
        raise CommandError(f"--fits: unknown fit {unknown[0]!r}; choose from {', '.join(FITS)}")
    if args.bootstrap < 0:
        raise CommandError(f"--bootstrap must be ≥ 0, got {args.bootstrap}")
    if args.grid_stride < 1:
        raise CommandError(f"--grid-stride must be ≥ 1, got {args.grid_stride}")
    from mmntp_jax.scaling.fit import grid_starts
    try:
        runs = load_runs(args.runs)
        result = fit_runs(
            runs, out_dir=args.out, drop_highest_loss=args.drop_highest_loss, n_boot=args.bootstrap, seed=args.seed,
            required=required, plots=not args.no_plots, starts=grid_starts()[:: args.grid_stride],
        )
    except RunsError as err:
        raise CommandError(str(err)) from None
    keys = ("E", "A", "B", "alpha", "beta", "a_approach3", "a_approach2", "objective", "n_points")
    print(json.dumps({k: result.get(k) for k in keys}))
    for note in result.get("skipped", []):
        print(f"skipped {note['fit']}: {note['reason']}", file=sys.stderr)
    return 0
