"""Evaluation: hand-computed metrics, real runs on the embedded SmolLM2, plots and bad input.

Real-model tests read one or two short windows of the bundled WikiText sample at a low layer, so
each language-model forward is cheap; the model itself is loaded once per process (lm caches it).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.evaluation import evaluate as ev
from hf_topafa.evaluation import unfolded_l0
from hf_topafa.sae import afa

D = 576  # SmolLM2-135M hidden size
LAYER = 2
SMALL = {"max_tokens": 126, "context_length": 64, "batch_windows": 2, "holdout": "none",
         "progress": False}  # fmt: skip


def identity_sae(d_in: int, b_dec=None, **meta) -> SparseAutoencoder:
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: x_hat = relu(x-b) - relu(b-x) + b = x."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=2 * d_in, activation="relu", **meta))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        if b_dec is not None:
            sae.b_dec.copy_(torch.as_tensor(b_dec, dtype=torch.float32))
    return sae.eval()


def zero_sae(d_in: int, **meta) -> SparseAutoencoder:
    """Decodes everything to zero: splicing it in is exactly the zero ablation."""
    sae = identity_sae(d_in, **meta)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


# -- hand-computed cases ---------------------------------------------------------------------


def test_loss_recovered_by_hand():
    assert ev.loss_recovered(ce_clean=2.0, ce_sae=2.5, ce_zero=4.0) == pytest.approx(0.75)
    assert ev.loss_recovered(2.0, 2.0, 4.0) == 1.0
    assert ev.loss_recovered(2.0, 4.0, 4.0) == 0.0
    assert ev.loss_recovered(2.0, 5.0, 4.0) == pytest.approx(-0.5)  # worse than ablation
    assert math.isnan(ev.loss_recovered(3.0, 3.0, 3.0))


def test_eps_lbo_and_bands_by_hand():
    # d_in = 2, b_dec = (1, 0), h = 2 * 2 + 1 = 5. Per token (see identity_sae):
    #   x = (3, 4):  f~ = (2, 4, 0, 0, |b|=1), |f~|^2 = 21, |z|^2 = 25 -> eps = 4 / (4 * 21) = 1/21
    #   x = (1, 0):  f~ = (0, 0, 0, 0, 1),      |f~|^2 = 1,  |z|^2 = 1  -> eps = 0
    #   x = (-3, 0): f~ = (0, 0, 4, 0, 1),      |f~|^2 = 17, |z|^2 = 9  -> eps = 8 / (4 * 17) = 2/17
    # eps(h-1) of the third token is 8/17 = 0.47: over-activated at 0.25, within at 0.5.
    sae = identity_sae(2, b_dec=[1.0, 0.0])
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [-3.0, 0.0]])
    metrics, details = ev.evaluate_activations(sae, x)
    assert details.eps_lbo.tolist() == pytest.approx([1 / 21, 0.0, 2 / 17], rel=1e-5)
    quartiles = metrics["afa"]["eps_lbo_quartiles"]
    assert quartiles["q50"] == pytest.approx(1 / 21, rel=1e-5)
    # sorted eps: 0, 1/21, 2/17; q75 sits at position 0.75 * 2 = 1.5, halfway between
    # 1/21 = 0.047619 and 2/17 = 0.117647: (1/21 + 2/17) / 2 = 0.082633 (linear interpolation)
    assert quartiles["q75"] == pytest.approx(0.0826331, rel=1e-5)
    assert metrics["afa"]["h"] == 5
    bands = metrics["afa"]["bands"]
    assert bands["0.25"] == pytest.approx({"over": 1 / 3, "within": 2 / 3, "under": 0.0})
    assert bands["0.5"] == pytest.approx({"over": 0.0, "within": 1.0, "under": 0.0})
    # exact reconstruction; L0 by hand: 2, 0, 1 active features
    assert metrics["reconstruction"]["normalized_mse"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["reconstruction"]["cosine_similarity"] == pytest.approx(1.0)
    assert metrics["sparsity"]["l0_mean"] == pytest.approx(1.0)
    # features: +x1 fires on token 1, +x2 on token 1, -x1 on token 3, -x2 never
    assert metrics["sparsity"]["dead_features"] == 1
    assert metrics["sparsity"]["dense_features"] == 3  # each fires on 1/3 > 10% of tokens


def test_normalized_mse_and_fvu_by_hand():
    # A "half" SAE: W_dec = 0.5 [I; -I], so x_hat = x / 2 (b = 0). Per token the normalized MSE
    # is |x/2|^2 / |x|^2 = 1/4. FVU = sum |x/2|^2 / sum |x - mean|^2; for x = (2,0), (0,2),
    # mean = (1,1): numerator 1 + 1 = 2, denominator 2 + 2 = 4 -> 0.5.
    sae = identity_sae(2)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    metrics, _ = ev.evaluate_activations(sae, x, batch_size=1)  # streamed one token at a time
    rec = metrics["reconstruction"]
    assert rec["normalized_mse"] == pytest.approx(0.25)
    assert rec["total_normalized_mse"] == pytest.approx(0.25)
    assert rec["fvu"] == pytest.approx(0.5)
    assert rec["explained_variance"] == pytest.approx(0.5)
    assert rec["cosine_similarity"] == pytest.approx(1.0)


def test_layer_norm_sae_reports_both_spaces():
    torch.manual_seed(0)
    sae = SparseAutoencoder(
        SAEConfig(d_in=16, d_sae=64, activation="topk", k=4, input_normalization="layer_norm")
    )
    x = torch.randn(50, 16) * 3 + 1
    metrics, details = ev.evaluate_activations(sae, x)
    assert "reconstruction_normalized_space" in metrics
    with torch.no_grad():
        out = sae(x)
        x_n, _, _ = sae.normalize_input(x)
        manual = ((out.reconstruction - x).pow(2).sum(-1) / x.pow(2).sum(-1)).mean()
        x_hat_n = sae.decode_normalized(out.feature_acts)
        manual_n = ((x_hat_n - x_n).pow(2).sum(-1) / x_n.pow(2).sum(-1)).mean()
    assert metrics["reconstruction"]["normalized_mse"] == pytest.approx(float(manual), rel=1e-5)
    assert metrics["reconstruction_normalized_space"]["normalized_mse"] == pytest.approx(
        float(manual_n), rel=1e-5
    )
    # AFA numbers match the core's zf_diagnostics (z is the normalized input)
    diag = afa.zf_diagnostics(sae, x)
    torch.testing.assert_close(details.z_norm, diag["z_norm"])
    torch.testing.assert_close(details.f_norm, diag["f_norm"])
    torch.testing.assert_close(details.eps_lbo, diag["eps_lbo"])


def test_quantiles_and_histogram():
    q = ev.quantiles(torch.arange(1.0, 101.0))
    assert q["q50"] == pytest.approx(50.0, abs=1) and q["q05"] == pytest.approx(5.0, abs=1)
    assert ev.quantiles(torch.tensor([1.0, math.inf, math.inf]), (0.5,))["q50"] == math.inf
    # the Space's definition: sorted 1, 2, 3, inf -> median halfway between 2 and 3
    assert ev.quantiles(torch.tensor([3.0, math.inf, 1.0, 2.0]), (0.5, 1.0)) == {
        "q50": 2.5,
        "q100": math.inf,
    }
    h = ev.histogram(torch.tensor([1.0, 1.0, 2.0, 5.0]), bins=4)
    assert sum(h["counts"]) == 4 and len(h["edges"]) == 5
    assert ev.to_json({"a": math.inf, "b": [math.nan, 1.0]}) == {"a": "inf", "b": ["nan", 1.0]}


# -- real runs on the embedded language model ----------------------------------------------


@pytest.fixture(scope="module")
def real_results(smollm2):
    """Identity, zero and top-AFA SAEs at layer 2, one shared pass over two windows.

    ``smollm2`` (conftest) loads the model once per session; evaluate reuses that instance.
    """
    meta = {"layer": LAYER, "hook_point": "resid_post"}
    torch.manual_seed(0)
    topafa = SparseAutoencoder(SAEConfig(d_in=D, d_sae=512, activation="topafa", **meta))
    saes = [identity_sae(D, **meta), zero_sae(D, **meta), topafa]
    return ev.evaluate_saes(saes, ev.EvalConfig(**SMALL))


def test_identity_sae_recovers_all_loss(real_results):
    metrics, details = real_results[0]
    assert metrics["num_tokens"] == 126 and metrics["data"]["num_windows"] == 2
    assert len(details.token_texts) == 126 and "[[" in details.token_texts[0]
    rec = metrics["reconstruction"]
    assert rec["normalized_mse"] < 1e-10 and rec["fvu"] < 1e-10
    assert rec["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    down = metrics["downstream"]
    assert down["ce_clean"] == pytest.approx(down["ce_sae"], abs=1e-4)
    assert down["kl_div"] == pytest.approx(0.0, abs=1e-4)
    assert down["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert down["ce_zero_ablation"] > down["ce_clean"] + 0.5  # ablating layer 2 hurts
    assert down["num_predictions"] == 124  # 2 windows x 62 kept positions with a next token
    assert metrics["afa"]["eps_lbo_quartiles"]["q50"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["afa"]["bands"]["0.25"]["within"] == 1.0


def test_zero_sae_equals_zero_ablation(real_results):
    metrics, _ = real_results[1]
    down = metrics["downstream"]
    assert down["ce_sae"] == pytest.approx(down["ce_zero_ablation"], rel=1e-6)
    assert down["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert down["kl_div"] > 0.1
    assert metrics["reconstruction"]["normalized_mse"] == pytest.approx(1.0)
    assert metrics["afa"]["eps_lbo_infinite_tokens"] == 126  # empty code, non-zero input
    json.dumps(ev.to_json(metrics), allow_nan=False)  # still valid JSON


def test_topafa_reports_k_distribution(real_results):
    metrics, details = real_results[2]
    spa = metrics["sparsity"]
    assert spa["k_mean"] == pytest.approx(float(details.k.mean()))
    assert spa["k_quantiles"]["q05"] <= spa["k_quantiles"]["q50"] <= spa["k_quantiles"]["q95"]
    assert sum(spa["k_histogram"]["counts"]) == 126
    assert 0 <= spa["dead_features"] <= 512
    assert -1 < metrics["downstream"]["loss_recovered"] < 1
    for shares in metrics["afa"]["bands"].values():
        assert sum(shares.values()) == pytest.approx(1.0)
    dec = metrics["afa"]["decoder"]
    assert 0 < dec["mean_abs_cos"] < dec["max_abs_cos"] < 1
    assert "loss recovered" in ev.format_report(metrics)


def test_without_downstream_matches_activation_metrics(real_results):
    """Truncated forward (no downstream) gives the same activations as the full forward."""
    full = real_results[2][0]
    torch.manual_seed(0)  # the same weights as the fixture's top-AFA SAE
    topafa = SparseAutoencoder(
        SAEConfig(d_in=D, d_sae=512, activation="topafa", layer=LAYER, hook_point="resid_post")
    )
    [(metrics, _)] = ev.evaluate_saes([topafa], ev.EvalConfig(**SMALL, compute_downstream=False))
    assert "downstream" not in metrics
    assert metrics["reconstruction"]["normalized_mse"] == pytest.approx(
        full["reconstruction"]["normalized_mse"], rel=1e-4
    )


def test_cli_writes_table_json_and_plots(tmp_path, capsys):
    torch.manual_seed(0)
    meta = {"layer": LAYER, "hook_point": "resid_post", "context_length": 64}
    folders = []
    for i, act in enumerate(("topafa", "topk")):
        sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=256, activation=act, k=8, **meta))
        sae.save_pretrained(tmp_path / f"sae{i}")
        folders.append(str(tmp_path / f"sae{i}"))
    common = ["--max-tokens", "63", "--holdout", "none"]  # context length: the SAEs' own (64)
    out_json = tmp_path / "one.json"
    assert ev.cli_main([folders[0], *common, "--json", str(out_json), "--plots",
                        str(tmp_path / "plots1")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "normalized MSE" in printed and "eps_LBO quartiles" in printed
    data = json.loads(out_json.read_text())
    assert data["num_tokens"] == 63 and data["config"]["max_tokens"] == 63
    assert data["data"]["context_length"] == 64
    assert data["downstream"]["num_predictions"] == 62
    for name in ("zf_plot.png", "zf_plot.html", "eps_lbo_hist.png", "k_hist.png"):
        assert (tmp_path / "plots1" / name).stat().st_size > 1000, name
    assert "[[" in (tmp_path / "plots1" / "zf_plot.html").read_text()  # token text on hover
    # two SAEs: per-SAE folders plus the half-violin figure
    assert ev.cli_main([*folders, *common, "--no-downstream", "--json", str(tmp_path / "two.json"),
                        "--plots", str(tmp_path / "plots2")]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "two.json").read_text())["results"]) == 2
    assert (tmp_path / "plots2" / "per_sae_violins.png").stat().st_size > 1000
    assert not (tmp_path / "plots2" / "L2_sae1" / "k_hist.png").exists()  # topk: no k histogram
    assert (tmp_path / "plots2" / "L2_sae0" / "k_hist.png").exists()


def test_unfold_on_text_counts_the_absorbed_parents_as_features(smollm2):
    basis = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0].T
    parents, children = basis[:2], basis[2:10]  # two parents, four children each, absorbed
    absorbed = (2 * parents.repeat_interleave(4, 0) + children) / 5**0.5
    meta = {"layer": LAYER, "hook_point": "resid_post", "input_normalization": "none"}
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=64, activation="topk", k=4, **meta))
    with torch.no_grad():
        # and a parent with a row of its own, its three children's rows leaning on it (|cos|
        # 0.29, above the chance level 0.17; 0.08 with each other): a star, no atom for it with stars
        leaning = basis[11:14] + 0.3 * basis[10]
        # and three rows that lean on a thin parent (|cos| 0.14 with each other: under the pair
        # level, above the triangle level 0.11): a lone triangle, grouped only in that reading
        lone = basis[14:17] + 0.4 * basis[66]
        sae.W_dec.copy_(torch.cat([absorbed, basis[10:11], leaning, lone, basis[17:66]]))
        sae.W_enc.copy_(sae.W_dec.T)
    cfg = ev.EvalConfig(**SMALL, compute_downstream=False)
    [(plain, _)] = ev.evaluate_saes([sae], cfg)
    [(unfolded, _)] = ev.evaluate_saes([sae], cfg, unfold=True)
    assert "l0_unfolded_by_levels_mean" not in plain["sparsity"]
    spa = unfolded["sparsity"]
    assert spa["atoms_by_levels"] == 3 and spa["l0_mean"] == plain["sparsity"]["l0_mean"]
    assert spa["l0_mean"] < spa["l0_unfolded_by_levels_mean"] <= spa["l0_mean"] + 3
    assert spa["atoms_by_levels_stars"] == 2  # the two absorbed parents, not the held one
    assert (
        spa["l0_mean"]
        < spa["l0_unfolded_by_levels_stars_mean"]
        <= spa["l0_unfolded_by_levels_mean"]
    )
    assert spa["atoms_by_levels_exclusive"] <= spa["atoms_by_levels"]
    assert spa["nested_tokens"] == unfolded["num_tokens"]  # fewer than NESTED_SAMPLES: all
    assert spa["l0_mean"] <= spa["l0_unfolded_by_levels_exclusive_mean"]
    # hubs only silence atoms: never more than the exclusive reading, never under the SAE's own
    assert spa["atoms_by_levels_exclusive_hubs"] == spa["atoms_by_levels_exclusive"]
    assert (
        spa["l0_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_hubs_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_mean"]
    )
    report = ev.format_report(unfolded)
    assert "L0 unfolded by levels" in report and "without stars' atoms" in report
    assert "without nested groups" in report and "nesting read on" in report
    assert "and with hubs" in report and "atoms silent where their parent's own row" in report
    # folded, a parent counts once as with hubs, and its ancestors as without them
    assert spa["atoms_by_levels_exclusive_hubs_folded"] == spa["atoms_by_levels_exclusive"]
    assert (
        spa["l0_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_hubs_folded_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_mean"]
    )
    assert "or hubs folded" in report and "own rows folded into their atoms" in report
    # a double's firings are another latent's: leaving it out never raises the count
    assert spa["doubles_by_levels_exclusive"] >= 0
    assert (
        spa["atoms_by_levels_exclusive_hubs_folded_doubles"]
        == spa["atoms_by_levels_exclusive_hubs_folded"]
    )
    assert (
        spa["l0_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_hubs_folded_doubles_mean"]
        <= spa["l0_unfolded_by_levels_exclusive_hubs_folded_mean"]
    )
    assert "and without doubles" in report and "left out as doubles" in report
    # the lone triangle is one atom more, firing where its rows do
    assert (
        spa["atoms_by_levels_exclusive_hubs_folded_lone"]
        == spa["atoms_by_levels_exclusive_hubs_folded"] + 1
    )
    assert (
        spa["l0_unfolded_by_levels_exclusive_hubs_folded_lone_mean"]
        > spa["l0_unfolded_by_levels_exclusive_hubs_folded_mean"]
    )
    assert "or folded, lone triangles" in report and "meeting only in threes" in report


def test_unfold_on_text_reads_nesting_on_the_first_tokens_and_counts_every_token(
    smollm2, monkeypatch
):
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=64, activation="relu", layer=LAYER,
                                      hook_point="resid_post", input_normalization="none"))  # fmt: skip
    cfg = ev.EvalConfig(**SMALL, compute_downstream=False)  # a ReLU: an L0 that varies by token
    [(whole, _)] = ev.evaluate_saes([sae], cfg, unfold=True)
    monkeypatch.setattr(unfolded_l0, "NESTED_SAMPLES", 7)  # built after the first batch
    [(first, _)] = ev.evaluate_saes([sae], cfg, unfold=True)
    assert first["sparsity"]["nested_tokens"] == 7 < whole["sparsity"]["nested_tokens"]
    for spa in (first["sparsity"], whole["sparsity"]):  # random rows: no atom, so the L0 itself
        assert spa["atoms_by_levels_exclusive"] == 0
        assert spa["l0_unfolded_by_levels_exclusive_mean"] == pytest.approx(spa["l0_mean"])


# -- bad input -----------------------------------------------------------------------------


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        ev.evaluate_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub id"):
        ev.evaluate_sae(tmp_path / "does" / "not" / "exist")


def test_d_in_mismatch_names_both_sizes():
    sae = identity_sae(64, layer=LAYER, hook_point="resid_post")
    with pytest.raises(ValueError, match=r"d_in=64 .* hidden size 576"):
        ev.evaluate_saes([sae], ev.EvalConfig(**SMALL))


def test_dataset_without_tokens(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("Too short.\n")
    sae = identity_sae(D, layer=LAYER, hook_point="resid_post")
    with pytest.raises(ValueError, match="gave no tokens to evaluate"):
        ev.evaluate_saes([sae], ev.EvalConfig(**{**SMALL, "holdout": "eval"}, dataset=str(text)))


def test_missing_site_and_bad_config():
    sae = identity_sae(D)  # no layer / hook point recorded
    with pytest.raises(ValueError, match="records no layer"):
        ev.evaluate_saes([sae], ev.EvalConfig(**SMALL))
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        ev.EvalConfig(max_tokens=0)
    with pytest.raises(ValueError, match="valid hook points"):
        ev.EvalConfig(hook_point="resid_mid")
    with pytest.raises(ValueError, match=r"shape \[N, 576\]"):
        ev.evaluate_activations(sae, torch.zeros(3, 5))


def test_context_length_follows_the_saes():
    a = identity_sae(4, context_length=64)
    b = identity_sae(4, context_length=128)
    assert ev._context_length([(a, "a")], ev.EvalConfig()) == 64
    assert ev._context_length([(identity_sae(4), "c")], ev.EvalConfig()) == 256
    with pytest.raises(ValueError, match="different context lengths"):
        ev._context_length([(a, "a"), (b, "b")], ev.EvalConfig())
    with pytest.warns(UserWarning, match="overlap text the SAE trained on"):
        ev._context_length([(a, "a")], ev.EvalConfig(context_length=32))


def test_an_error_line_comes_after_the_progress_bar(tmp_path, capsys):
    """A failure inside the loop closes the bar first, so the one error line stands alone
    (before, the bar was drawn again after it when the dropped bar was collected)."""
    sae = SparseAutoencoder(
        SAEConfig(d_in=D, d_sae=64, activation="topk", k=4, layer=LAYER, hook_point="resid_post")
    )
    sae.save_pretrained(tmp_path / "sae")
    data = tmp_path / "bad.jsonl"
    data.write_text('{"body": "a record without the text column"}\n')
    code = ev.cli_main([str(tmp_path / "sae"), "--dataset", str(data), "--max-tokens", "8"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.rstrip().replace("\r", "\n").splitlines()[-1]
    assert last.startswith("error: text column 'text' not found"), err[-300:]
    assert "evaluate:" in err  # the bar was shown, and is over before the error


def test_the_report_names_the_rule_that_chose_k():
    from hf_topafa.eval_report import format_report

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, activation="afa_band")).eval()
    metrics, _ = ev.evaluate_activations(sae, torch.randn(32, 16))
    report = format_report(metrics)
    assert "AFA band entry k" in report and "top-AFA" not in report
