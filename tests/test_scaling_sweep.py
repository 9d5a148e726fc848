"""Sweep planning (shapes, lr, warm-up, WSD branch points, compute) and the resumable runner."""

import json
import math

import numpy as np
import pytest

from mmntp_jax.config import CheckpointConfig, Config, ConfigError, DataConfig, ModelConfig, TrainConfig
from mmntp_jax.scaling import runner
from mmntp_jax.model.flops import param_count, training_flops_per_token
from mmntp_jax.scaling.presets import cpu_sweep
from mmntp_jax.scaling.sweep import SweepConfig, lr_for_width, model_for_width, plan, stable_config, total_flops
from mmntp_jax.scaling.table import load_runs


def _sweep(**kw):
    base = Config(
        model=ModelConfig(vocab_size=272, max_seq_len=32), data=DataConfig(source="markov"),
        checkpoint=CheckpointConfig(every=1000, keep=2, async_save=False),
        train=TrainConfig(batch_size=8, seq_len=16, eval_every=10**6, eval_batches=2, progress=False, compilation_cache=""),
    )
    settings = dict(name="t", base=base, widths=(16, 32), tokens=(1280, 2560), head_dim=8, aspect=16, min_steps=5, lr_ref=1e-2, width_ref=16)
    settings.update(kw)
    return SweepConfig(**settings)


def test_width_rule_and_lr_rule():
    sweep = cpu_sweep("s", "stdlib", budgets=(1e11,))
    m = model_for_width(sweep, 48)
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff) == (48, 2, 6, 6, 128)  # 8/3·48 = 128
    m = model_for_width(sweep, 16)
    assert (m.n_layers, m.n_heads, m.d_ff) == (1, 2, 48)
    assert lr_for_width(sweep, 32) == pytest.approx(4e-3 * 2.0)
    with pytest.raises(ConfigError, match="multiple of head_dim"):
        model_for_width(sweep, 20)


def test_isoflop_plan_steps_branches_and_compute():
    sweep = cpu_sweep("s", "markov", budgets=(1e11, 4e11), widths=(16, 64))
    runs, notes = plan(sweep)
    assert [r.run_id for r in runs] == ["w16_C1e11", "w16_C4e11", "w64_C1e11", "w64_C4e11"] and notes == []
    per_step = 32 * 64
    for r in runs:
        fpt = training_flops_per_token(r.config.model, 64)
        assert r.steps == round(r.budget / fpt / per_step)
        assert r.tokens == r.steps * per_step and r.flops == pytest.approx(fpt * r.tokens)
        assert abs(r.flops / r.budget - 1) < 0.01
        cool = round(0.2 * r.steps)
        assert r.branch_step == r.steps - cool
        assert round(r.steps * r.config.optim.decay_fraction) == cool  # the WSD decay covers exactly the cooldown
        assert r.config.optim.schedule == "wsd" and r.config.train.steps == r.steps
        assert r.params == param_count(r.config.model)
    w16 = [r for r in runs if r.width == 16]
    assert {r.config.optim.warmup_steps for r in w16} == {round(0.1 * w16[0].steps)}  # from the shortest run of the size
    # compute: per family the longest stable phase once plus every cooldown
    expected = sum(
        fam[0].flops / fam[0].steps * (max(r.branch_step for r in fam) + sum(r.steps - r.branch_step for r in fam))
        for fam in (w16, [r for r in runs if r.width == 64])
    )
    assert total_flops(runs, "wsd") == pytest.approx(expected)
    assert total_flops(runs, "none") == pytest.approx(sum(r.flops for r in runs))
    stable = stable_config(w16[1], w16[1].branch_step)
    assert stable.optim.schedule == "constant" and stable.train.steps == w16[1].branch_step
    assert stable.optim.warmup_steps == w16[1].config.optim.warmup_steps and stable.optim.lr == w16[1].config.optim.lr


def test_plan_notes_and_errors():
    runs, notes = plan(_sweep(tokens=(128, 640), min_steps=5))  # 128 tokens = 1 step: left out with a note
    assert all(r.tokens == 640 for r in runs) and len(notes) == 2 and "left out" in notes[0]
    with pytest.raises(ConfigError, match="exactly one of budgets"):
        plan(_sweep(budgets=(1e9,)))
    with pytest.raises(ConfigError, match="reuse"):
        plan(_sweep(reuse="sometimes"))
    with pytest.raises(ConfigError, match="must be a number > 0"):
        plan(_sweep(tokens=(-5,)))
    with pytest.raises(ConfigError, match="SweepConfig"):
        runner.run_sweep(Config(), "/nonexistent")


