"""What the README tells a new user matches the package: commands, flags, fields, figures."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
from hf_topafa.modeling_sae import SAEOutput

from hf_topafa.cli import COMMANDS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _command_lines() -> dict[str, str]:
    block = _section("Command line").split("```")[1]
    lines = [line for line in block.splitlines() if line.startswith("hf-topafa ")]
    return {line.split()[1]: line for line in lines if not line.split()[1].startswith("-")}


def _parser(command: str):
    checks, runs, _ = COMMANDS[command]
    return importlib.import_module(checks or runs).build_parser()


def test_the_command_line_block_lists_every_command():
    assert set(_command_lines()) == set(COMMANDS)
    assert "--dry-run" in _command_lines()["push"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_the_readme_shows_is_one_the_command_reads(command):
    line = _command_lines()[command].split("#")[0]
    known = _parser(command)._option_string_actions
    for flag in re.findall(r"--[a-z][a-z0-9-]*", line):
        assert flag in known, f"hf-topafa {command} has no {flag}"


def test_the_library_example_names_sae_outputs_fields():
    code = _section("Using the library").split("```python")[1].split("```")[0]
    comment = next(line for line in code.splitlines() if "# SAEOutput:" in line)
    named = [name.strip() for name in comment.split("# SAEOutput:")[1].split(",")]
    fields = {f.name for f in dataclasses.fields(SAEOutput)}
    assert named and set(named) <= fields, set(named) - fields
    assert {"loss", "mse_loss", "afa_loss"} <= set(named)


def test_the_main_job_figures_say_what_varies_across_machines():
    intro = README[: README.index("\n## The science in short")]
    paragraph = intro[intro.index("the main job harvests") :]
    assert "OMP_NUM_THREADS" in paragraph and "differ" in paragraph


def test_the_steering_example_runs_with_a_coefficient_read_from_features_parquet(
    tiny_lm_dir, tmp_path, monkeypatch, capsys
):
    """The README's steering code, run as written on a run folder shaped like the main job's
    (a tiny SAE on a tiny language model): it reads the feature's max_activation from
    features.parquet and steers with a coefficient relative to it, not with a fixed number."""
    import pandas as pd
    import torch

    from hf_topafa import SAEConfig, SparseAutoencoder, steering

    section = _section("Features and steering")
    code = next(b.split("```")[0] for b in section.split("```python")[1:] if "steer(" in b)
    assert "features.parquet" in code and "max_activation" in code
    assert not re.search(r"coefficient=\d", code)  # relative to the feature, not fixed
    run = re.search(r'"(runs/[^"]+)"', code).group(1)
    feature = int(re.search(r"feature = (\d+)", code).group(1))
    monkeypatch.chdir(tmp_path)
    config = SAEConfig(
        d_in=16, d_sae=feature + 8, activation="topafa", base_model=str(tiny_lm_dir), layer=1,
        hook_point="resid_post", input_normalization="layer_norm",
    )  # fmt: skip
    torch.manual_seed(0)
    SparseAutoencoder(config).save_pretrained(run)
    table = pd.DataFrame({"feature": range(feature + 8), "max_activation": 0.75})
    table.to_parquet(f"{run}/features.parquet")
    used = []

    def recording_steer(*args, **kwargs):
        used.append(kwargs["coefficient"])
        return real_steer(*args, **kwargs)

    real_steer = steering.steer
    monkeypatch.setattr(steering, "steer", recording_steer)
    capsys.readouterr()
    exec(compile(code, "README steering", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(used) == 1 and 0.75 <= used[0] <= 4 * 0.75, used
    assert any(" | " in line for line in printed), printed
