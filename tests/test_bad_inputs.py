"""Bad input across every subcommand and the Python API: exit status 2, one line, no traceback.

The commands run in-process through ``hf_topafa.cli.main`` (fast); a few run as real processes
to check the console script and that argument errors answer before torch is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_topafa.cli import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Small good and broken inputs, built once."""
    import torch
    from safetensors.torch import save_file

    from hf_topafa import SAEConfig, SparseAutoencoder

    root = tmp_path_factory.mktemp("bad_inputs")
    cfg = SAEConfig(d_in=576, d_sae=64, activation="topk", k=8, layer=3, hook_point="resid_post")
    good = root / "sae"
    SparseAutoencoder(cfg).save_pretrained(good)
    config_text = (good / "config.json").read_text()
    weights = (good / "model.safetensors").read_bytes()

    def folder(name: str, config: str | None = config_text, data: bytes | None = weights) -> str:
        path = root / name
        path.mkdir()
        if config is not None:
            (path / "config.json").write_text(config)
        if data is not None:
            (path / "model.safetensors").write_bytes(data)
        return str(path)

    negative = json.loads(config_text) | {"d_sae": -5}
    shapes = root / "shapes.safetensors"
    save_file({n: torch.zeros(3, 3) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}, str(shapes))
    pickle_only = folder("pickle", data=None)
    (Path(pickle_only) / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n \t\n")
    (root / "bad.yaml").write_text("lr: [unclosed\n")
    (root / "unknown.yaml").write_text("learning_rate: 0.1\n")
    (root / "dataset.xyz").write_text("text")
    (root / "a_file").write_text("not a folder")
    return {
        "root": str(root),
        "sae": str(good),
        "empty_dir": folder("empty_dir", config=None, data=None),
        "no_weights": folder("no_weights", data=None),
        "neg": folder("neg", config=json.dumps(negative)),
        "trunc": folder("trunc", data=weights[:1000]),
        "shapes": folder("shapes", data=shapes.read_bytes()),
        "badjson": folder("badjson", config="{not json"),
        "pickle": pickle_only,
        "empty": str(root / "empty.txt"),
        "blank": str(root / "blank.txt"),
        "bad_yaml": str(root / "bad.yaml"),
        "unknown_yaml": str(root / "unknown.yaml"),
        "xyz": str(root / "dataset.xyz"),
        "file": str(root / "a_file"),
    }


# (argv with {placeholders} from `files`, words the error line must contain)
COMMANDS = [
    (["trian"], ["unknown command 'trian'", "train"]),
    (["--bogus"], ["--bogus"]),
    (["train", "--nosuch", "1"], ["--nosuch"]),
    (["train", "--activation", "batchtopk"], ["--k"]),
    (["train", "--activation", "softmax"], ["activation", "topafa"]),
    (["train", "--lr", "fast"], ["lr", "fast"]),
    (["train", "--config", "{root}/missing.yaml"], ["missing.yaml"]),
    (["train", "--config", "{unknown_yaml}"], ["learning_rate", "valid fields"]),
    (["train", "--resume", "--output", "{empty_dir}"], ["--resume", "no run to resume"]),
    (["train", "--resume", "--output", "{root}/never"], ["--resume", "never"]),
    (["train", "--output", "{sae}"], ["holds no hf-topafa run"]),
    (["train", "--output", "{file}"], ["is a file"]),
    (["train", "--dataset", "{empty}", "--output", "{root}/o1"], ["empty.txt", "empty"]),
    (["train", "--dataset", "{xyz}", "--output", "{root}/o2"], ["unsupported", ".xyz"]),
    (["evaluate"], ["SAE"]),
    (["evaluate", "{sae}", "--max-tokens", "-5"], ["max_tokens", "-5"]),
    (["evaluate", "{sae}", "--max-tokens", "ten"], ["--max-tokens", "ten"]),
    (["evaluate", "{sae}", "--hook-point", "resid_mid"], ["--hook-point", "resid_post"]),
    (["evaluate", "{empty_dir}"], ["config.json is missing"]),
    (["evaluate", "{no_weights}"], ["model.safetensors"]),
    (["evaluate", "{neg}"], ["d_sae", "-5"]),
    (["evaluate", "{trunc}"], ["trunc", "truncated"]),
    (["evaluate", "{shapes}"], ["shape", "W_enc"]),
    (["evaluate", "{badjson}"], ["config.json", "not valid JSON"]),
    (["evaluate", "{pickle}"], ["safetensors"]),
    (["evaluate", "{file}"], ["a_file", "file"]),
    (["evaluate", "./no/such/sae"], ["./no/such/sae"]),
    (["evaluate", "nobody-xyz/no-such-sae"], ["nobody-xyz/no-such-sae", "offline"]),
    (["harvest"], ["--output"]),
    (["harvest", "--output", "{root}/c1", "--max-tokens", "-3"], ["max_tokens", "-3"]),
    (["harvest", "--output", "{root}/c2", "--dtype", "int8"], ["--dtype", "float32"]),
    (["harvest", "--output", "{root}/c3", "--dataset", "{blank}"], ["blank.txt", "whitespace"]),
    (["harvest", "--output", "{root}/c4", "--dataset", "{root}/nope.txt"], ["nope.txt"]),
    (
        ["harvest", "--output", "{root}/c5", "--model", "nobody-xyz/no-such-lm"],
        ["nobody-xyz/no-such-lm", "offline"],
    ),
    (["convert", "--from", "onnx", "{sae}", "{root}/x1"], ["onnx", "saelens"]),
    (["convert", "--from", "saelens", "{root}/missing", "{root}/x2"], ["missing"]),
    (["convert", "--from", "saelens", "{empty_dir}", "{root}/x3"], ["empty_dir"]),
    (["push", "{sae}", "not a repo id!!", "--dry-run"], ["invalid repo id", "user/name"]),
    (["push", "{empty_dir}", "alice/x", "--dry-run"], ["config.json"]),
    (["push", "{sae}"], ["REPO_ID"]),
    (["bench", "--d-sae", "-1"], ["d_sae"]),
    (["bench", "--dtype", "int8"], ["--dtype", "float32"]),
    (["bench", "--variants", "nonsense"], ["nonsense"]),
]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("argv", "words"), COMMANDS, ids=lambda v: " ".join(v)[:60])
def test_command_fails_with_one_line(argv, words, files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOPAFA_DEBUG", raising=False)
    argv = [a.format(**files) for a in argv]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    for word in words:
        assert word.format(**files) in line, line


def test_debug_shows_the_traceback(files, capsys):
    assert cli.main(["evaluate", files["trunc"], "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error:")


# --------------------------------------------------------------------------------------------
# The Python API: errors that name the path or value


def test_api_errors_name_the_path(files, tmp_path):
    from hf_topafa import SparseAutoencoder
    from hf_topafa.training.checkpoint import CorruptCheckpointError, load_checkpoint

    with pytest.raises(FileNotFoundError, match=r"no saved SAE at \./no/such/dir"):
        SparseAutoencoder.from_pretrained("./no/such/dir")
    with pytest.raises(NotADirectoryError, match="a_file is a file"):
        SparseAutoencoder.from_pretrained(files["file"])
    sae = SparseAutoencoder.from_pretrained(files["sae"])
    before = Path(files["file"]).read_text()
    with pytest.raises(NotADirectoryError, match="a_file: it is an existing file"):
        sae.save_pretrained(files["file"])
    assert Path(files["file"]).read_text() == before
    with pytest.raises(ValueError, match="truncated"):
        SparseAutoencoder.from_pretrained(files["trunc"])
    # a checkpoint whose trainer_state.json is damaged: the error names that file
    broken = tmp_path / "step_0000001"
    broken.mkdir()
    for name in ("model.safetensors", "optimizer.safetensors"):
        (broken / name).write_bytes(Path(files["sae"], "model.safetensors").read_bytes())
    (broken / "trainer_state.json").write_text("{\n")
    with pytest.raises(CorruptCheckpointError, match="trainer_state.json is damaged"):
        load_checkpoint(broken)


# --------------------------------------------------------------------------------------------
# Real processes: the console script, and argument errors before torch loads


def _run(*argv: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hf_topafa.cli", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=120,
    )
    return done, time.perf_counter() - start


def test_processes_exit_2_with_one_line():
    for argv in (["trian"], ["evaluate", "./no/such/sae"], ["push", "x", "bad id!!", "--dry-run"]):
        done, _ = _run(*argv)
        assert done.returncode == 2, done.stderr
        _one_error_line(done.stderr)


def test_dispatcher_imports_no_torch():
    code = "import sys, hf_topafa.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["False", "False"], done.stderr
    done, seconds = _run("--version")
    assert done.returncode == 0 and done.stdout.startswith("hf-topafa ")
    assert seconds < 5, seconds


# A usage error inside a subcommand: one line and exit status 2 before torch and transformers
# load
# (how fast that is, is measured by hand, never asserted here).
EARLY_ERRORS = [
    (["train", "--layr", "3"], ["unrecognized arguments: --layr 3"]),
    (["train", "--lr", "fast"], ["--lr", "fast"]),
    (["train", "--max-tokens", "-3"], ["max_tokens", "-3"]),
    (["evaluate", "sae", "--max-tokens", "-3"], ["max_tokens", "-3"]),
    (["evaluate", "--max-tokens", "-3"], ["SAE"]),
    (["evaluate", "sae", "--hook-point", "resid_mid"], ["--hook-point", "resid_post"]),
    (["evaluate", "sae", "--batch-windows", "0"], ["batch_windows", "0"]),
    (["harvest", "--output", "o", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["harvest", "--output", "o", "--max-tokens", "-3"], ["max_tokens", "-3"]),
    (["harvest", "--output", "o", "--layers", "1,x"], ["--layers", "1,x"]),
    (["harvest", "--output", "o", "--dtype", "int8"], ["--dtype", "float32"]),
    (["bench", "--bogus"], ["--bogus"]),
    (["bench", "--d-sae", "-1"], ["d_sae"]),
    (["bench", "--variants", "nonsense"], ["nonsense", "topafa"]),
    (["features", "sae"], ["--output"]),
    (["features", "sae", "--output", "o", "--top", "0"], ["top", "0"]),
    (["features", "sae", "--output", "o", "--holdout", "some"], ["--holdout", "eval"]),
    (["convert", "--bogus"], ["SOURCE", "OUTPUT"]),
    (["convert", "src", "out"], ["--from", "--to"]),
    (["convert", "--from", "saelens", "--to", "saelens", "src", "out"], ["--to", "--from"]),
    (["convert", "--to", "sparsify", "src", "out"], ["sparsify", "formats written: saelens"]),
    (
        ["convert", "--to", "saelens", "src", "out", "--norm-scaling-factor", "2"],
        ["norm_scaling_factor", "--from only"],
    ),
    (["convert", "--from", "saelens", "src", "out", "--bogus"], ["unrecognized", "--bogus"]),
    (["convert", "--from", "onnx", "src", "out"], ["onnx", "saelens"]),
    (["convert", "--from", "saelens", "src", "out", "--dtype", "int8"], ["--dtype", "float32"]),
    (
        ["convert", "--from", "sparsify", "src", "out", "--norm-scaling-factor", "2"],
        ["norm_scaling_factor", "sparsify"],
    ),
    (["push", "--bogus"], ["RUN_DIR", "REPO_ID"]),
    (["push", "run", "alice/x", "--bogus"], ["unrecognized", "--bogus"]),
    (["push", "run", "not a repo id!!"], ["invalid repo id", "user/name"]),
    (["push", "run", "alice/x", "--format", "onnx"], ["--format", "saelens"]),
]
_WRAPPER = (
    "import sys\nfrom hf_topafa.cli import main\ncode = main(sys.argv[1:])\n"
    "print('heavy:', sorted({'torch', 'transformers'} & set(sys.modules)))\nsys.exit(code)\n"
)


@pytest.mark.parametrize(("argv", "words"), EARLY_ERRORS, ids=lambda v: " ".join(v)[:60])
def test_argument_errors_answer_before_torch_loads(argv, words, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    line = _one_error_line(done.stderr)
    for word in words:
        assert word in line, line
    # every parser, train's too, is hf_topafa.cli_args': neither torch nor transformers loads
    assert "heavy: []" in done.stdout, (argv, done.stdout)


def test_a_missing_path_shaped_like_a_hub_id_says_both_when_the_hub_is_unreachable(
    monkeypatch, tmp_path, capsys
):
    """runs/missing is an owner/name: neither a folder here nor readable from an unreachable
    Hub. The one line says both, and does not call the Hub "online"."""
    from hf_topafa import sae_loading, sources

    def unreachable(timeout: float = 3.0) -> None:
        raise ConnectionError("cannot reach https://hub.invalid (timed out)")

    monkeypatch.setattr(sae_loading, "check_hub_reachable", unreachable)
    monkeypatch.setattr(sources, "check_hub_reachable", unreachable)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        sae_loading.load_sae("runs/missing")
    message = str(info.value)
    assert "runs/missing" in message and "no such local folder" in message
    assert "the Hub could not be reached" in message and "hub.invalid" in message
    assert "online" not in message and message.count("no such local") == 1


def test_a_hub_id_read_from_the_cache_only_is_not_called_online(monkeypatch, tmp_path):
    from hf_topafa import SparseAutoencoder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        SparseAutoencoder.from_pretrained("nobody/no-such-sae", local_files_only=True)
    message = str(info.value)
    assert "nobody/no-such-sae" in message and "local Hub cache only" in message
    assert "online" not in message
