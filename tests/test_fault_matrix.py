"""The fault matrix, reduced (`tools/faults/fault_matrix.py --quick`): every fault injected into real
`mmntp train` subprocesses is survived and loses nothing (docs/reliability.md, "Fault matrix")."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "faults" / "fault_matrix.py"
# faults that need a private mount namespace (`unshare`); a machine without one reports them as not run
NEEDS_NAMESPACE = {"read-only checkpoint dir", "disk full"}


@pytest.mark.slow
def test_every_fault_is_survived_and_nothing_is_lost(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--quick", "--out", str(tmp_path / "matrix"), "--cache", str(tmp_path / "xla")],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rows, summary = lines[:-1], lines[-1]
    assert summary["fault"] == "summary"
    assert set(summary["not_run"]) <= NEEDS_NAMESPACE, summary["not_run"]
    ran = {row["key"] for row in rows}
    assert ran | {"readonly", "diskfull"} >= {"kill9", "sigterm", "corrupt", "corrupt_final", "nan", "divergence", "truncated_record",
                                              "out_of_range_id", "process_count"}, ran
    bad = [row for row in rows if "error" in row or row["trials"] < 1 or row["survived"] != row["trials"] or row["data_lost"] != 0]
    assert not bad, json.dumps(bad, indent=1)
    kill9 = next(row for row in rows if row["key"] == "kill9")
    assert kill9["trials"] >= 4 and kill9["details"]["control_run_bitwise"] is True
    assert kill9["details"]["kills_during_a_save"] + kill9["details"]["kills_leaving_an_unfinished_save"] >= 1, kill9["details"]
    assert summary["all_survived"] and summary["nothing_lost"]
