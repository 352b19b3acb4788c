"""Help texts say what every flag does; small data and corrupt run files get messages with numbers."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import warnings

import pytest
import torch

from hf_topafa.bench import bench
from hf_topafa.cli import COMMANDS, main
from hf_topafa.data import harvest
from hf_topafa.training import training_data


@pytest.mark.parametrize("module", [harvest, bench])
def test_every_flag_has_help_and_its_default(module):
    parser = module.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help text"
        has_default = action.default not in (None, False) and not action.required
        if has_default and not isinstance(action, argparse._StoreTrueAction):
            assert "%(default)s" in action.help or "default" in action.help, flag
    text = parser.format_help()
    assert "(default: 576)" in text if module is bench else "(default: 256)" in text


def test_no_progress_help_says_it_hides_the_bars(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-progress Hide the progress bars" in text
    assert "Show progress bars" not in text


def _help_of(command: str, capsys) -> str:
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def _option_entries(text: str) -> list[str]:
    """Each option's usage and help, one string each (argparse indents entries by two)."""
    body = text.split("\n\n", 1)[1]  # past the usage block
    return [" ".join(e.split()) for e in re.split(r"\n  (?=-)", body) if e.lstrip().startswith("-")]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_one_flag_convention_without_contradictions(command, capsys):
    text = _help_of(command, capsys)
    assert re.findall(r"--[a-z0-9-]*_[a-z0-9_-]*", text) == []  # dashed names only
    assert re.findall(r"--[a-z0-9-]+ \[[A-Z_]+\]", text) == []  # switches take no value
    for default in ("None", "False", "True"):
        assert f"(default: {default})" not in text
    for entry in _option_entries(text):
        said = len(re.findall(r"default:|default is|by default", entry))
        assert said <= 1, entry  # one default, said once
        assert not ("unset" in entry and "(default: " in entry), entry


def _parse(command: str, argv: list[str]):
    """The checked arguments of ``hf-topafa COMMAND ARGV`` as one flat dict."""
    parsed = importlib.import_module(COMMANDS[command][0]).parse_command(argv)
    flat = {}
    for part in parsed:
        if dataclasses.is_dataclass(part) and hasattr(part, "to_flat"):
            flat.update(part.to_flat())
        else:
            flat.update(
                vars(part) if not dataclasses.is_dataclass(part) else dataclasses.asdict(part)
            )
    return flat


REQUIRED = {
    "train": [],
    "evaluate": ["run"],
    "features": ["run", "--output", "out"],
    "harvest": ["--output", "out"],
}


@pytest.mark.parametrize("command", list(REQUIRED))
@pytest.mark.parametrize("spelling", ["--max-tokens", "--max_tokens", "--max-tokens=512"])
def test_every_command_reads_the_same_spellings(command, spelling):
    argv = [spelling] if "=" in spelling else [spelling, "512"]
    assert _parse(command, [*REQUIRED[command], *argv])["max_tokens"] == 512
    for hook in ("--hook-point", "--hook_point"):
        if command != "features":  # features reads the SAE's own hook point
            assert _parse(command, [*REQUIRED[command], hook, "mlp_out"])["hook_point"] == "mlp_out"


def test_train_reads_dtype_like_the_other_commands_and_switches_take_no_value():
    for spelling in ("--dtype", "--lm-dtype", "--lm_dtype"):
        assert _parse("train", [spelling, "bfloat16"])["lm_dtype"] == "bfloat16"
    flat = _parse("train", ["--resume", "--no-progress"])
    assert flat["resume"] is True and flat["progress"] is False
    flat = _parse("train", ["--overwrite", "--no_progress", "--encoder-bias"])
    assert flat["overwrite"] is True and flat["progress"] is False and flat["encoder_bias"] is True
    assert _parse("train", ["--no-encoder-bias"])["encoder_bias"] is False
    assert _parse("harvest", ["--output", "o", "--dtype", "float16"])["dtype"] == "float16"


def test_held_out_data_counts_are_reported():
    batches = [torch.zeros(3, 4), torch.zeros(2, 4)]
    with pytest.warns(UserWarning, match="has 5 tokens, fewer than eval_tokens=8"):
        assert len(training_data.first_rows(iter(batches), 8)) == 5
    with pytest.raises(ValueError, match="found 0 tokens, eval_tokens=8 needed"):
        training_data.first_rows(iter([]), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(training_data.first_rows(iter(batches), 4)) == 4  # enough: no warning


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_corrupt_training_config_names_the_file(tmp_path, content, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_config.json").write_text(content)
    (run / "config.json").write_text(json.dumps({"d_in": 1}))
    code = main(["train", "--output", str(run), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ") and str(run / "training_config.json") in err
