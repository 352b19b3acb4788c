"""A trained dictionary read by another rule (`sae.reading`, `hf-topafa evaluate --read-with`)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.sae.reading import parse_reading, read_with


def test_a_reading_names_a_rule_with_its_k_or_a_fixed_level():
    assert parse_reading("risk_batch") == ("risk_batch", None, None)
    assert parse_reading("topk:16") == ("topk", 16, None)
    assert parse_reading("afa_batch@1.75") == ("afa_batch", None, 1.75)
    for spec, words in (
        ("nope", "activation must be one of"),
        ("topk", "topk needs a positive k"),
        ("topk:0", "topk needs a positive k"),
        ("topk:x", "invalid literal"),
        ("risk_batch:4", "risk_batch takes no k"),
        ("topk:4@2", "no estimated threshold"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_reading(spec)


def test_the_weights_stay_as_trained_and_only_the_selection_changes():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, activation="topk", k=4)).eval()
    x = torch.randn(512, 16)
    wider = read_with(sae, "topk:8")
    assert torch.equal(wider.W_enc, sae.W_enc) and torch.equal(wider.W_dec, sae.W_dec)
    assert sae.config.k == 4 and wider.config.k == 8 and not wider.training
    with torch.no_grad():
        assert set(wider(x).l0.tolist()) == {8}
        assert set(sae(x).l0.tolist()) == {4}  # the original is untouched
        k_free = read_with(sae, "risk_batch")(x)
    assert k_free.l0.float().std() > 0  # a per-token count, no k
    fixed = read_with(sae, "afa_batch@1.75")
    assert fixed.threshold.eq(1.75).all()


def test_evaluate_reads_a_saved_topk_dictionary_with_another_rule(tmp_path):
    from hf_topafa.cli import cli

    torch.manual_seed(0)
    meta = {"layer": 2, "hook_point": "resid_post", "context_length": 64}
    SparseAutoencoder(
        SAEConfig(d_in=576, d_sae=256, activation="topk", k=8, **meta)
    ).save_pretrained(tmp_path / "sae")
    out = tmp_path / "read.json"
    argv = ["evaluate", str(tmp_path / "sae"), "--max-tokens", "63", "--holdout", "none",
            "--no-downstream", "--no-progress", "--read-with", "topk:3", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["label"] == "sae read by topk:3"
    assert metrics["sparsity"]["l0_mean"] == pytest.approx(3.0)
    assert metrics["config"]["read_with"] == "topk:3"


def test_a_bad_reading_is_one_line_before_anything_loads(capsys):
    from hf_topafa.cli import cli

    assert cli.main(["evaluate", "somewhere", "--read-with", "risk_batch:4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "risk_batch takes no k" in err
