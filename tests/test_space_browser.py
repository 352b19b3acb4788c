"""The Space in a real browser: Debian's Chromium, headless, driven by Playwright.

Never downloads a browser. The library is imported inside the fixtures, so that a run without
Chromium fails in seconds. Without /usr/bin/chromium the test FAILS and says how to install it
(`apt-get install -y chromium`); CI installs it before running the tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("HF_TOPAFA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEXT = "Sparse autoencoders split a language model's activations into features."
TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser test needs Debian's chromium. "
            "Install it with `apt-get install -y chromium` (never `playwright install`)."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the playwright package is missing: pip install playwright (no browser download)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    from hf_topafa import SAEConfig, SparseAutoencoder
    from hf_topafa.data import lm

    tmp = tmp_path_factory.mktemp("space_browser")
    cfg = SAEConfig(
        d_in=576, d_sae=1024, activation="topafa", base_model=lm.DEFAULT_MODEL, layer=3,
        hook_point="resid_post",
    )  # fmt: skip
    SparseAutoencoder(cfg).save_pretrained(tmp / "topafa")
    sys.path.insert(0, str(ROOT / "spaces_app"))
    import app

    demo = app.build_demo(str(tmp / "topafa"), max_tokens=64)
    url = app.launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    yield {"url": url, "sae": tmp / "topafa", "tmp": tmp}
    demo.close()


def reference(sae_dir: Path, text: str) -> dict:
    import torch

    from hf_topafa import SparseAutoencoder
    from hf_topafa.data import lm
    from hf_topafa.sae import afa

    sae = SparseAutoencoder.from_pretrained(sae_dir).eval()
    model, tokenizer = lm.load_language_model(sae.config.base_model)
    ids = tokenizer(text)["input_ids"]
    x = lm.truncated_forward(model, torch.tensor([ids]), sae.config.layer, sae.config.hook_point)[0]
    return {"tokens": [tokenizer.decode([i]) for i in ids], "diag": afa.zf_diagnostics(sae, x)}


def test_analyze_in_browser(browser, space, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(space["url"], wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.locator("#input-text textarea").fill(TEXT)
    page.locator("#analyze-button").click()
    page.wait_for_selector("#zf-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    page.wait_for_selector('#token-table [data-testid="cell-1-1"]', timeout=TIMEOUT_MS)
    page.wait_for_selector("#shaded-text .tok", timeout=TIMEOUT_MS)
    from hf_topafa.sae import afa

    ref = reference(space["sae"], TEXT)
    n = len(ref["tokens"])

    status = page.locator("#analyze-status").inner_text()
    assert f"Analysed {n} tokens" in status

    # The plot: bands, diagonal and one marker per kept token, each with its token on hover.
    traces = page.evaluate(
        "() => document.querySelector('#zf-plot .js-plotly-plot').data"
        ".map(t => ({name: t.name, mode: t.mode, n: (t.x || []).length, text: t.text || []}))"
    )
    names = " ".join(t["name"] for t in traces)
    for eps_h in afa.EPS_H_BANDS:
        assert f"ε(h−1)={eps_h:g}" in names
    markers = [t for t in traces if t["mode"] == "markers"]
    assert sum(t["n"] for t in markers) == n - 1  # the first position is left out
    hover = " ".join(h for t in markers for h in t["text"])
    assert repr(ref["tokens"][1]) in hover and "εLBO" in hover
    legend = page.locator("#zf-plot .legend").text_content()
    assert "within bounds" in legend or "over-activated" in legend or "under-activated" in legend

    # The table (a virtual grid): one row per token, the numbers of the library.
    grid = page.locator("#token-table [role=grid]")
    assert grid.get_attribute("aria-rowcount") == str(n + 1)  # the header row, then the tokens
    cells = [
        page.locator(f'#token-table [data-testid="cell-1-{col}"]').inner_text() for col in range(9)
    ]
    assert cells[1].strip() == ref["tokens"][1].replace(" ", "␣")
    assert float(cells[2]) == pytest.approx(float(ref["diag"]["z_norm"][1]), rel=1e-4)
    assert float(cells[3]) == pytest.approx(float(ref["diag"]["f_norm"][1]), rel=1e-4)
    assert int(cells[6]) == int(ref["diag"]["k"][1])

    # Shaded text and summary are on the page.
    assert page.locator("#shaded-text .tok").count() == n
    assert "εLBO median" in page.locator("#summary-table").inner_text()

    # The CSV downloads.
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        page.locator("#csv-file a").first.click()
    download = tmp_path / "tokens.csv"
    info.value.save_as(download)
    assert len(download.read_text(encoding="utf-8").splitlines()) == n + 1

    shot = tmp_path / "space.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HF_TOPAFA_SAVE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copyfile(shot, ROOT / "spaces_app" / "screenshot.png")
    assert not errors, errors
    page.close()


def _header(page, table: str) -> list[str]:
    return [
        cell.strip()
        for cell in page.locator(f"#{table} thead th").all_inner_texts()
        if cell.strip()
    ]


@pytest.mark.parametrize("width", [420, 1400])
def test_layout_before_and_after_a_run(browser, space, width):
    """Named headers before the first run, a readable ZF plot, whole columns, no clipped box."""
    import render

    page = browser.new_page(viewport={"width": width, "height": 1600})
    page.goto(space["url"], wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.wait_for_selector("#token-table thead th", timeout=TIMEOUT_MS)
    before = _header(page, "token-table")
    assert [h.replace("\n", "") for h in before] == render.TABLE_COLUMNS, before  # not 1 2 3
    assert _header(page, "summary-table")[0] == "figure"

    # The SAE box keeps its width and stays inside the page and its panel.
    box = page.locator("#sae-box textarea, #sae-box input").first.bounding_box()
    panel = page.locator("#sae-box").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= min(width, panel["x"] + panel["width"])
    assert box["width"] >= min(300, width - 60), box

    page.locator("#input-text textarea").fill(TEXT)
    page.locator("#analyze-button").click()
    page.wait_for_selector('#token-table [data-testid="cell-1-8"]', timeout=TIMEOUT_MS)
    page.wait_for_selector("#zf-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    fig = page.evaluate(
        "() => { const p = document.querySelector('#zf-plot .js-plotly-plot');"
        " return {data: p.data.map(t => ({mode: t.mode, x: t.x, y: t.y,"
        " size: t.marker && t.marker.size})), layout: {x: p.layout.xaxis.range,"
        " y: p.layout.yaxis.range, xt: p.layout.xaxis.title.text,"
        " yt: p.layout.yaxis.title.text}}; }"
    )
    markers = [t for t in fig["data"] if t["mode"] == "markers"]
    xs = [v for t in markers for v in t["x"]]
    ys = [v for t in markers for v in t["y"]]
    assert all(t["size"] >= 7 for t in markers)
    lo, hi = fig["layout"]["x"]
    assert 0 < lo <= min(xs) and max(xs) <= hi  # fitted to the points, not from 0
    assert hi - lo < 1.5 * (max(xs) - min(xs)) + 1e-6
    lo, hi = fig["layout"]["y"]
    assert 0 < lo <= min(ys) and max(ys) <= hi
    assert "‖z‖" in fig["layout"]["xt"] and "‖f̃‖" in fig["layout"]["yt"]

    # The top-features cell shows its whole list: nothing hidden by overflow.
    cell = page.locator('#token-table [data-testid="cell-1-8"]')
    shown = cell.evaluate("c => [c.scrollWidth, c.clientWidth, c.scrollHeight, c.clientHeight]")
    assert shown[0] <= shown[1] + 1 and shown[2] <= shown[3] + 1, shown
    assert cell.inner_text().count("f") >= 3  # several features listed, in full
    page.close()


def test_bad_input_in_browser_shows_message(browser, space):
    page = browser.new_page()
    page.goto(space["url"], wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.locator("#analyze-button").click()  # empty text
    page.wait_for_function(
        "() => document.querySelector('#analyze-status').innerText.includes('Could not analyse')",
        timeout=TIMEOUT_MS,
    )
    assert "text is empty" in page.locator("#analyze-status").inner_text()
    # Still alive: a real text works after the error.
    page.locator("#input-text textarea").fill(TEXT)
    page.locator("#analyze-button").click()
    page.wait_for_selector("#zf-plot .js-plotly-plot", timeout=TIMEOUT_MS)
    assert "Analysed" in page.locator("#analyze-status").inner_text()
    page.close()


def test_missing_chromium_fails_with_install_hint(tmp_path):
    """Without the browser the test fails (never skips) and says how to install it."""
    import subprocess

    env = {**os.environ, "HF_TOPAFA_CHROMIUM": str(tmp_path / "no-chromium")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         f"{__file__}::test_analyze_in_browser"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    assert "apt-get install -y chromium" in done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout
