"""The activation-rule registry: every rule works end to end, and a rule added to the registry
alone is accepted by the config, the model, saved-folder checks, the model card and training."""

import subprocess
import sys

import pytest
import torch

from hf_topafa.interop.hub import render_model_card
from hf_topafa.sae import rules
from hf_topafa.sae.configuration_sae import ACTIVATIONS, SAEConfig
from hf_topafa.sae.modeling_sae import SparseAutoencoder
from hf_topafa.sae.saved import check_saved_sae
from hf_topafa.training.train_config import TrainConfig, build_parser


def _sae(name, **kwargs):
    torch.manual_seed(0)
    k = 4 if rules.RULES[name].needs_k else None
    return SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, activation=name, k=k, **kwargs))


def test_names_are_the_registry_everywhere():
    assert ACTIVATIONS == tuple(rules.RULES)
    assert ACTIVATIONS == (
        "topafa",
        "topk",
        "batchtopk",
        "relu",
        "jumprelu",
        "afa_band",
        "afa_universal",
        "afa_batch",
        "noise_floor",
        "afa_count",
        "afa_energy",
        "afa_mdl",
        "risk_inflation",
        "risk_pooled",
        "risk_floor",
        "risk_refit",
        "risk_calibrated",
        "risk_tail",
        "risk_balance",
        "risk_switch",
        "noise_batch",
        "risk_batch",
        "afa_kurtosis",
        "latent_noise",
    )
    assert rules.NEEDS_K == ("topk", "batchtopk")
    assert rules.ENCODER_BIAS == ("relu", "jumprelu")
    action = next(a for a in build_parser()._actions if a.dest == "activation")
    assert tuple(action.choices) == ACTIVATIONS
    with pytest.raises(ValueError, match="activation must be one of topafa, topk"):
        rules.get_rule("topkk")


def test_registry_imports_no_torch():
    code = "import sys, hf_topafa.rules; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_each_rule_round_trips(name, tmp_path):
    rule = rules.RULES[name]
    sae = _sae(name)
    assert sae.config.encoder_bias == rule.encoder_bias
    assert hasattr(sae, "threshold") == (rule.threshold is not None)
    if rule.threshold == "learned":
        assert isinstance(sae.threshold, torch.nn.Parameter)
    x = torch.randn(6, 8) * 3
    out = sae(x)
    out.loss.backward()
    assert (out.sparsity_loss != 0) == (rule.penalty is not None)
    assert (out.k is not None) == (rule.adaptive_k or name == "topk")
    sae.save_pretrained(tmp_path)
    check_saved_sae(str(tmp_path))
    loaded = SparseAutoencoder.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(x), sae.eval().encode(x))
    card = render_model_card(sae.config)
    assert f"{rule.display_name} SAE" in card and f"- {rule.card_tag}" in card
    assert rule.card_text.format(k=sae.config.k) in card
    if rule.penalty_name:
        assert f"{rule.penalty_name} (weight" in card
    if rule.needs_k:
        with pytest.raises(ValueError, match=f"k is required for activation='{name}'"):
            SAEConfig(d_in=8, d_sae=32, activation=name)
        with pytest.raises(ValueError, match="needs --k"):
            TrainConfig.from_flat(activation=name)
    else:
        TrainConfig.from_flat(activation=name)


def _keep_largest_two(sae, pre, x_n):
    """A toy k-free rule: the two largest pre-activations of each token."""
    values, index = pre.topk(2, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values), None


def test_a_rule_added_to_the_registry_alone_works_everywhere(monkeypatch, tmp_path):
    new = rules.Rule(
        name="top2",
        display_name="Top-2",
        card_tag="top-2",
        card_text="Two features per token.",
        select=_keep_largest_two,
    )
    monkeypatch.setitem(rules.RULES, "top2", new)
    sae = _sae("top2")
    assert sae.config.encoder_bias is False  # the Rule default
    x = torch.randn(5, 8)
    out = sae(x)
    # independent expectation: exactly the two largest ReLU pre-activations survive
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    expected = torch.zeros_like(pre)
    top = pre.topk(2, dim=-1)
    expected.scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(out.feature_acts, expected)
    sae.save_pretrained(tmp_path)
    check_saved_sae(str(tmp_path))
    assert "Top-2 SAE" in render_model_card(sae.config)
    TrainConfig.from_flat(activation="top2")


def test_inconsistent_rule_is_refused():
    with pytest.raises(ValueError, match="threshold and threshold_init go together"):
        rules.Rule("x", "X", "x", "x", _keep_largest_two, threshold="learned")


def test_afa_mdl_trains_as_band_entry_and_reads_by_risk_inflation():
    torch.manual_seed(3)
    x = torch.randn(64, 8)
    mdl = _sae("afa_mdl")
    band = _sae("afa_band")
    risk = _sae("risk_inflation")
    for other in (band, risk):
        other.load_state_dict(mdl.state_dict())
    mdl.train(), band.train()
    assert torch.equal(mdl(x).feature_acts, band(x).feature_acts)
    mdl.eval(), risk.eval()
    assert torch.equal(mdl(x).feature_acts, risk(x).feature_acts)
    assert not torch.equal(mdl(x).l0, band.eval()(x).l0)  # the two phases do differ here