def test_plan_file_may_grow_but_not_change(tmp_path):
    sweep = _sweep()
    runs, _ = plan(sweep)
    runner.write_plan(tmp_path, sweep, runs)
    bigger = _sweep(tokens=(1280, 2560, 5120))
    runner.write_plan(tmp_path, bigger, plan(bigger)[0])  # a longer run per size: allowed
    assert len(json.loads((tmp_path / "plan.json").read_text())["runs"]) == 6
    changed = _sweep(tokens=(1280, 2560, 5120), lr_ref=2e-2)
    with pytest.raises(ConfigError, match="planned differently"):
        runner.write_plan(tmp_path, changed, plan(changed)[0])
    reuse, loaded = runner.load_plan(tmp_path)
    assert reuse == "wsd" and [r.config for r in loaded] == [r.config for r in plan(bigger)[0]]


def test_seed_from_stable_copies_once(tmp_path):
    stable, run_dir = tmp_path / "stable", tmp_path / "run"
    (stable / "checkpoints" / "12" / "state").mkdir(parents=True)
    (stable / "checkpoints" / "12" / "state" / "x").write_text("params")
    (run_dir / "checkpoints").mkdir(parents=True)
    runner.seed_from_stable(stable, run_dir, 12)
    assert (run_dir / "checkpoints" / "12" / "state" / "x").read_text() == "params"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["12"]
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        runner.seed_from_stable(stable, tmp_path / "other", 7)


@pytest.mark.slow
def test_wsd_branch_equals_standalone_run(tmp_path):
    """A run branched from the shared constant-lr run ends where a from-scratch WSD run ends."""
    sweep = _sweep(widths=(16,), tokens=(2560,))
    (run,) = plan(sweep)[0]
    runner.run_sweep(sweep, tmp_path / "sweep")
    branched = json.loads((tmp_path / "sweep" / "runs" / run.run_id / "result.json").read_text())
    from mmntp_jax.train.backbone import train

    alone = train(run.config, tmp_path / "alone", log=lambda *a: None)
    assert branched["loss"] == pytest.approx(alone["eval/loss"], abs=1e-5)
    assert branched["train_loss"] == pytest.approx(alone["train/loss"], abs=1e-5)


@pytest.mark.slow
def test_sweep_runs_resumes_and_writes_table(tmp_path, capsys):
    from mmntp_jax.cli import main as cli_main

    sweep = _sweep()
    work = tmp_path / "sweep"
    rows = runner.run_sweep(sweep, work, jobs=2)
    assert len(rows) == 4
    table = load_runs(work)
    assert set(table.columns) >= {"run", "budget", "steps", "branch_step", "loss_text", "train_loss"}
    planned = {r.run_id: r for r in plan(sweep)[0]}
    for i, run_id in enumerate(table.columns["run"]):
        r = planned[run_id]
        assert table.N[i] == r.params and table.D[i] == r.tokens and table.C[i] == pytest.approx(r.flops)
        assert math.isfinite(table.loss[i]) and 0 < table.loss[i] < np.log(272)
    # the longer run of each size is better than the shorter one
    by_id = dict(zip(table.columns["run"], table.loss))
    assert by_id["w16_D2.6e03"] < by_id["w16_D1.3e03"] and by_id["w32_D2.6e03"] < by_id["w32_D1.3e03"]
    stamps = {p: p.stat().st_mtime for p in work.glob("runs/*/result.json")}
    runner.run_sweep(sweep, work)  # all finished: nothing retrained
    assert stamps == {p: p.stat().st_mtime for p in work.glob("runs/*/result.json")}
    (work / "runs" / "w32_D2.6e03" / "result.json").unlink()  # trained but not recorded: evaluated again
    again = runner.run_sweep(sweep, work)
    assert dict((r["run"], r["loss"]) for r in again)["w32_D2.6e03"] == pytest.approx(by_id["w32_D2.6e03"], abs=1e-6)
    capsys.readouterr()
    assert cli_main(["scaling", "run", "--config", "experiments/scaling/markov_isoflop.py", "--workdir", str(tmp_path / "x"), "--dry-run"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # 3 budgets × 6 widths, every one with at least 20 steps
    assert len(lines) == 18 and all(line["N"] > 0 and line["steps"] >= 20 for line in lines)
