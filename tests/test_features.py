"""Feature browser data on a tiny random Llama: top-N against brute force, reproducible examples,
logit effects, statistics, files and the command line."""

from __future__ import annotations

import pytest
import torch

from hf_topafa.cli import main as cli
from hf_topafa.data import lm
from hf_topafa.data.harvest import HarvestConfig, Harvester
from hf_topafa.evaluation import features as F
from hf_topafa.sae import afa
from hf_topafa.sae.configuration_sae import SAEConfig
from hf_topafa.sae.modeling_sae import SparseAutoencoder

pytestmark = pytest.mark.usefixtures("one_thread")

CTX = 16
TOKENS = 600
TOP = 5


def make_sae(lm_dir, activation="topk", **extra) -> SparseAutoencoder:
    torch.manual_seed(1)
    cfg = SAEConfig(
        d_in=16, d_sae=24, activation=activation, base_model=str(lm_dir), layer=1,
        hook_point="resid_post", input_normalization="layer_norm",
        **({"k": 4} if activation == "topk" else {}), **extra,
    )  # fmt: skip
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def harvest_cfg(tiny_lm_dir):
    return HarvestConfig(
        model=str(tiny_lm_dir), layer=1, context_length=CTX, batch_windows=3, max_tokens=TOKENS
    )


@pytest.fixture(scope="module")
def sae(tiny_lm_dir):
    return make_sae(tiny_lm_dir)


@pytest.fixture(scope="module")
def collected(sae, harvest_cfg):
    return F.collect_features(sae, harvest_cfg, top=TOP, logits=3, progress=False)


@pytest.fixture(scope="module")
def brute(sae, harvest_cfg):
    """Every harvested token's activations at once, O(tokens * d_sae): the reference."""
    chunks = list(Harvester(harvest_cfg).iter_with_tokens(progress=False))
    x = torch.cat([c.acts for c in chunks])
    with torch.no_grad():
        acts = sae.encode(x)
    windows = torch.cat([c.window_ids for c in chunks])
    positions = torch.cat([c.positions for c in chunks])
    return x, acts, windows, positions


def test_top_n_matches_brute_force(collected, brute):
    examples, _ = collected
    _, acts, windows, positions = brute
    assert acts.shape[0] == TOKENS
    for j in range(acts.shape[1]):
        mine = [i for i, f in enumerate(examples["feature"]) if f == j]
        col = acts[:, j]
        order = torch.argsort(col, descending=True, stable=True)
        expected = [int(r) for r in order[:TOP] if col[r] > 0]
        assert [examples["rank"][i] for i in mine] == list(range(1, len(expected) + 1))
        got = torch.tensor([examples["activation"][i] for i in mine])
        assert torch.allclose(got, col[expected], rtol=1e-5, atol=1e-6), j
        got_sites = {(examples["window"][i], examples["position"][i]) for i in mine}
        want_sites = {(int(windows[r]), int(positions[r])) for r in expected}
        assert got_sites == want_sites, j


def test_statistics_match_brute_force(collected, brute, sae):
    _, feats = collected
    x, acts, _, _ = brute
    fired = acts > 0
    assert torch.allclose(torch.tensor(feats["density"]).float(), fired.float().mean(0))
    counts = fired.sum(0)
    assert bool((counts > 0).all()), "the test needs every feature to fire"
    mean = acts.sum(0) / counts
    assert torch.allclose(torch.tensor(feats["mean_activation"]).float(), mean, rtol=1e-5)
    assert torch.allclose(torch.tensor(feats["max_activation"]).float(), acts.max(0).values)
    diag = afa.zf_diagnostics(sae, x)
    for j in (0, 7, 23):
        on = fired[:, j]
        eps = diag["eps_lbo"][on].double().mean().item()
        assert feats["eps_lbo_mean"][j] == pytest.approx(eps, rel=1e-5)
        for b in afa.EPS_H_BANDS:
            over = (diag[f"class_{b}"][on] == afa.OVER).double().mean().item()
            under = (diag[f"class_{b}"][on] == afa.UNDER).double().mean().item()
            assert feats[f"over_share_{b}"][j] == pytest.approx(over)
            assert feats[f"under_share_{b}"][j] == pytest.approx(under)
        assert sum(feats["histogram_counts"][j]) == int(counts[j])
        edges = feats["histogram_edges"][j]
        assert edges[0] <= float(acts[on, j].min()) and float(acts[on, j].max()) <= edges[-1]


