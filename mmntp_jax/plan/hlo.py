"""Counts in a compiled (per-device) HLO module's text: dot FLOPs and collective bytes, loops unrolled by count.

XLA's own `cost_analysis()` visits a while loop's body once, so a scanned layer
stack counts as one layer. Here every computation's figure is its own
instructions plus those of the computations it calls, with

  while        body × known_trip_count (a loop without one counts once, and is reported)
  conditional  its costliest branch (an upper bound: e.g. attention tiles that run
               only when a bidirectional group crosses the diagonal)
  other calls  (fusions, calls, reductions' to_apply) × 1

FLOPs: 2 × multiply-adds of every `dot` = 2 × Π(result dims) × Π(lhs contracting dims),
and likewise of a library matmul custom-call (a `custom_call_target` naming a gemm or
matmul, e.g. cuBLAS on GPU) from the dot_dimension_numbers of its backend_config.
Collective bytes: the result bytes of every all-reduce, all-gather,
reduce-scatter, all-to-all and collective-permute (for an async pair, its `-done`).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
GEMM_TARGET = re.compile(r'custom_call_target="[^"]*(?:gemm|matmul)[^"]*"', re.I)
GEMM_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([\d",]*)\]')


@dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str


@dataclass
class Counts:
    flops: float = 0.0
    collective_by_kind: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COLLECTIVES, 0.0))
    unknown_loops: int = 0

    @property
    def collective_bytes(self) -> float:
        return sum(self.collective_by_kind.values())

    def add(self, other: "Counts", times: float = 1.0) -> None:
        self.flops += other.flops * times
        for kind, value in other.collective_by_kind.items():
            self.collective_by_kind[kind] += value * times
        self.unknown_loops += other.unknown_loops

    def weight(self) -> float:
        return self.flops + self.collective_bytes


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape (a tuple's elements summed); layouts are ignored."""
    return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d) for dtype, dims in ARRAY.findall(shape))


def dims_of(shape: str) -> list[int]:
    match = ARRAY.search(shape)
    return [int(d) for d in match.group(2).split(",") if d] if match else []


def _closing(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def parse_instruction(line: str) -> Instruction | None:
    """`%name = SHAPE opcode(operands), attrs` → Instruction (None for other lines)."""
    match = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
    if not match:
        return None
    rest = line[match.end():]
    end = _closing(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _closing(rest, op.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", rest[op.end() : close - 1])
    return Instruction(match.group(1), shape, op.group(1), operands, rest[close:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str | None]:
    """{computation name: instructions} and the entry computation's name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            entry = header.group(1) if line.startswith("ENTRY") else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            instruction = parse_instruction(line)
            if instruction:
                current.append(instruction)
    return computations, entry


def dot_flops(instruction: Instruction, shapes: dict[str, str], contracting: re.Pattern = CONTRACTING) -> float:
    """2 × Π(result dims) × Π(lhs contracting dims); for a tuple result, its first array."""
    lhs = dims_of(shapes.get(instruction.operands[0], "")) if instruction.operands else []
    match = contracting.search(instruction.attrs)
    indices = [int(i) for i in match.group(1).replace('"', "").split(",") if i] if match else []
    return 2.0 * math.prod(dims_of(instruction.shape)) * math.prod(lhs[i] for i in indices if i < len(lhs))


def _own(instruction: Instruction, shapes: dict[str, str]) -> Counts:
    counts = Counts()
    if instruction.opcode == "dot":
        counts.flops = dot_flops(instruction, shapes)
    elif instruction.opcode == "custom-call" and GEMM_TARGET.search(instruction.attrs):
        counts.flops = dot_flops(instruction, shapes, GEMM_CONTRACTING)
    kind = instruction.opcode.removesuffix("-done")
    if kind in COLLECTIVES and not instruction.opcode.endswith("-start"):
        counts.collective_by_kind[kind] = shape_bytes(instruction.shape)
    return counts


def count_program(text: str) -> Counts:
    """Per-device counts of the entry computation of an HLO module's text."""
    computations, entry = parse_module(text)

    @functools.cache
    def visit(name: str) -> Counts:
        body = computations.get(name, [])
        shapes = {i.name: i.shape for i in body}
        total = Counts()
        for instruction in body:
            total.add(_own(instruction, shapes))
            total.add(_called(instruction))
        return total

    def _called(instruction: Instruction) -> Counts:
        counts = Counts()
        branches = BRANCHES.search(instruction.attrs)
        names = re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else []
        called = dict((key, value) for key, value in CALLED.findall(instruction.attrs))
        if instruction.opcode == "while":
            trips = TRIP_COUNT.search(instruction.attrs)
            counts.add(visit(called.get("body", "")), int(trips.group(1)) if trips else 1)
            counts.unknown_loops += 0 if trips else 1
            return counts
        names += [called[k] for k in ("true_computation", "false_computation") if k in called]
        if names:
            counts.add(max((visit(n) for n in names), key=Counts.weight))
            return counts
        for key in ("calls", "to_apply"):
            if key in called:
                counts.add(visit(called[key]))
        return counts

    return visit(entry) if entry else Counts()
