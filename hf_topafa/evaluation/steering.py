"""Steering: generate from the language model with one SAE feature pushed, beside the plain text.

At the SAE's (layer, hook point) every position's activation a is replaced, in the SAE's input
space, by

- ``add``:   a + c · d_i           (the feature's decoder direction times a coefficient c);
- ``clamp``: a + (c − f_i(a)) · d_i (the feature set to the value c, the SAE's error kept),

where d_i = W_dec[i] mapped back through the SAE's input normalization (times the token's std
for ``layer_norm`` SAEs). Generation is greedy by default, so the only difference between the two
texts is the feature's effect; with ``temperature > 0`` both use the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import lm
from ..interop.sae_loading import lock_for as _lock_for
from ..sae.modeling_sae import SparseAutoencoder
from .text_analysis import language_model_for

MODES = ("add", "clamp")
MAX_NEW_TOKENS = 200


@dataclass
class Steered:
    """The prompt's continuation with and without the feature."""

    prompt: str
    steered: str
    unsteered: str
    feature: int
    coefficient: float
    mode: str


def _check(sae: SparseAutoencoder, feature, coefficient, mode, max_new_tokens, temperature):
    d_sae = sae.config.d_sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise ValueError(f"feature must be an int in 0..{d_sae - 1}; got {feature!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not isinstance(coefficient, int | float) or not torch.isfinite(torch.tensor(coefficient)):
        raise ValueError(f"coefficient must be a finite number; got {coefficient!r}")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(
            f"max_new_tokens must be an int in 1..{MAX_NEW_TOKENS}; got {max_new_tokens!r}"
        )
    if not isinstance(temperature, int | float) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy); got {temperature!r}")


def steering_fn(sae: SparseAutoencoder, feature: int, coefficient: float, mode: str = "add"):
    """The activation replacement ``a -> a'`` that ``lm.splice`` applies at the SAE's hook."""
    direction = sae.W_dec[feature].detach()

    @torch.no_grad()
    def fn(a: torch.Tensor) -> torch.Tensor:
        x = a.to(direction.dtype)
        _, _, std = sae.normalize_input(x)
        if mode == "add":
            amount = torch.full(x.shape[:-1] + (1,), float(coefficient), dtype=x.dtype)
        else:
            current = sae.encode(x)[..., feature : feature + 1]
            amount = float(coefficient) - current
        return (x + amount * std * direction).to(a.dtype)

    return fn


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, seed: int):
    """The prompt's continuation (new tokens only), greedy or sampled with a fixed seed."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"]
    ids = ids.to(next(model.parameters()).device)
    options = {"do_sample": False}
    if temperature > 0:
        torch.manual_seed(seed)
        options = {"do_sample": True, "temperature": float(temperature), "top_k": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        **options,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def steer(
    sae: SparseAutoencoder,
    feature: int,
    prompt: str,
    coefficient: float = 10.0,
    *,
    mode: str = "add",
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
    model=None,
    tokenizer=None,
) -> Steered:
    """Continue ``prompt`` twice, with ``feature`` steered at the SAE's hook and without.

    ``coefficient`` is in the units of the feature's activations: start near one or two times its
    ``max_activation`` in ``features.parquet`` (``hf-topafa features``); far beyond that (10 for
    a feature that peaks near 1) the text turns to gibberish in either mode.
    """
    _check(sae, feature, coefficient, mode, max_new_tokens, temperature)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text to continue")
    if model is None or tokenizer is None:
        model, tokenizer = language_model_for(sae)
    cfg = sae.config
    fn = steering_fn(sae, feature, coefficient, mode)
    # the hook sits on the shared model: one generation per model at a time
    with _lock_for(f"forward:{id(model)}"):
        plain = generate(model, tokenizer, prompt, max_new_tokens, temperature, seed)
        with lm.splice(model, cfg.layer, cfg.hook_point, fn):
            pushed = generate(model, tokenizer, prompt, max_new_tokens, temperature, seed)
    return Steered(prompt, pushed, plain, feature, float(coefficient), mode)
