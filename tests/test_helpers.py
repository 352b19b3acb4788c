"""Atomic writes leave the old content or the new one, never a half file or a temporary."""

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from hf_topafa import helpers


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_replace_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "a.json"
    helpers.write_json(target, {"x": 1})
    helpers.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert _listing(target.parent) == ["a.json"]
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode == 0o666 & ~helpers.umask()  # not mkstemp's owner-only 0o600
    helpers.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    helpers.save_safetensors(tmp_path / "t.safetensors", {"w": torch.arange(3.0)[::2]})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["w"], torch.tensor([0.0, 2.0]))


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    helpers.write_text(target, "old")
    with pytest.raises(RuntimeError), helpers.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["a.txt"]
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is replaced
        helpers.write_json(target, {"x": float("nan")})
    assert target.read_text() == "old"


def test_atomic_folder_replaces_a_whole_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with pytest.raises(RuntimeError), helpers.atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert _listing(target) == ["stale.txt"] and _listing(tmp_path) == ["out"]
    with helpers.atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _listing(target) == ["new.txt"] and _listing(tmp_path) == ["out"]


def test_number_checks_name_the_field():
    assert helpers.require_positive_int("k", 3) == 3
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            helpers.require_positive_int("k", bad)
    assert helpers.require_nonnegative_int("seed", 0) == 0
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        helpers.require_nonnegative_int("seed", -1)
    for bad in (0, float("inf"), float("nan"), False):
        with pytest.raises(ValueError, match="lr must be a positive number"):
            helpers.require_positive_number("lr", bad)
    with pytest.raises(ValueError, match="afa_coef must be a finite number >= 0"):
        helpers.require_nonnegative_number("afa_coef", -0.5)
    assert helpers.require_nonnegative_number("afa_coef", 0) == 0


def test_dtype_names():
    assert helpers.torch_dtype("bfloat16") is torch.bfloat16
    assert [helpers.torch_dtype(n) for n in helpers.DTYPE_NAMES] == [
        torch.float32,
        torch.float64,
        torch.bfloat16,
        torch.float16,
    ]
    with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
        helpers.torch_dtype("float8")


def test_script_command_records_the_script_under_scripts_whatever_path_started_it(monkeypatch):
    monkeypatch.setattr(
        "sys.argv", ["/elsewhere/checkout/scripts/synth_reread.py", "RUN", "--json", "o.json"]
    )
    assert helpers.script_command() == "python scripts/synth_reread.py RUN --json o.json"
