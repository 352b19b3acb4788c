"""`hf-topafa space USER/SPACE --sae ID` against the stand-in Hub, then the uploaded folder run.

The upload is checked file by file against the checkout, and the folder, written out as the
Space would clone it, is started on its own (its app.py and its hf_topafa copy, not this
checkout's) with a local tiny Llama standing in for the Hub's base model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import start_hub_server  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_spaceWriterToken00000000000000"


def _env(endpoint: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return env | {
        "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": TOKEN, "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def _cli(*argv: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_topafa.cli", *argv], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_space_command_uploads_a_runnable_space(tmp_path, tiny_lm_dir):
    from hf_topafa import SAEConfig, SparseAutoencoder

    sae_dir = tmp_path / "sae"
    cfg = SAEConfig(
        d_in=16, d_sae=64, activation="topafa", base_model=str(tiny_lm_dir), layer=1,
        hook_point="resid_post",
    )  # fmt: skip
    SparseAutoencoder(cfg).save_pretrained(sae_dir)

    server = start_hub_server({TOKEN: "alice"})
    try:
        env = _env(server.endpoint, tmp_path / "hf_home")
        bad = _cli("space", "not a repo id!!", env=env)
        assert bad.returncode == 2 and bad.stderr.startswith("error: invalid Space id")
        dry = _cli("space", "alice/explorer", "--dry-run", env=env)
        assert dry.returncode == 0 and "app.py" in dry.stdout and not server.state.repos
        done = _cli("space", "alice/explorer", "--sae", str(sae_dir), env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "published the Space alice/explorer" in done.stdout
        repo = server.state.repos[("space", "alice/explorer")]
        files = repo.resolve("main").files
    finally:
        server.shutdown()

    for name in ("app.py", "render.py", "features_tab.py", "requirements.txt", "README.md"):
        assert files[name].data == (ROOT / "spaces_app" / name).read_bytes(), name
    package = sorted(p for p in (ROOT / "hf_topafa").rglob("*.py") if "__pycache__" not in p.parts)
    for path in package:
        name = "hf_topafa/" + path.relative_to(ROOT / "hf_topafa").as_posix()
        assert files[name].data == path.read_bytes(), name
    assert "hf_topafa/data/model_card.md" in files
    assert not [n for n in files if "__pycache__" in n or n.endswith(".pyc")]
    assert files["default_sae.txt"].data.decode().strip() == str(sae_dir)
    assert "sdk: gradio" in files["README.md"].data.decode()

    # The Space's clone, started on its own: its default SAE comes from default_sae.txt.
    clone = tmp_path / "clone"
    for name, blob in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes(blob.data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    app_env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "0"}
    probe = subprocess.run(
        [sys.executable, "-s", "-c", "import app, hf_topafa; print(hf_topafa.__file__, "
         "app.default_sae())"],
        cwd=clone, env=app_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    imported, default = probe.stdout.split()[-2:]
    assert Path(imported).is_relative_to(clone) and default == str(sae_dir)
    proc = subprocess.Popen(
        [sys.executable, "-s", "app.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=clone, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        from gradio_client import Client

        deadline, client = time.monotonic() + 150, None
        while client is None:
            if proc.poll() is not None:
                pytest.fail(f"the Space's app exited: {proc.stdout.read()[-2000:]}")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        status, *_ = client.predict(
            str(sae_dir), "the cat sat on the mat .", "0.5", "eps_lbo", api_name="/analyze"
        )
        assert "Analysed" in status, status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
