"""Help texts say what every flag does; small data and corrupt run files get messages with numbers."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch

from hf_topafa.bench import bench
from hf_topafa.cli import main
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
    assert "--no_progress hides them" in text
    assert "Show progress bars" not in text


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
