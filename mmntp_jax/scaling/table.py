"""The runs table: one row per training run, read from CSV/JSONL, checked, filtered.

Columns the fits use (case-sensitive; aliases in `ALIASES` are accepted so the
Chinchilla data of Besiroglu et al. 2024 loads as users download it):
    N        parameters                       ("Model Size", "params")
    D        training tokens                  ("Training Tokens", "tokens")
    C        training FLOPs                   ("Training FLOP", "flops")
    loss     final loss (nats per token)      ("Loss")
Optional: `budget` (the IsoFLOP group a run belongs to), `modalities` (e.g.
"text", "image", "text+image"), `loss_<modality>` and `tokens_<modality>`.
If D is missing it is C / (6N); if C is missing it is 6ND (the Chinchilla convention).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ALIASES = {
    "N": ("N", "Model Size", "params"),
    "D": ("D", "Training Tokens", "tokens"),
    "C": ("C", "Training FLOP", "flops"),
    "loss": ("loss", "Loss"),
}
RESULT_FILES = ("results.csv", "results.jsonl")


class RunsError(ValueError):
    """A runs table that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Runs:
    """Columns as float arrays (N, D, C, loss) plus the other columns as given."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    columns: dict = field(default_factory=dict)  # name → np.ndarray (float or str)
    source: str = "<memory>"
    row_ids: np.ndarray = None  # 1-based row numbers in the source file
    dropped: tuple = ()  # rows removed by filters, as dicts

    def __post_init__(self):
        if self.row_ids is None:
            object.__setattr__(self, "row_ids", np.arange(1, len(self.N) + 1))

    def __len__(self) -> int:
        return len(self.N)

    def column(self, name: str) -> np.ndarray:
        if name in ("N", "D", "C", "loss"):
            return getattr(self, name)
        if name not in self.columns:
            raise RunsError(f"{self.source}: no column {name!r}; columns: {', '.join(['N', 'D', 'C', 'loss', *self.columns])}")
        return self.columns[name]

    def take(self, index) -> "Runs":
        index = np.asarray(index)
        return replace(
            self, N=self.N[index], D=self.D[index], C=self.C[index], loss=self.loss[index],
            columns={k: v[index] for k, v in self.columns.items()}, row_ids=self.row_ids[index],
        )

    def row(self, i: int) -> dict:
        out = {"row": int(self.row_ids[i]), "N": float(self.N[i]), "D": float(self.D[i]), "C": float(self.C[i]), "loss": float(self.loss[i])}
        for k, v in self.columns.items():
            out[k] = v[i].item() if hasattr(v[i], "item") else v[i]
        return out


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        records = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RunsError(f"{path}: line {i} is not JSON ({err.msg})") from None
        return records
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise RunsError(f"{path}: expected a .csv or .jsonl runs table (or a sweep directory holding {' or '.join(RESULT_FILES)})")


def resolve_path(path) -> Path:
    """A table file, or the results file inside a sweep directory."""
    path = Path(path)
    if path.is_dir():
        for name in RESULT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: directory holds no {' or '.join(RESULT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"runs table {path}: not found")
    return path


def _number(value, path, row: int, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RunsError(f"{path}: row {row}: {name}={value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0:
        raise RunsError(f"{path}: row {row}: {name}={value!r} must be a finite number > 0")
    return x


def _find(header: list[str], key: str) -> str | None:
    for alias in ALIASES[key]:
        if alias in header:
            return alias
    return None


def runs_from_records(records: list[dict], source: str = "<memory>") -> Runs:
    """Builds a checked `Runs` from dict rows (CSV strings or JSON numbers)."""
    if not records:
        raise RunsError(f"{source}: the runs table has no rows")
    header = list(dict.fromkeys(key for rec in records for key in rec))  # union, first-seen order
    names = {key: _find(header, key) for key in ALIASES}
    for key in ("N", "loss"):
        if names[key] is None:
            raise RunsError(f"{source}: missing column {key} (any of {', '.join(map(repr, ALIASES[key]))}); found {', '.join(map(repr, header))}")
    if names["D"] is None and names["C"] is None:
        raise RunsError(f"{source}: needs a token column D ({', '.join(map(repr, ALIASES['D']))}) or a FLOP column C ({', '.join(map(repr, ALIASES['C']))}); found {', '.join(map(repr, header))}")
    cols = {key: [] for key in ALIASES}
    for i, rec in enumerate(records, 1):
        for key, name in names.items():
            if name is not None:
                cols[key].append(_number(rec.get(name), source, i, name))
    n, loss = np.array(cols["N"]), np.array(cols["loss"])
    d = np.array(cols["D"]) if names["D"] else np.array(cols["C"]) / (6.0 * n)
    c = np.array(cols["C"]) if names["C"] else 6.0 * n * d
    used = {name for name in names.values() if name}
    extra = {}
    for name in header:
        if name in used:
            continue
        values = [rec.get(name) for rec in records]
        try:
            extra[name] = np.array([math.nan if v in ("", None) else float(v) for v in values])
        except (TypeError, ValueError):
            extra[name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return Runs(N=n, D=d, C=c, loss=loss, columns=extra, source=source)


def load_runs(path) -> Runs:
    """Reads a runs table (.csv, .jsonl, or a sweep directory)."""
    path = resolve_path(path)
    return runs_from_records(_read_records(path), str(path))


def drop_highest_loss(runs: Runs, k: int) -> Runs:
    """Removes the `k` rows of highest loss (ties: the later row), recording them."""
    if k < 0:
        raise RunsError(f"--drop-highest-loss must be ≥ 0, got {k}")
    if k == 0:
        return runs
    if k >= len(runs):
        raise RunsError(f"{runs.source}: cannot drop {k} of {len(runs)} rows")
    order = np.argsort(-runs.loss, kind="stable")
    drop = np.sort(order[:k])
    keep = np.setdiff1d(np.arange(len(runs)), drop)
    dropped = tuple(runs.row(i) for i in drop)
    return replace(runs.take(keep), dropped=runs.dropped + dropped)


def flops_per_param_token(runs: Runs):
    """k(N) = C / (N·D) as a function of N: interpolated in log N between the table's
    sizes (constant 6 for the Chinchilla data; larger for small models, whose
    attention and logit FLOPs are a bigger share)."""
    log_n = np.log(runs.N)
    order = np.argsort(log_n, kind="stable")
    xs, idx = np.unique(log_n[order], return_index=True)
    ratio = np.log(runs.C / (runs.N * runs.D))[order]
    ys = np.array([np.median(ratio[i:j]) for i, j in zip(idx, list(idx[1:]) + [len(order)])])
    return lambda n: np.exp(np.interp(np.log(np.asarray(n, np.float64)), xs, ys))


def groups(runs: Runs, column: str) -> dict:
    """Row indices per distinct value of `column` (sorted by value)."""
    values = runs.column(column)
    return {v: np.flatnonzero(values == v) for v in sorted(set(values.tolist()))}


def write_table(records: list[dict], out_dir, stem: str = "results") -> tuple[Path, Path]:
    """Writes `records` as `stem.csv` and `stem.jsonl` (columns: union, first-seen order)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    for rec in records:
        header += [k for k in rec if k not in header]
    csv_path, jsonl_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.jsonl"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: rec.get(k, "") for k in header})
    jsonl_path.write_text("".join(json.dumps(rec) + "\n" for rec in records))
    return csv_path, jsonl_path
