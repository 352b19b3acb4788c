"""Steering on a tiny random Llama: no effect at coefficient 0, a visible one when large."""

from __future__ import annotations

import pytest
import torch

from hf_topafa.data import lm
from hf_topafa.evaluation import steering as S
from hf_topafa.sae.configuration_sae import SAEConfig
from hf_topafa.sae.modeling_sae import SparseAutoencoder

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "the first world war was fought in the north of the"


@pytest.fixture(scope="module")
def sae(tiny_lm_dir):
    torch.manual_seed(2)
    cfg = SAEConfig(
        d_in=16, d_sae=24, activation="topk", k=4, input_normalization="layer_norm",
        base_model=str(tiny_lm_dir), layer=1, hook_point="resid_post",
    )  # fmt: skip
    return SparseAutoencoder(cfg).eval()


@pytest.fixture(scope="module")
def lm_pair(tiny_lm_dir):
    return lm.load_language_model(str(tiny_lm_dir))


def test_coefficient_zero_changes_nothing(sae):
    out = S.steer(sae, 3, PROMPT, 0.0, max_new_tokens=12)
    assert out.steered == out.unsteered
    assert len(out.unsteered.split()) >= 6


def test_large_coefficient_changes_the_text(sae):
    out = S.steer(sae, 3, PROMPT, 200.0, max_new_tokens=12)
    assert out.steered != out.unsteered
    plain = S.steer(sae, 3, PROMPT, 0.0, max_new_tokens=12).unsteered
    assert out.unsteered == plain  # the hook is gone after steering


def test_clamp_mode_and_sampling(sae):
    clamped = S.steer(sae, 5, PROMPT, 500.0, mode="clamp", max_new_tokens=12)
    assert clamped.steered != clamped.unsteered
    a = S.steer(sae, 5, PROMPT, 0.0, max_new_tokens=12, temperature=1.0, seed=4)
    assert a.steered == a.unsteered  # same seed, no push: same sample


def test_add_moves_the_activation_along_the_decoder_direction(sae, lm_pair):
    model, tokenizer = lm_pair
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    a = lm.truncated_forward(model, ids, 1, "resid_post")[0]
    moved = S.steering_fn(sae, 7, 3.0, "add")(a)
    std = a.std(-1, keepdim=True)
    assert torch.allclose(moved - a, 3.0 * std * sae.W_dec[7].detach(), atol=1e-5)
    with torch.no_grad():
        before = sae.encode(a)[:, 9]
        clamped = sae.encode(S.steering_fn(sae, 9, 0.0, "clamp")(a))[:, 9]
    assert (before > 0).any() and clamped.abs().max() < before.max()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"feature": 24}, r"0\.\.23"),
        ({"mode": "scale"}, "add, clamp"),
        ({"coefficient": float("nan")}, "finite"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"prompt": "  "}, "prompt is empty"),
    ],
)
def test_bad_input_is_one_clear_error(sae, kwargs, message):
    args = {"feature": 1, "prompt": PROMPT, "coefficient": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        S.steer(sae, **args)
