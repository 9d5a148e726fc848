"""Every `mmntp` command in README.md's shell code blocks runs, as a newcomer would run it.

The commands are read from README.md each time (the test keeps no copy), run in
order through the installed `mmntp` entry point from a temporary working
directory holding a copy of `experiments/`, with the README's relative paths.
Training commands get `--set` overrides that shorten them (few steps, a tiny
model); nothing else is changed but placeholders (`path/to/…`, `DIR`), which
become fixtures made here. A command fails the test if it exits non-zero or
prints a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", re.S | re.M)

# Appended to a command whose words start with the key (longest key wins).
SHORTEN = {
    ("train",): [
        "--set", "train.steps=4", "--set", "train.eval_every=4", "--set", "train.eval_batches=1",
        "--set", "train.log_every=2", "--set", "checkpoint.every=2", "--set", "train.batch_size=2",
        "--set", "train.seq_len=256", "--set", "model.d_model=32", "--set", "model.n_layers=1",
        "--set", "model.d_ff=64", "--set", "model.n_heads=2", "--set", "model.n_kv_heads=1",
        # the staged job's stages (ignored by a plain training run)
        "--set", "job.tokenizer_steps=2", "--set", "job.tokenizer_items=32", "--set", "job.items=24",
        "--set", "job.eval_items=6", "--set", "job.classifier_steps=10", "--set", "job.sheet_items=3",
    ],
    ("data", "classes"): ["--items", "40", "--heldout", "10"],
    ("tokenizer", "train"): ["--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "data.train_items=8", "--set", "data.eval_items=4"],
}


def shell_commands(markdown: str) -> list[list[str]]:
    """The `mmntp …` commands of the shell code blocks, as argv lists (comments dropped,
    backslash continuations joined)."""
    commands = []
    for block in SHELL_BLOCK.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "mmntp":
                commands.append(words)
    return commands


def shortened(words: list[str]) -> list[str]:
    keys = [k for k in SHORTEN if tuple(words[1 : 1 + len(k)]) == k]
    return words + (SHORTEN[max(keys, key=len)] if keys else [])


def test_readme_parser_reads_blocks():
    text = "intro\n```bash\npip install x\nmmntp train \\\n  --workdir w  # comment\n```\n```\nmmntp usage [--x]\n```\n"
    assert shell_commands(text) == [["mmntp", "train", "--workdir", "w"]]
    assert shortened(["mmntp", "sample", "--workdir", "w"]) == ["mmntp", "sample", "--workdir", "w"]
    assert shortened(["mmntp", "tokenizer", "train"])[3:5] == ["--set", "train.steps=2"]


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory) -> dict[str, str]:
    """README placeholder → a fixture made for it."""
    root = tmp_path_factory.mktemp("placeholders")
    made = {}
    try:
        from hf_models import make_hf_model

        make_hf_model(root / "llama", "llama")
        made["path/to/llama"] = str(root / "llama")
    except ImportError:  # the [hf] extra is absent: commands that need the model fail below, naming it
        pass
    return made


def substitute(words: list[str], placeholders: dict[str, str]) -> list[str]:
    out = []
    for word in words:
        if word.startswith("path/to/") or word == "DIR":
            if word not in placeholders:
                pytest.fail(f"README placeholder {word!r} has no fixture in {__file__}")
            word = placeholders[word]
        out.append(word)
    return out


def test_readme_commands_run(tmp_path, placeholders):
    commands = shell_commands((ROOT / "README.md").read_text())
    assert any(c[:2] == ["mmntp", "train"] for c in commands), "README.md shows no `mmntp train` command"
    exe = shutil.which("mmntp")
    assert exe, "the `mmntp` entry point is not installed (pip install -e .)"
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as a user runs it: the real device count
    env["JAX_PLATFORMS"] = "cpu"
    for words in commands:
        argv = substitute(shortened(words), placeholders)
        result = subprocess.run([exe, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        shown = shlex.join(words)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"`{shown}` exited {result.returncode}:\n{output[-3000:]}"
        assert "Traceback (most recent call last)" not in output, f"`{shown}` printed a traceback:\n{output[-3000:]}"