def test_example_reproduces_from_its_token_ids(collected, sae, harvest_cfg):
    """The LM on token_ids alone gives the activation at position, and the whole trace."""
    examples, _ = collected
    model, _ = lm.load_language_model(harvest_cfg.model)
    checked = 0
    for i in range(0, len(examples["feature"]), 7):
        ids = torch.tensor(examples["token_ids"][i])
        assert len(ids) == CTX
        a = lm.truncated_forward(model, ids[None], 1, "resid_post")[0]
        with torch.no_grad():
            f = sae.encode(a)[:, examples["feature"][i]]
        pos = examples["position"][i]
        assert f[pos].item() == pytest.approx(examples["activation"][i], rel=1e-4, abs=1e-6)
        trace = torch.tensor(examples["activations"][i])
        assert trace[pos].item() == pytest.approx(examples["activation"][i], rel=1e-6)
        kept = torch.arange(CTX) > 0  # the harvester skips each window's first token
        assert torch.allclose(trace[kept], f[kept], rtol=1e-4, atol=1e-6)
        assert trace[0] == 0
        checked += 1
    assert checked > 10


def test_tokens_are_the_decoded_ids(collected, harvest_cfg):
    examples, _ = collected
    _, tokenizer = lm.load_language_model(harvest_cfg.model)
    ids, tokens = examples["token_ids"][0], examples["tokens"][0]
    assert tokens == [tokenizer.decode([i]) for i in ids]


def test_logit_effects_are_decoder_times_unembedding(collected, sae, harvest_cfg):
    _, feats = collected
    model, tokenizer = lm.load_language_model(harvest_cfg.model)
    scores = sae.W_dec.detach() @ model.get_output_embeddings().weight.detach().T
    for j in (0, 5):
        top = scores[j].topk(3).indices.tolist()
        bottom = (-scores[j]).topk(3).indices.tolist()
        assert feats["top_logit_ids"][j] == top
        assert feats["bottom_logit_ids"][j] == bottom
        assert feats["top_logits"][j] == [tokenizer.decode([i]) for i in top]
        assert feats["top_logit_values"][j] == pytest.approx(scores[j, top].tolist(), rel=1e-5)


def test_files_load_with_datasets(tmp_path, sae, harvest_cfg):
    import datasets

    paths = F.write_features(sae, harvest_cfg, tmp_path, top=TOP, logits=3, progress=False)
    assert [p.name for p in paths] == ["examples.parquet", "features.parquet"]
    ex = datasets.load_dataset("parquet", data_files=str(paths[0]), split="train")
    ft = datasets.load_dataset("parquet", data_files=str(paths[1]), split="train")
    for name in ("feature", "rank", "activation", "position", "token_ids", "tokens", "activations"):
        assert name in ex.column_names
    for name in ("feature", "density", "max_activation", "mean_activation", "top_logits",
                 "bottom_logits", "eps_lbo_mean", "over_share_0.25", "under_share_0.25",
                 "histogram_edges", "histogram_counts"):  # fmt: skip
        assert name in ft.column_names
    assert len(ft) == sae.config.d_sae
    assert len(ex) <= TOP * sae.config.d_sae and min(ex["rank"]) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # no leftovers of the atomic write


def test_relu_sae_and_never_firing_features(tiny_lm_dir, harvest_cfg):
    sae = make_sae(tiny_lm_dir, activation="relu")
    with torch.no_grad():
        sae.b_enc[3] = -1e6  # feature 3 can never fire
    examples, feats = F.collect_features(sae, harvest_cfg, top=2, logits=2, progress=False)
    assert 3 not in examples["feature"]
    assert feats["density"][3] == 0 and feats["max_activation"][3] == 0
    assert feats["eps_lbo_mean"][3] is None and feats["histogram_counts"][3] == []


def test_cli_writes_files_and_rejects_bad_input(tmp_path, tiny_lm_dir, sae, capsys):
    run = tmp_path / "run"
    sae.save_pretrained(run)
    out = tmp_path / "feats"
    args = ["features", str(run), "--max-tokens", "200", "--context-length", "16"]
    assert cli([*args, "--top", "3", "--output", str(out)]) == 0
    assert (out / "examples.parquet").is_file() and (out / "features.parquet").is_file()
    assert "wrote" in capsys.readouterr().out
    assert cli([*args, "--top", "0", "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith(
        "error: hf-topafa features: top must be a positive int"
    )
    assert cli(["features", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "SAE not found" in capsys.readouterr().err
