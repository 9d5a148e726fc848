"""The fault matrix's faults of storage and data: damaged checkpoints, a read-only or full disk, bad records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fault_harness import (  # noqa: E402 — a sibling module (the tools run as scripts)
    DOCS, EVAL_FRACTION, PER_SHARD, Proc, ROOT, RUN_TIMEOUT, STEADY, array_files, checkpoint_names, committed_steps, compare, cut_back, error_lines, one_line_error, params, resumed_from, train_records,
)


class StorageFaults:
    """Mixed into `Matrix` (fault_matrix.py), whose runs and references these use."""

    def damage(self, step_dir: Path, how: str, every_file: bool = False) -> str:
        files = array_files(step_dir)
        which = files if every_file else files[:1]
        named = f"all {len(files)} array files" if every_file else str(files[0].relative_to(step_dir))
        if how == "truncate":
            for f in which:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            return f"{named} truncated to half"
        if how == "garbage":
            for f in which:
                f.write_bytes(self.rng.integers(0, 256, f.stat().st_size, dtype="uint8").tobytes())
            return f"{named} overwritten with random bytes"
        if how == "delete":
            files[0].unlink()
            return f"{files[0].relative_to(step_dir)} deleted"
        if how == "metadata":
            for name in ("_CHECKPOINT_METADATA", "state/_METADATA"):
                (step_dir / name).write_bytes(b"\x00garbage{")
            return "_CHECKPOINT_METADATA and state/_METADATA garbage"
        if how == "empty":
            shutil.rmtree(step_dir)
            step_dir.mkdir()
            return "folder emptied"
        raise ValueError(how)

    def fault_corrupt(self, final: bool = False) -> dict:
        fault = "corrupt_final" if final else "corrupt"
        ref = self.reference("steady", STEADY)
        modes = (["truncate", "garbage"] if final else ["truncate", "garbage", "delete", "metadata", "empty"])[: self.args.corrupt_trials]
        trials = []
        for i, how in enumerate(modes, 1):
            folder = self.trial_dir(fault, i)
            newest = 24 if final else 22
            workdir = cut_back(ref, folder / "run", newest)
            what = self.damage(workdir / "checkpoints" / str(newest), how, every_file=final)
            last, codes = self.rerun_until_complete(workdir, STEADY, "rerun")
            failures = []
            if codes[-1] != 0:
                failures.append(f"rerun exits {codes}: {error_lines(last.stderr) or last.stderr.splitlines()[-1:]}")
            elif not final:
                warned = [l for l in last.stderr.splitlines() if "warning:" in l and f"checkpoints/{newest} is unreadable" in l]
                if len(warned) != 1 or resumed_from(last.stderr) != newest - 2:
                    failures.append(f"expected one warning for checkpoint {newest} and a resume from {newest - 2}: {last.stderr.splitlines()[:6]}")
            check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
            lost = not (codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
            if final and lost:
                failures.append(f"after the rerun ({'; '.join(last.stderr.strip().splitlines()[-1:])}) the newest readable checkpoint is step "
                                f"{check.get('step')}: {check.get('load_warnings')}")
            trials.append(self.record(fault, {"trial": i, "survived": codes[-1] == 0 and (final or not failures), "lost": lost, "damage": what,
                                              "rerun_exit_codes": codes, "resumed_from": resumed_from(last.stderr), "final": check,
                                              "failures": failures}, folder))
        if final:
            simulated = ("a finished 24-step run's final checkpoint damaged (every array file truncated to half, or overwritten with random bytes), "
                         "then the same command; expect the rerun to end with step 24 readable and bitwise equal")
        else:
            simulated = ("a run killed after checkpoint 22 (checkpoints 20 and 22 on disk), checkpoint 22 damaged: largest array file truncated to half, "
                         "overwritten with random bytes or deleted; metadata garbage; folder emptied; then the same command")
        return {"trials": trials, "simulated": simulated, "command": self.shown(STEADY) + "; damage checkpoints/<newest>; rerun", "details": {}}

    def namespace_ok(self) -> str | None:
        if not shutil.which("unshare"):
            return "`unshare` is not installed"
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"], capture_output=True, text=True)
        return None if probe.returncode == 0 else f"no private mount namespace with tmpfs (unshare: {probe.stderr.strip()[:160]})"

    def in_namespace(self, workdir: Path, settings, name: str, script: str) -> Proc:
        """The training command, run by `script` (its `$RUN`) in a private user and mount namespace."""
        cmd = " ".join(f"'{c}'" for c in self.command(workdir, settings))
        shell = f"set -e\nRUN=\"{cmd}\"\n{script}"
        proc = Proc(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell], self.env(), workdir.parent / "logs", name)
        proc.rc = proc.wait()
        return proc

    def storage_trial(self, fault: str, index: int, variant: str, ref: Path) -> dict:
        folder = self.trial_dir(fault, index)
        workdir = cut_back(ref, folder / "run", 20)
        checkpoints, failures = workdir / "checkpoints", []
        if variant == "checkpoints read-only":
            script = f'mount --bind "{checkpoints}" "{checkpoints}"\nmount -o remount,bind,ro "{checkpoints}"\neval "$RUN"'
        elif variant == "workdir read-only":
            script = f'mount --bind "{workdir}" "{workdir}"\nmount -o remount,bind,ro "{workdir}"\neval "$RUN"'
        else:  # disk full: the checkpoints on a tmpfs with room for less than one more checkpoint
            one = sum(p.stat().st_size for p in (checkpoints / "20").rglob("*") if p.is_file())
            disk, after = folder / "checkpoints.before", folder / "checkpoints.after"
            shutil.move(checkpoints, disk)
            checkpoints.mkdir()
            used = sum(-(-p.stat().st_size // 4096) * 4096 for p in disk.rglob("*") if p.is_file())
            size = used + one // 2 if variant == "disk full" else 4096 * 4
            if variant != "disk full":  # a fresh run on a nearly full disk: the first save fails, nothing to keep
                shutil.rmtree(disk)
                disk.mkdir()
                shutil.rmtree(workdir)
                workdir.mkdir()
                checkpoints.mkdir()
            script = (f'mount -t tmpfs -o size={size} tmpfs "{checkpoints}"\ncp -a "{disk}/." "{checkpoints}/"\nset +e\neval "$RUN"\nrc=$?\n'
                      f'mkdir -p "{after}"\ncp -a "{checkpoints}/." "{after}/"\nexit $rc')
        proc = self.in_namespace(workdir, STEADY, "faulted", script)
        if variant.startswith("disk full") or variant.startswith("fresh"):
            checkpoints.rmdir()
            shutil.move(folder / "checkpoints.after", checkpoints)
            shutil.rmtree(folder / "checkpoints.before", ignore_errors=True)
        line = error_lines(proc.stderr)
        if proc.rc != 2 or not one_line_error(proc.stderr):
            failures.append(f"expected exit 2 and one error line, got exit {proc.rc}: {proc.stderr.strip().splitlines()[-3:]}")
        intact = None
        if variant.startswith("fresh"):
            intact = committed_steps(workdir) == []
        else:
            check = self.verdict(workdir, ref)
            step = check["step"]
            intact = step == 20 and compare(params(workdir)[1], self.reference_params(ref, 20)[1])["bitwise"] and committed_steps(workdir) == [20]
            if not intact:
                failures.append(f"checkpoint 20 not intact: newest readable {step} {check.get('load_error', '')}, on disk {checkpoint_names(workdir)}")
        last, codes = self.rerun_until_complete(workdir, STEADY, "rerun")
        check = self.verdict(workdir, ref) if codes[-1] == 0 else {"bitwise": False}
        survived = not failures and codes[-1] == 0
        lost = not (intact and codes[-1] == 0 and check["bitwise"] and check["step"] == 24)
        return self.record(fault, {"trial": index, "variant": variant, "survived": survived, "lost": lost, "exit": proc.rc, "error": line[-1:],
                                   "faulted_run_s": round(proc.seconds, 1), "previous_intact": intact, "rerun_exit_codes": codes,
                                   "resumed_from": resumed_from(last.stderr), "final": check, "failures": failures}, folder)

    def storage_fault(self, fault: str, variants: list[str], simulated: str, command: str) -> dict:
        """The trials of a storage fault (`storage_trial` per variant), with how long each run took to its error."""
        ref = self.reference("steady", STEADY)
        trials = [self.storage_trial(fault, i, v, ref) for i, v in enumerate(variants[: self.args.storage_trials], 1)]
        seconds = {t["variant"]: t["faulted_run_s"] for t in trials}
        return {"trials": trials, "details": {"seconds_to_the_error": seconds}, "simulated": simulated, "command": command}

    def fault_readonly(self) -> dict:
        return self.storage_fault(
            "readonly", ["checkpoints read-only", "workdir read-only"],
            "a run killed after checkpoint 20, resumed with WORKDIR/checkpoints (or the whole WORKDIR) bind-mounted "
            "read-only in `unshare --user --map-root-user --mount` (EROFS; chmod does not stop root); expect exit 2, one line, checkpoint 20 "
            "intact; then the same command without the mount",
            "unshare -rm sh -c 'mount --bind W/checkpoints W/checkpoints; mount -o remount,bind,ro W/checkpoints; " + self.shown(STEADY)
            + "'; then the command again")

    def fault_diskfull(self) -> dict:
        return self.storage_fault(
            "diskfull", ["disk full", "fresh run, disk full at the first save"],
            "WORKDIR/checkpoints on a tmpfs (in `unshare --user --map-root-user --mount`) holding checkpoint 20 "
            "with room for half a checkpoint more (ENOSPC at the next save), or a fresh run on a 16 KiB tmpfs; expect exit 2, one line, "
            "checkpoint 20 intact; then the same command on the real disk",
            "unshare -rm sh -c 'mount -t tmpfs -o size=N tmpfs W/checkpoints; " + self.shown(STEADY) + "'; then the command again")

    def dataset(self) -> tuple[Path, Path, list[int]]:
        """A prepared data set of DOCS text documents, PER_SHARD a shard (`mmntp data prepare`), and each one's manifest line."""
        root = self.out / "dataset"
        manifest, clean = root / "m.jsonl", root / "clean"
        if not clean.exists():
            root.mkdir(parents=True, exist_ok=True)
            out, lines = [], []
            for i in range(DOCS):
                out.append(json.dumps({"segments": [{"type": "text", "text": f"document {i}: " + "abcdefgh" * (i % 5 + 1)}], "id": f"d{i}"}))
                lines.append(len(out))
                if i == 0:
                    out.append("")
            manifest.write_text("\n".join(out) + "\n")
            (root / "lines.json").write_text(json.dumps(lines))
            cmd = ["nice", "-n", "5", sys.executable, "-m", "mmntp_jax.cli", "data", "prepare", "--manifest", str(manifest), "--out", str(clean),
                   "--docs-per-shard", str(PER_SHARD), "--no-progress"]
            done = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
            if done.returncode != 0:
                raise RuntimeError(f"mmntp data prepare failed: {done.stderr[-1500:]}")
        return manifest, clean, json.loads((root / "lines.json").read_text())

    def fault_record(self, fault: str) -> dict:
        import grain
        import numpy as np
        from array_record.python.array_record_module import ArrayRecordWriter

        from mmntp_jax.data.records import REPORT_FILE
        from mmntp_jax.data.shards import HEADER
        from mmntp_jax.data.sources import eval_mask

        manifest, clean, lines = self.dataset()
        training = [int(i) for i in np.flatnonzero(~eval_mask(DOCS, EVAL_FRACTION))]
        trials = []
        for i, on_error in enumerate(["stop", "skip"][: self.args.record_trials], 1):
            folder = self.trial_dir(fault, i)
            data = folder / "data"
            shutil.copytree(clean, data)
            doc = int(self.rng.choice(training))
            shard, record = data / f"shard-{doc // PER_SHARD:05d}.array_record", doc % PER_SHARD
            source = grain.sources.ArrayRecordDataSource([str(shard)])
            records = [source[j] for j in range(len(source))]
            if fault == "truncated_record":
                records[record] = records[record][:-3]
            else:
                raw = bytearray(records[record])
                raw[HEADER.size + 4 : HEADER.size + 6] = (7000).to_bytes(2, "little")  # token 2 (uint16 ids)
                records[record] = bytes(raw)
            del source
            writer = ArrayRecordWriter(str(shard), "group_size:1")
            for r in records:
                writer.write(r)
            writer.close()
            settings = ["data.source=shards", f"data.path={data}", f"data.eval_fraction={EVAL_FRACTION}", "data.pack_window=4", "train.steps=8",
                        f"data.on_error={on_error}"]
            workdir, failures, lost = folder / "run", [], False
            proc = self.run(workdir, settings, on_error)
            line = error_lines(proc.stderr)
            named = f"{shard} record {record} ({manifest} line {lines[doc]})"
            if on_error == "stop":
                if proc.rc != 2 or not one_line_error(proc.stderr) or named not in line[-1]:
                    failures.append(f"expected exit 2 and one line naming {named}: exit {proc.rc}, {proc.stderr.strip().splitlines()[-2:]}")
                if committed_steps(workdir):
                    failures.append(f"checkpoints written from the bad data: {committed_steps(workdir)}")
                report, counts = [], []
            else:
                counts = [r.get("data/skipped_records", 0) for r in train_records(workdir)]
                report_file = workdir / REPORT_FILE
                report = [json.loads(t) for t in report_file.read_text().splitlines()] if report_file.exists() else []
                listed = [(Path(e["shard"]).name, e["record"], e.get("line")) for e in report]
                if proc.rc != 0:
                    failures.append(f"exit {proc.rc}: {proc.stderr.strip().splitlines()[-2:]}")
                if not counts or max(counts) < 1:
                    failures.append(f"data/skipped_records never ≥ 1: {counts}")
                    lost = True
                if listed != [(shard.name, record, lines[doc])]:
                    failures.append(f"the report lists {listed}, expected {[(shard.name, record, lines[doc])]}")
                    lost = True
            trials.append(self.record(fault, {"trial": i, "on_error": on_error, "survived": not failures, "lost": lost, "document": doc,
                                              "exit": proc.rc, "error": line[-1:], "report": report,
                                              "skipped_records_logged": max(counts, default=None), "failures": failures}, folder))
        what = "the last 3 bytes of one training record cut off" if fault == "truncated_record" else "token 2 of one training record set to 7000 (vocabulary 272)"
        return {"trials": trials, "simulated": f"a prepared set of {DOCS} documents ({PER_SHARD} a shard, `mmntp data prepare`), {what} (rewritten with "
                "ArrayRecordWriter); stop: exit 2 and one line naming shard, record and manifest line, no checkpoint; skip: exit 0, "
                "data/skipped_records ≥ 1, exactly that record in data_errors.jsonl",
                "command": self.shown(["data.source=shards", "data.path=DATA", "data.on_error=stop|skip"]), "details": {}}
