"""`mmntp plan`: per-device state bytes against a hand count, FLOPs against the model count,
collectives, the JSON line, bad input, and the re-run on simulated devices.

conftest.py gives this process 8 CPU devices; the last test runs the command in a
process that has one, so the command must simulate the 4 it is asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from mmntp_jax.cli import main
from mmntp_jax.config import load_config
from mmntp_jax.plan.commands import parse_bytes, parse_mesh
from mmntp_jax.plan.hlo import count_program, shape_bytes
from mmntp_jax.model.flops import flops_breakdown, param_count, training_flops_per_step

EXPERIMENT = str(Path(__file__).with_name("cli_tiny_experiment.py"))
TWO_LAYERS = ["--set", "model.n_layers=2"]  # a scanned stack: the loop's trip count must be applied
F32 = 4
ADAM_COUNTS = 2 * 4  # the int32 step counts of adam and of the masked weight decay's schedule


def plan_json(capsys, *args) -> dict:
    assert main(["plan", "--config", EXPERIMENT, *TWO_LAYERS, *args, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def model():
    return load_config(EXPERIMENT, TWO_LAYERS[1:]).model


@pytest.fixture(scope="module")
def plans():
    return {}


def cached_plan(plans, capsys, devices: int, mesh: str) -> dict:
    if (devices, mesh) not in plans:
        plans[devices, mesh] = plan_json(capsys, "--devices", str(devices), "--mesh", mesh)
    return plans[devices, mesh]


def test_state_bytes_are_the_hand_count(plans, capsys, model):
    """Every parameter shards its d_model axis over fsdp (and nothing over data), so
    fsdp=8 holds 1/8 of the f32 parameters; AdamW keeps two f32 moments of each."""
    full = param_count(model) * F32
    data = cached_plan(plans, capsys, 8, "data=8,fsdp=1")["per_device_bytes"]
    fsdp = cached_plan(plans, capsys, 8, "data=1,fsdp=8")["per_device_bytes"]
    assert data["params"] == full
    assert fsdp["params"] == full // 8 == data["params"] // 8
    assert data["opt_state"] == 2 * full + ADAM_COUNTS
    assert fsdp["opt_state"] == 2 * full // 8 + ADAM_COUNTS
    for figures in (data, fsdp):
        assert figures["total"] == figures["params"] + figures["opt_state"] + figures["activations"] + figures["temp"]
        assert figures["activations"] > 0 and figures["temp"] > 0


def test_flops_are_the_model_count_plus_the_masked_half(plans, capsys, model):
    """The model count takes half the T×T attention scores (causal); the compiled step
    computes all of them (xla attention at this length), so it adds that half again."""
    config = load_config(EXPERIMENT, TWO_LAYERS[1:])
    tokens = config.train.batch_size * config.train.seq_len
    expected = training_flops_per_step(model, config.train.seq_len, config.train.batch_size)
    expected += flops_breakdown(model, config.train.seq_len).attention * tokens
    for mesh in ("data=8,fsdp=1", "data=1,fsdp=8"):
        result = cached_plan(plans, capsys, 8, mesh)
        assert result["model_flops_per_step"] == pytest.approx(training_flops_per_step(model, config.train.seq_len, config.train.batch_size))
        assert result["flops_per_step"] == pytest.approx(expected, rel=0.01)
        assert result["flops_per_step"] == result["flops_per_device"] * 8


def test_collectives_with_parallelism_and_none_on_one_device(plans, capsys):
    data = cached_plan(plans, capsys, 8, "data=8,fsdp=1")
    fsdp = cached_plan(plans, capsys, 8, "data=1,fsdp=8")
    single = cached_plan(plans, capsys, 1, "data=1,fsdp=1")
    assert data["collective_bytes_by_kind"]["all-reduce"] > 0  # gradients
    assert fsdp["collective_bytes_by_kind"]["all-gather"] > 0  # parameters gathered for use
    assert single["collective_bytes_per_step"] == 0
    assert single["per_device_bytes"]["params"] == data["per_device_bytes"]["params"]


def test_json_line_and_fits(capsys):
    result = plan_json(capsys, "--devices", "2", "--hbm", "1GiB")
    assert set(result["per_device_bytes"]) == {"params", "opt_state", "activations", "temp", "total"}
    assert result["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1, "sequence": 1}  # the config's data=-1 fills
    assert result["fits"] is True and result["hbm_bytes"] == 2**30
    assert plan_json(capsys, "--devices", "2", "--hbm", "1KiB")["fits"] is False


def test_without_hbm_fits_is_null(plans, capsys):
    result = cached_plan(plans, capsys, 8, "data=8,fsdp=1")
    assert result["fits"] is None and result["hbm_bytes"] is None


@pytest.mark.parametrize("args, message", [
    (["--devices", "8", "--mesh", "data=3"], "has 3 devices but 8"),
    (["--devices", "8", "--mesh", "pipeline=2"], "unknown axis 'pipeline'"),
    (["--devices", "0"], "--devices: expected a device count ≥ 1"),
    (["--devices", "2", "--hbm", "lots"], "--hbm 'lots'"),
])
def test_bad_input_is_one_line(capsys, args, message):
    assert main(["plan", "--config", EXPERIMENT, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("mmntp plan: error:")


def test_parsers():
    assert parse_mesh("data=2, fsdp=-1") == {"data": 2, "fsdp": -1}
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("141GB") == 141 * 10**9 and parse_bytes("512") == 512
    assert shape_bytes("(f32[2,3]{1,0}, bf16[4], /*index=2*/s32[])") == 24 + 8 + 4


def test_loop_bodies_count_their_trip_count():
    """XLA's cost_analysis visits a scan body once; the HLO count multiplies it by 4."""
    def layers(w, x):
        return jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)[0].sum()

    w, x = jnp.zeros((4, 128, 128)), jnp.zeros((16, 128))
    text = jax.jit(jax.grad(layers, argnums=(0, 1))).lower(w, x).compile().as_text()
    forward = 4 * 2 * 16 * 128 * 128
    assert count_program(text).flops == 3 * forward  # forward, then dx and dW


