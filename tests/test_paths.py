"""Relative paths behave like absolute ones; a failed checkpoint save is one line, at once.

References: `os.path.abspath` against the working directory, the files a run
leaves on disk, and orbax restoring the checkpoint reported intact.
"""

import json
import os
from pathlib import Path

import pytest

from mmntp_jax import cli
from mmntp_jax.config import Config, DataConfig, ModelConfig, load_config, load_json, save_json
from mmntp_jax.paths import PATH_ARGS, relative_config_paths, resolve_config_paths, resolve_path, resolve_path_args
from mmntp_jax.scaling.sweep import SweepConfig

EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py")
TINY = ["--set", "train.compilation_cache=", "--set", "train.progress=false"]


def test_resolve_path_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("a/b") == os.path.join(str(tmp_path), "a", "b")
    assert resolve_path("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert resolve_path("gs://bucket/run") == "gs://bucket/run"
    assert resolve_path("") == "" and resolve_path(None) is None
    assert resolve_path(str(tmp_path)) == str(tmp_path)


def test_config_paths_resolved_everywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config(data=DataConfig(source="mixture", path="shards/a", mixture=(("stdlib", 0.5), ("shards", 0.5, "shards/b"))))
    resolved = resolve_config_paths(config)
    assert resolved.data.path == str(tmp_path / "shards/a")
    assert resolved.data.mixture == (("stdlib", 0.5), ("shards", 0.5, str(tmp_path / "shards/b")))
    assert resolved.train.compilation_cache == os.path.expanduser("~/.cache/mmntp_jax/xla")
    sweep = resolve_config_paths(SweepConfig(base=config, variants=(("text", DataConfig(source="shards", path="v")),)))
    assert sweep.base.data.path == str(tmp_path / "shards/a") and sweep.variants[0][1].path == str(tmp_path / "v")
    loaded = load_config(None, ["data.path=rel/shards"])
    assert loaded.data.path == str(tmp_path / "rel/shards")


def test_a_workdir_config_names_its_own_files_relative_to_it(tmp_path):
    """save_json writes the keys inside the workdir relative to it, load_json resolves them against
    the folder the file is read from; paths outside the workdir, URLs and unset keys stay as they are."""
    import shutil

    workdir, outside = tmp_path / "wd", str(tmp_path / "data/train.jsonl")
    config = Config(model=ModelConfig(image_tokenizer=str(workdir / "tokenizers/image")),
                    data=DataConfig(source="mixture", path=str(workdir / "data/tokens"), manifest=outside, eval_manifest="",
                                    mixture=(("stdlib", 0.5), ("shards", 0.5, str(workdir / "more")), ("shards", 1.0, "gs://b/s"))))
    config = resolve_config_paths(config)
    workdir.mkdir()
    save_json(workdir / "config.json", config)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["path"] == "data/tokens" and saved["model"]["image_tokenizer"] == os.path.join("tokenizers", "image")
    assert saved["data"]["manifest"] == outside and saved["data"]["eval_manifest"] == ""
    assert saved["data"]["mixture"][1][2] == "more" and saved["data"]["mixture"][2][2] == "gs://b/s"
    assert load_json(workdir / "config.json") == config
    moved = tmp_path / "elsewhere" / "wd2"
    shutil.move(workdir, moved)
    again = load_json(moved / "config.json")
    assert again.data.path == str(moved / "data/tokens") and again.model.image_tokenizer == str(moved / "tokenizers/image")
    assert again.data.manifest == outside and again.data.mixture[1][2] == str(moved / "more")
    assert relative_config_paths(config, "gs://bucket/run") == config
    assert resolve_path("a/b", "gs://bucket/run") == "gs://bucket/run/a/b" and resolve_path("/x", "gs://b") == "/x"


def _all_actions():
    """(command words, argparse action) of every command and subcommand of `mmntp`."""
    import argparse

    for group in cli.COMMAND_GROUPS:
        parser = cli.build_parser(group)
        stack = [((group,), parser._subparsers._group_actions[0].choices[group])]
        while stack:
            words, p = stack.pop()
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack += [(words + (name,), sub) for name, sub in action.choices.items()]
                else:
                    yield words, action


def test_every_path_argument_is_resolved(tmp_path, monkeypatch):
    """Every argument whose help speaks of a file, folder or directory is in PATH_ARGS,
    and resolve_path_args makes each absolute."""
    import argparse

    path_words = ("folder", "file", "directory", "workdir", "manifest", "path", " dir")
    not_paths = {"help", "profile_steps", "shard_size"}  # their help mentions files; their values are not paths
    missed = []
    for words, action in _all_actions():
        text = f" {action.help or ''} {action.dest}".lower()
        takes_text = action.type in (None, str) and not action.choices and action.nargs != 0
        if takes_text and action.dest not in PATH_ARGS | not_paths and any(w in text for w in path_words):
            missed.append(f"{' '.join(words)} {(action.option_strings or [action.dest])[0]}")
    assert not missed, f"path-like arguments not resolved at the CLI boundary: {missed}"
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(workdir="w", out="o", files=["a", "b"], text_tokenizer="bytes", config=None, runs="gs://b/r", image=16384)
    resolve_path_args(args)
    assert args.image == 16384  # `import hf --image N` is a count, not a path
    assert args.workdir == str(tmp_path / "w") and args.out == str(tmp_path / "o")
    assert args.files == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert args.text_tokenizer == "bytes" and args.config is None and args.runs == "gs://b/r"


def test_relative_workdir_train_resume_eval_sample(tmp_path, monkeypatch, capsys):
    """train (to a checkpoint, then resumed), eval and sample with relative paths; the config
    stored in the workdir holds absolute paths."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.py").write_text(EXPERIMENT.read_text())
    base = ["train", "--config", "exp.py", "--workdir", "runs/rel", "--set", "data.path=somewhere/shards", *TINY]
    assert cli.main([*base, "--set", "train.steps=4"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs/rel/checkpoints").iterdir()) == ["2", "4"]
    saved = json.loads((tmp_path / "runs/rel/config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "somewhere/shards")
    longer = ["--set", "train.steps=6", "--set", "train.on_schedule_change=restart_schedule"]
    assert cli.main([*base, *longer]) == 0  # resumes at 4
    assert "6" in {p.name for p in (tmp_path / "runs/rel/checkpoints").iterdir()}
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", "runs/rel", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 6
    assert cli.main(["sample", "--workdir", "runs/rel", "--prompt", "def ", "--max-new-tokens", "4", "--out", "out/s"]) == 0
    assert (tmp_path / "out/s/samples.jsonl").exists()
    import mmntp_jax as mm

    assert mm.load("runs/rel").step == 6


def test_failed_async_save_is_one_line_and_previous_checkpoint_intact(tmp_path, monkeypatch, capfd):
    """A background save that fails (here: disk full while writing step 4) stops the run with
    one line naming the checkpoint and the cause, exit code 2; step 2 stays restorable."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    real = tensorstore_utils._build_ocdbt_kvstore_tspec

    def disk_full_at_step_4(directory, *args, **kwargs):
        if "/checkpoints/4." in str(directory):
            raise OSError(28, "No space left on device")
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(tensorstore_utils, "_build_ocdbt_kvstore_tspec", disk_full_at_step_4)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.py").write_text(EXPERIMENT.read_text())
    code = cli.main(["train", "--config", "exp.py", "--workdir", "run", "--set", "train.steps=8", *TINY])
    err = capfd.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [f"mmntp train: error: checkpoint {tmp_path}/run/checkpoints/4 could not be saved "
                     "(OSError: [Errno 28] No space left on device); checkpoint 2 is intact"], err
    monkeypatch.setattr(tensorstore_utils, "_build_ocdbt_kvstore_tspec", real)
    import mmntp_jax as mm

    assert mm.load("run").step == 2
    assert cli.main(["train", "--config", "exp.py", "--workdir", "run", "--set", "train.steps=8", *TINY]) == 0  # resumes from 2
    assert mm.load("run").step == 8
