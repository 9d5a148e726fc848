"""The fault matrix's faults of the process: kill -9, SIGTERM, a NaN burst, divergence, a changed process count."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

from fault_harness import (  # noqa: E402 — a sibling module (the tools run as scripts)
    MULTIHOST, Proc, STEADY, all_finite, checkpoint_names, committed_steps, compare, cut_back, error_lines, free_port, metrics_size, one_line_error, params, resumed_from, tmp_saves, train_records,
)


class ProcessFaults:
    """Mixed into `Matrix` (fault_matrix.py), whose runs and references these use."""

    def fault_kill9(self) -> dict:
        ref = self.reference("steady", STEADY)
        control_dir = self.trial_dir("kill9", 0) / "run"
        control = self.run(control_dir, STEADY, "control")
        control_check = self.verdict(control_dir, ref) if control.rc == 0 else {"bitwise": False}
        run_s, steps = control.seconds, 24
        if control.rc == 0 and control_check["bitwise"] and not self.args.keep:
            shutil.rmtree(control_dir.parent)
        trials, attempts, tally = [], 0, {"kills": 0, "in_flight": 0, "left": 0, "by_mode": {}}
        while len(trials) < self.args.kill_trials and attempts < 2 * self.args.kill_trials + 5:
            attempts += 1
            folder = self.trial_dir("kill9", len(trials) + 1)
            workdir, runs, failures, done = folder / "run", [], [], None
            for k in range(int(self.rng.integers(1, 4))):
                mode = str(self.rng.choice(["time", "step", "save"]))
                delay, target_step, target_save, jitter = (float(self.rng.uniform(0, run_s)), int(self.rng.integers(1, steps)),
                                                           int(self.rng.integers(1, 4)), float(self.rng.uniform(0, 0.04)))
                leftovers, offset = tmp_saves(workdir), metrics_size(workdir)
                proc = self.start(workdir, STEADY, f"run{k}")
                seen = set()
                while proc.alive():
                    elapsed = time.monotonic() - proc.t0
                    if mode == "time" and elapsed >= delay:
                        break
                    if mode == "step" and any(r["step"] >= target_step for r in train_records(workdir, offset)):
                        time.sleep(jitter * 2)
                        break
                    if mode == "save":
                        seen |= tmp_saves(workdir) - leftovers
                        if len(seen) >= target_save:
                            time.sleep(jitter / 4)
                            break
                    time.sleep(0.002 if mode == "save" else 0.01)
                in_flight = tmp_saves(workdir) - leftovers
                if not proc.alive():  # it finished before the kill point: this run was the rerun
                    done = proc
                    runs.append({"killed": False, "exit": proc.wait(), "resumed_from": resumed_from(proc.stderr)})
                    break
                proc.popen.send_signal(signal.SIGKILL)
                proc.wait()
                left = tmp_saves(workdir) - leftovers
                reached = max((r["step"] for r in train_records(workdir, offset)), default=None)
                runs.append({"killed": True, "mode": mode, "at_s": round(proc.seconds, 3), "resumed_from": resumed_from(proc.stderr),
                             "step_reached": reached, "step_folders": committed_steps(workdir), "save_in_flight": sorted(in_flight),
                             "unfinished_save_left": sorted(left)})
            kills = [r for r in runs if r["killed"]]
            if not kills:  # the first run finished before its kill point: draw again
                shutil.rmtree(folder, ignore_errors=True)
                continue
            codes = [runs[-1]["exit"]] if done is not None else []
            if done is None or done.rc != 0:
                done, more = self.rerun_until_complete(workdir, STEADY, "rerun")
                codes += more
                runs += [{"killed": False, "exit": c} for c in more]
                runs[-1]["resumed_from"] = resumed_from(done.stderr)
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            survived = codes[-1] == 0 and codes.count(0) == 1 and len(codes) <= 3
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == steps)
            if not survived:
                failures.append(f"exit codes after the last kill {codes}: {error_lines(done.stderr) or done.stderr.splitlines()[-1:]}")
            tally["kills"] += len(kills)
            tally["in_flight"] += sum(bool(k["save_in_flight"]) for k in kills)
            tally["left"] += sum(bool(k["unfinished_save_left"]) for k in kills)
            for k in kills:
                tally["by_mode"][k["mode"]] = tally["by_mode"].get(k["mode"], 0) + 1
            trials.append(self.record("kill9", {"trial": len(trials) + 1, "survived": survived, "lost": lost, "runs": runs,
                                                "exit_codes_after_last_kill": codes, "final": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "SIGKILL to the CLI process at a random time after start, after a random training step, or while an async save's "
                "*.orbax-checkpoint-tmp-* folder exists (1–3 kills per trial), then the same command until exit 0; final params vs an uninterrupted run",
                "command": self.shown(STEADY) + "; kill -9 PID; rerun until exit 0",
                "details": {"kills": tally["kills"], "kills_during_a_save": tally["in_flight"], "kills_leaving_an_unfinished_save": tally["left"],
                            "kills_by_mode": tally["by_mode"], "uninterrupted_run_s": round(run_s, 1),
                            "control_run_bitwise": control_check.get("bitwise")}}

    def fault_sigterm(self) -> dict:
        ref = self.reference("steady", STEADY)
        trials, attempts, n = [], 0, self.args.sigterm_trials
        while len(trials) < n and attempts < 2 * n + 4:
            attempts += 1
            index = len(trials)
            folder = self.trial_dir("sigterm", index + 1)
            workdir, failures = folder / "run", []
            mode, twice = ("step", "save")[index % 2], index % 4 >= 2
            target_step, target_save = int(self.rng.integers(2, 20)), int(self.rng.integers(1, 6))
            proc, seen = self.start(workdir, STEADY, "signalled"), set()
            while proc.alive():
                if mode == "step" and any(r["step"] >= target_step for r in train_records(workdir)):
                    break
                if mode == "save":
                    seen |= tmp_saves(workdir)
                    if len(seen) >= target_save:
                        break
                time.sleep(0.002 if mode == "save" else 0.01)
            if not proc.alive():
                proc.wait()
                shutil.rmtree(folder, ignore_errors=True)
                continue
            proc.popen.send_signal(signal.SIGTERM)
            if twice:
                time.sleep(0.05)
                if proc.alive():
                    proc.popen.send_signal(signal.SIGTERM)
            rc = proc.wait()
            stopped = re.findall(r"SIGTERM: stopped at step (\d+); checkpoint saved", proc.stderr)
            saved = int(stopped[-1]) if stopped else None
            if rc != 130 or saved is None:
                failures.append(f"exit {rc}, {'no stop line' if saved is None else 'stopped at ' + str(saved)}: {proc.stderr.splitlines()[-1:]}")
            elif saved not in committed_steps(workdir) or tmp_saves(workdir):
                failures.append(f"checkpoint {saved} missing or a save left unfinished: {checkpoint_names(workdir)}")
            last, codes = self.rerun_until_complete(workdir, STEADY, "final")
            if resumed_from(last.stderr) != saved:
                failures.append(f"resumed from {resumed_from(last.stderr)}, stopped at {saved}")
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            survived = not failures and codes == [0]
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
            trials.append(self.record("sigterm", {"trial": index + 1, "survived": survived, "lost": lost, "mode": mode, "signals": 2 if twice else 1,
                                                  "exit": rc, "stopped_at": saved, "rerun_exit_codes": codes, "final": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "SIGTERM after a random training step or while an async save is in flight; half the trials send a second "
                "SIGTERM 50 ms later; expect exit 130 with that step saved, then the same command resumes",
                "command": self.shown(STEADY) + "; kill -TERM PID; rerun", "details": {}}

    def fault_nan(self) -> dict:
        from mmntp_jax.config import TrainConfig

        max_bad = TrainConfig().max_bad_steps
        trials = []
        for i in range(1, self.args.nan_trials + 1):
            folder = self.trial_dir("nan", i)
            length = int(self.rng.integers(1, max_bad))
            first = int(self.rng.integers(3, 24 - length))
            burst = list(range(first, first + length))
            env = self.env(FAULT_NAN_STEPS=",".join(map(str, burst)))
            straight = self.run(folder / "straight", STEADY, "straight", driver=self.driver, env=env)
            failures, lost = [], False
            if straight.rc != 0:
                failures.append(f"straight run exited {straight.rc}: {error_lines(straight.stderr) or straight.stderr.splitlines()[-1:]}")
            logged = sorted(int(s) for s in re.findall(r"step (\d+): not applied \(loss is nan\)", straight.stderr))
            records = train_records(folder / "straight")
            counted = records[-1].get("train/skipped_steps") if records else None
            if logged != burst or counted != length:
                failures.append(f"burst {burst}: logged {logged}, counted {counted}")
                lost = True
            # the same burst, killed inside it, then rerun: the same parameters and count
            workdir = folder / "killed"
            proc = self.start(workdir, STEADY, "killed", driver=self.driver, env=env)
            target = first + length // 2
            while proc.alive() and not any(r["step"] >= target for r in train_records(workdir)):
                time.sleep(0.005)
            killed = proc.alive()
            if killed:
                proc.popen.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = max((r["step"] for r in train_records(workdir)), default=None) if killed else None
            last, codes = self.rerun_until_complete(workdir, STEADY, "killed", driver=self.driver, env=env)
            resumed_records = train_records(workdir)
            resumed_count = resumed_records[-1].get("train/skipped_steps") if resumed_records else None
            check = {"bitwise": False}
            if codes[-1] == 0 and straight.rc == 0:
                step, got, _ = params(workdir)
                _, want, _ = params(folder / "straight")
                check = {"step": step, **compare(got, want), "finite": all_finite(got)}
            if codes[-1] != 0 or resumed_count != length:
                failures.append(f"killed at step ≥ {target} and rerun: exits {codes}, counted {resumed_count}")
            lost = lost or not (check["bitwise"] and check.get("finite") and check.get("step") == 24 and resumed_count == length)
            trials.append(self.record("nan", {"trial": i, "survived": not failures, "lost": lost, "burst": burst, "logged": logged, "counted": counted,
                                              "killed_after_step": killed_at, "resumed_from": resumed_from(last.stderr), "rerun_exit_codes": codes,
                                              "counted_after_resume": resumed_count, "final_vs_straight": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": f"a driver wraps BackboneClient.next_batch so the batches of 1–{max_bad - 1} consecutive steps have a NaN "
                "loss mask, then calls mmntp_jax.cli.main; each trial runs straight, and again killed inside the burst and rerun; expect exit 0, each "
                "step logged and counted, the killed run bitwise equal to the straight one, parameters finite",
                "command": self.shown(STEADY, "OUT/drivers/nan_driver.py") + "  (FAULT_NAN_STEPS=first,…,last)", "details": {"max_bad_steps": max_bad}}

    def fault_divergence(self) -> dict:
        trials = []
        for i in range(1, self.args.divergence_trials + 1):
            folder = self.trial_dir("divergence", i)
            settings = ["optim.lr=1e20", "train.steps=12", "train.max_bad_steps=3", "checkpoint.every=2", "checkpoint.keep=10", f"train.seed={i - 1}"]
            workdir, failures = folder / "run", []
            proc = self.run(workdir, settings, "diverged")
            lines = error_lines(proc.stderr)
            newest_named = re.findall(r"the newest checkpoint, step (\d+),", lines[-1]) if lines else []
            streak = re.findall(r"steps (\d+)[–-](\d+): ", lines[-1]) if lines else []
            saved = committed_steps(workdir)
            if proc.rc != 3 or not one_line_error(proc.stderr) or "train.max_bad_steps=3" not in (lines or [""])[-1]:
                failures.append(f"expected exit 3 and one line naming train.max_bad_steps, got exit {proc.rc}: {proc.stderr.strip().splitlines()[-2:]}")
            lost = False
            if newest_named and streak:
                newest, first_bad = int(newest_named[0]), int(streak[0][0])
                step, got, _ = params(workdir)
                if not (saved and saved[-1] == newest == step and newest < first_bad and all_finite(got)):
                    failures.append(f"newest checkpoint {saved[-1:]} / loaded {step}, named {newest}, streak from {first_bad}, finite {all_finite(got)}")
                    lost = True
                if not list((workdir / "bad_batches").glob("step_*.npz")):
                    failures.append("no batch saved in bad_batches/")
            else:
                failures.append(f"the error line names no newest checkpoint or streak: {lines[-1:]}")
                lost = True
            trials.append(self.record("divergence", {"trial": i, "survived": not failures, "lost": lost, "exit": proc.rc, "error": lines[-1:],
                                                     "checkpoints": saved, "failures": failures}, folder))
        return {"trials": trials, "simulated": "optim.lr=1e20 with train.max_bad_steps=3 (seeds 0, 1, …); expect exit 3, one line naming the streak and "
                "the newest checkpoint, that checkpoint the newest on disk, before the streak, finite, and the bad batches saved",
                "command": self.shown(["optim.lr=1e20", "train.steps=12", "train.max_bad_steps=3", "checkpoint.every=2"]), "details": {}}

    def multihost(self, workdir: Path, count: int, devices: int, settings, name: str) -> list[Proc]:
        port, procs = free_port(), []
        for i in range(count):
            extra, env = [], self.env(devices)
            if count > 1 and i == 0:
                extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", "0"]
            elif count > 1:
                env.update(MMNTP_COORDINATOR=f"127.0.0.1:{port}", MMNTP_NUM_PROCESSES=str(count), MMNTP_PROCESS_ID=str(i))
                extra = ["--distributed"]
            procs.append(self.start(workdir, settings, f"{name}-p{i}", env=env, extra=extra))
        for p in procs:
            p.rc = p.wait()
        return procs

    def fault_process_count(self) -> dict:
        import numpy as np

        from mmntp_jax.data.global_batches import merge_process_states

        settings = [*MULTIHOST, "train.steps=4", "checkpoint.every=2"]
        base = self.out / "process_count" / "two"
        if base.parent.exists():
            shutil.rmtree(base.parent)
        two = self.multihost(base / "run", 2, 2, settings, "two")
        if any(p.rc != 0 for p in two):
            raise RuntimeError(f"the 2-process run failed: {[p.stderr[-1500:] for p in two]}")
        losses = lambda w: {r["step"]: r["train/loss"] for r in train_records(w)}  # noqa: E731
        want_losses = losses(base / "run")
        trials = []
        for i, (count, devices) in enumerate([(1, 4), (4, 1)][: self.args.process_trials], 1):
            folder = self.trial_dir("process_count", i)
            workdir = cut_back(base / "run", folder / "run", 2)
            procs = self.multihost(workdir, count, devices, settings, f"resume{count}")
            failures, lost = [], False
            if any(p.rc != 0 for p in procs) or resumed_from(procs[0].stderr) != 2:
                failures.append(f"exits {[p.rc for p in procs]}, resumed from {resumed_from(procs[0].stderr)}: {procs[0].stderr.strip().splitlines()[-2:]}")
            got_losses = losses(workdir)
            rel = max((abs(got_losses.get(s, np.nan) - want_losses[s]) / abs(want_losses[s]) for s in (3, 4)), default=np.nan)
            same_data = False
            try:
                same_data = merge_process_states(workdir / "checkpoints" / "4" / "data") == merge_process_states(base / "run" / "checkpoints" / "4" / "data")
            except (OSError, ValueError) as err:
                failures.append(f"iterator state at step 4: {err}")
            check = {}
            if not failures:
                step, got, _ = params(workdir)
                check = {"step": step, **compare(got, params(base / "run")[1])}
            if not (same_data and rel <= 1e-5):
                failures.append(f"iterator state equal: {same_data}; largest relative loss difference {rel}")
                lost = True
            trials.append(self.record("process_count", {"trial": i, "survived": not failures, "lost": lost or bool(failures),
                                                        "resumed_with": f"{count} process(es) × {devices} device(s)", "iterator_state_equal": same_data,
                                                        "loss_rel_diff": rel, "final_vs_two_process": check, "failures": failures}, folder))
        return {"trials": trials, "simulated": "4 steps by 2 CLI processes (--coordinator / MMNTP_* variables, 2 CPU devices each, data=2 × fsdp=2 mesh), "
                "cut back to checkpoint 2, resumed by 1 process of 4 devices (and 4 of 1); expect the iterator state at step 4 equal and the losses "
                "within 1e-5 relative, as docs/multihost.md defines exactness",
                "command": self.shown(settings) + " --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I; then 1 process", "details": {}}


# -- driver ----------------------------------------------------------------------------------
