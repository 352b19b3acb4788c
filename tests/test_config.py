import pytest
from transformers import AutoConfig

from hf_topafa import ACTIVATIONS, SAEConfig


def test_d_sae_resolved_from_expansion_factor():
    assert SAEConfig(d_in=576, expansion_factor=8).d_sae == 4608
    assert SAEConfig(d_in=576, d_sae=1000, expansion_factor=8).d_sae == 1000


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(activation="gelu"), "activation"),
        (dict(activation="topk"), "k is required"),
        (dict(activation="batchtopk"), "k is required"),
        (dict(activation="topk", k=0), "k must be a positive integer"),
        (dict(activation="topk", k=10_000, d_sae=64), "k must be at most"),
        (dict(d_in=0), "d_in"),
        (dict(d_in=-3), "d_in"),
        (dict(d_sae=0), "d_sae"),
        (dict(expansion_factor=0, d_sae=None), "d_sae"),
        (dict(input_normalization="rms"), "input_normalization"),
        (dict(afa_coef=-1.0), "afa_coef"),
        (dict(aux_k=0), "aux_k"),
        (dict(layer=-1), "layer"),
        (dict(jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SAEConfig(**kwargs)


def test_error_lists_valid_activations():
    with pytest.raises(ValueError) as err:
        SAEConfig(activation="gelu")
    for name in ACTIVATIONS:
        assert name in str(err.value)


def test_round_trip_through_auto_config(tmp_path):
    cfg = SAEConfig(
        d_in=32, d_sae=128, activation="topk", k=8, base_model="m", layer=3, hook_point="resid_post"
    )
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SAEConfig)
    assert (loaded.d_in, loaded.d_sae, loaded.activation, loaded.k, loaded.layer) == (
        32,
        128,
        "topk",
        8,
        3,
    )
    assert loaded.base_model == "m" and loaded.hook_point == "resid_post"
