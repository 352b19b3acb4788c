import subprocess
import sys

from hf_topafa.cli import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text


def test_unknown_command_names_the_valid_ones(capsys):
    assert cli.main(["trian"]) == 2
    message = capsys.readouterr().err
    assert "unknown command 'trian'" in message and "train" in message


def test_console_script_runs():
    done = subprocess.run(
        [sys.executable, "-m", "hf_topafa.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "hf-topafa" in done.stdout
