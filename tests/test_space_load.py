"""Load: `python spaces_app/app.py` in its own process, 20 visitors at once, every answer right.

Each visitor has its own gradio_client and its own text; all 20 requests are in flight together
and go through Gradio's queue. Half of them name the SAE by a Hub id, served by the stand-in Hub
of tests/hub_server.py, the other half by its local folder. Every reply is checked against the
library computed here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
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
VISITORS = 20
START_TIMEOUT_S = 150
HUB_ID = "alice/space-sae"
TOKEN = "hf_aliceSecretToken0123456789"
WORDS = "red green blue cyan magenta yellow black white orange purple".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visitor_text(i: int) -> str:
    """A different text per visitor (different lengths too)."""
    words = [WORDS[(i * 3 + j) % len(WORDS)] for j in range(4 + i % 7)]
    return f"Visitor {i} writes: " + " ".join(words) + "."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The Space as a separate process, started the way a user starts it."""
    tmp = tmp_path_factory.mktemp("space_load")
    cfg = SAEConfig(
        d_in=576, d_sae=1024, activation="topafa", base_model=lm.DEFAULT_MODEL, layer=3,
        hook_point="resid_post",
    )  # fmt: skip
    SparseAutoencoder(cfg).save_pretrained(tmp / "topafa")
    hub = start_hub_server({TOKEN: "alice"})
    upload(hub.endpoint, tmp / "topafa", tmp / "uploader_home")
    port = free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_TOPAFA_SAE": str(tmp / "topafa"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "spaces_app" / "app.py"), "--host", "127.0.0.1",
         "--port", str(port), "--max-tokens", "64"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{_tail(tmp / 'server.log')}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the app did not answer in {START_TIMEOUT_S}s:\n{_tail(tmp / 'server.log')}"
                )
            time.sleep(0.5)
        yield {"url": url, "sae": tmp / "topafa", "log": tmp / "server.log"}
    finally:
        stop(proc)
        log.close()
        hub.shutdown()
        hub.server_close()


def upload(endpoint: str, folder: Path, home: Path) -> None:
    """Put the SAE on the stand-in Hub, with this process's Hub client pointed there meanwhile."""
    patches = {
        "ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in patches.items():
            mp.setattr(constants, name, value)
        mp.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
        api = HfApi(endpoint=endpoint, token=TOKEN)
        api.create_repo(HUB_ID)
        api.upload_folder(folder_path=str(folder), repo_id=HUB_ID)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:]


def reference(sae_dir: Path, texts: list[str]) -> list[dict]:
    sae = SparseAutoencoder.from_pretrained(sae_dir).eval()
    model, tokenizer = lm.load_language_model(sae.config.base_model)
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        x = lm.truncated_forward(model, torch.tensor([ids]), 3, "resid_post")[0]
        out.append({"n": len(ids), "diag": afa.zf_diagnostics(sae, x)})
    return out


def test_twenty_concurrent_visitors(server):
    from gradio_client import Client

    texts = [visitor_text(i) for i in range(VISITORS)]
    expected = reference(server["sae"], texts)
    barrier = threading.Barrier(VISITORS)

    def visit(i: int):
        client = Client(server["url"], verbose=False)
        try:
            barrier.wait(timeout=120)  # every visitor submits at the same moment
            start = time.monotonic()
            sae = HUB_ID if i % 2 == 0 else str(server["sae"])
            job = client.submit(sae, texts[i], "0.5", "eps_lbo", api_name="/analyze")
            result = job.result(timeout=240)
            return result, time.monotonic() - start
        finally:
            client.close()

    start = time.monotonic()
    with ThreadPoolExecutor(VISITORS) as pool:
        answers = list(pool.map(visit, range(VISITORS)))
    wall = time.monotonic() - start

    for i, ((status, plot, _, _, table, csv_path), _) in enumerate(answers):
        ref = expected[i]
        assert status.startswith(f"Analysed {ref['n']} tokens"), (i, status)
        assert (HUB_ID in status) == (i % 2 == 0)
        assert plot["type"] == "plotly" and csv_path
        rows = table["data"]
        assert len(rows) == ref["n"]
        h = json.loads((server["sae"] / "config.json").read_text())["d_sae"] + 1
        for pos, row in enumerate(rows):
            z, f = float(ref["diag"]["z_norm"][pos]), float(ref["diag"]["f_norm"][pos])
            assert row[2] == pytest.approx(z, rel=1e-4, abs=1e-3)
            assert row[3] == pytest.approx(f, rel=1e-4, abs=1e-3)
            # eps_LBO is a difference of near-equal squares over (h - 1): float32 rounding of
            # ||z||^2 and ||f~||^2 (another process, other summation order) moves it by up to a
            # few float32 epsilons of z^2 / ((h - 1) f^2), beyond the 4 digits the table shows
            cancellation = 8 * torch.finfo(torch.float32).eps * z**2 / (h - 1) / f**2
            assert float(row[4]) == pytest.approx(
                float(ref["diag"]["eps_lbo"][pos]), rel=1e-3, abs=cancellation
            )
            assert row[6] == int(ref["diag"]["k"][pos])
    latencies = sorted(t for _, t in answers)
    print(
        f"\n{VISITORS} concurrent requests answered correctly in {wall:.1f}s; latency "
        f"median {latencies[VISITORS // 2]:.2f}s, max {latencies[-1]:.2f}s"
    )
    assert "Traceback" not in server["log"].read_text(errors="replace")