GPU_STYLE_HLO = """HloModule m

%body (p.0: f32[4,8]) -> f32[4,8] {
  %p.0 = f32[4,8]{1,0} parameter(0)
  %w = f32[8,8]{1,0} parameter(1)
  %g = (f32[4,8]{1,0}, s8[64]{0}) custom-call(%p.0, %w), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %ag = f32[4,8]{1,0} all-gather-start(%p.0), dimensions={0}
  ROOT %agd = f32[4,8]{1,0} all-gather-done(%ag)
}

%skip (p.1: f32[4,8]) -> f32[4,8] {
  ROOT %p.1 = f32[4,8]{1,0} parameter(0)
}

ENTRY %main (x: f32[4,8], b: pred[]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %b = pred[] parameter(1)
  %loop = f32[4,8]{1,0} while(%x), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %c = f32[4,8]{1,0} conditional(%b, %loop, %loop), branch_computations={%skip, %body}
}
"""


def test_library_matmuls_async_collectives_and_branches():
    """A cuBLAS gemm counts like a dot; an async pair once; a conditional at its costliest branch."""
    counts = count_program(GPU_STYLE_HLO)
    assert counts.flops == (3 + 1) * 2 * 4 * 8 * 8
    assert counts.collective_by_kind["all-gather"] == (3 + 1) * 4 * 8 * 4 and counts.unknown_loops == 0


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_simulates_devices_the_process_lacks():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "mmntp_jax.cli", "plan", "--config", EXPERIMENT, "--devices", "4", "--mesh", "fsdp=4", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["mesh"]["fsdp"] == 4
    assert result["per_device_bytes"]["params"] == param_count(load_config(EXPERIMENT).model) * F32 // 4
