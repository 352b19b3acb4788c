"""Configuration of the SAE family: one config class for top-AFA and every baseline."""

from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from ..helpers import is_positive_number, require_positive_int
from .rules import ACTIVATIONS, RULES
from .sae_settings import (
    INITS,
    INPUT_NORMALIZATIONS,
    LOSS_CONVENTIONS,
    SAESettings,
    check_sae_settings,
)

__all__ = ["ACTIVATIONS", "INITS", "INPUT_NORMALIZATIONS", "LOSS_CONVENTIONS", "SAEConfig"]


class SAEConfig(PretrainedConfig):
    """Sizes, activation rule, loss weights and provenance of a sparse autoencoder.

    Args:
        d_in: width of the activations the SAE reads (the language model's hidden size).
        d_sae: number of features. Left as None it is resolved to ``d_in * expansion_factor``.
        expansion_factor: used only to resolve ``d_sae`` when it is not given.
        activation: selection rule, a name in ``hf_topafa.rules.RULES`` (each entry says what the
            rule needs). ``"topafa"`` keeps, per token, the features whose cumulative
            decoder-scaled norm is nearest the input's norm (no k to tune); ``"topk"`` keeps the
            k largest per token; ``"batchtopk"`` keeps the ``k * batch`` largest across a batch
            (a learned threshold at inference); ``"relu"`` is a ReLU SAE trained with an L1
            penalty; ``"jumprelu"`` zeroes pre-activations below a learned per-feature threshold.
        k: features kept per token for the rules that need it (``topk`` and ``batchtopk``:
            ``Rule.needs_k``); for the other rules it is dropped (None), so that a config.json
            written before training refused it loads as it always did, without claiming a k.
        afa_coef: lambda_AFA, weight of the norm-matching loss, in the paper's units when
            ``loss_convention="paper"`` (see ``SAEOutput``). The paper uses it for top-AFA with
            lambda in {1/128 ... 1/16}; other activations may set it too (0 turns it off).
        aux_k: number of dead features the auxiliary loss may use to model the residual.
        aux_coef: weight of the aux-k loss (0 turns it off); the paper's ``aux_penalty`` is 1/32.
        dead_tokens_threshold: a feature that has not fired for this many training tokens is dead.
        l1_coef: weight of the L1 penalty for ``relu``: sum_i f_i ||W_dec,i|| per token, divided by
            the batch's mean ||x|| so that it is scale-free.
        l0_coef: weight of the L0 penalty (straight-through) for ``jumprelu``: the price of one
            active feature, in units of normalized MSE.
        jumprelu_init_threshold: initial threshold of every ``jumprelu`` feature.
        jumprelu_bandwidth: width of the rectangle kernel in the threshold's pseudo-gradient.
        batchtopk_threshold_momentum: EMA momentum of the inference threshold of ``batchtopk``.
        matryoshka_levels: Matryoshka training (Nabeshima 2024; Bussmann et al. 2025): the first
            d_sae/2, d_sae/4, ..., d_sae/2^levels features must also reconstruct the input on
            their own, and the reconstruction loss is the mean over these prefixes and the whole
            code. A hierarchy's general features then keep their own latents instead of being
            absorbed into specific ones. 0 (default) is off; inference is unchanged.
        input_normalization: ``"none"`` reads inputs as they are; ``"layer_norm"`` standardizes each
            token exactly as the paper's code does, ``(x - mean) / (std + 1e-5)`` with torch's
            unbiased std; ``"layer_norm_biased"`` is hf-topafa 0.1's standardization,
            ``(x - mean) / max(std_biased, 1e-6)``, kept so that SAEs saved by 0.1 behave as
            before. The SAE works in the standardized space; reconstructions are mapped back.
        loss_convention: ``"paper"`` (default) computes the loss as the paper's code does (see
            ``SAEOutput``): MSE as a mean over elements, the norm term as lambda times the mean over
            tokens of ``(||f|| - ||x_n||)^2`` with f the kept activations, aux-k as a mean over
            elements, each divided by the inputs' mean squared element when inputs are not
            standardized (1 when they are) so that coefficients keep their meaning at every scale.
            ``"hf_topafa_v0.1"`` is the 0.1 objective (every term over the batch's sum of
            ``||x||^2``, the norm term on ``||f~||`` with ``||b_dec||``, aux-k over the residual's
            norm), which weighs lambda_AFA d_in times less than the paper.
        encoder_bias: whether ``b_enc`` is trained. None: the rule's ``Rule.encoder_bias`` (False
            for topafa, topk and batchtopk, whose encoders in the paper have no bias; True for
            relu and jumprelu). ``b_enc`` is always part of
            the weights and always added (zero when untrained), so converted SAEs keep theirs.
        init: ``"kaiming"`` (the paper's): ``W_enc`` kaiming-uniform over [d_in, d_sae], ``W_dec`` its
            transpose with unit rows; ``"unit_tied"`` (hf-topafa 0.1): unit-norm Gaussian decoder
            rows and ``W_enc = W_dec^T``. Biases start at zero either way.
        base_model: model id the activations came from (provenance; used by evaluation and the Space).
        layer: block index the activations came from.
        hook_point: hook point inside that block (``resid_pre``, ``resid_post``, ``mlp_out``, ``attn_out``).
        dataset: dataset the SAE was trained on.
        context_length: context window used when harvesting the training activations.
    """

    model_type = "topafa_sae"

    def __init__(
        self,
        d_in: int = 576,
        d_sae: int | None = None,
        expansion_factor: float = 8,
        activation: str = "topafa",
        k: int | None = None,
        afa_coef: float = 1 / 32,
        aux_k: int = 512,
        aux_coef: float = 1 / 32,
        dead_tokens_threshold: int = 10_000_000,
        l1_coef: float = 0.05,
        l0_coef: float = 1e-3,
        jumprelu_init_threshold: float = 1e-3,
        jumprelu_bandwidth: float = 1e-3,
        batchtopk_threshold_momentum: float = 0.99,
        matryoshka_levels: int = 0,
        input_normalization: str = "none",
        loss_convention: str | None = None,
        encoder_bias: bool | None = None,
        init: str = "kaiming",
        base_model: str | None = None,
        layer: int | None = None,
        hook_point: str | None = None,
        dataset: str | None = None,
        context_length: int | None = None,
        **kwargs,
    ):
        self.d_in = d_in
        self.expansion_factor = expansion_factor
        if d_sae is None and is_positive_number(d_in) and is_positive_number(expansion_factor):
            d_sae = int(round(d_in * expansion_factor))
        self.d_sae = d_sae
        self.activation = activation
        self.k = k
        self.afa_coef = afa_coef
        self.aux_k = aux_k
        self.aux_coef = aux_coef
        self.dead_tokens_threshold = dead_tokens_threshold
        self.l1_coef = l1_coef
        self.l0_coef = l0_coef
        self.jumprelu_init_threshold = jumprelu_init_threshold
        self.jumprelu_bandwidth = jumprelu_bandwidth
        self.batchtopk_threshold_momentum = batchtopk_threshold_momentum
        self.matryoshka_levels = matryoshka_levels
        if loss_convention is None and "transformers_version" in kwargs:
            # A config.json written before these fields existed (hf-topafa 0.1): keep its meaning.
            loss_convention = "hf_topafa_v0.1"
            if input_normalization == "layer_norm":
                input_normalization = "layer_norm_biased"
            if encoder_bias is None:
                encoder_bias = True
            init = "unit_tied"
        self.input_normalization = input_normalization
        self.loss_convention = "paper" if loss_convention is None else loss_convention
        rule = RULES.get(activation) if isinstance(activation, str) else None
        if rule is not None and not rule.needs_k:
            self.k = None  # stored by runs from before training refused it; nothing reads it
        if encoder_bias is None:
            encoder_bias = rule.encoder_bias if rule is not None else True
        self.encoder_bias = encoder_bias
        self.init = init
        self.base_model = base_model
        self.layer = layer
        self.hook_point = hook_point
        self.dataset = dataset
        self.context_length = context_length
        super().__init__(**kwargs)
        self.validate()

    @classmethod
    def from_settings(cls, settings: SAESettings, *, d_in: int, **overrides) -> SAEConfig:
        """The config of an SAE trained with ``settings`` on ``d_in``-wide activations.

        ``overrides`` are the provenance (``base_model``, ``layer``, ``hook_point``, ``dataset``,
        ``context_length``) and any resolved setting, such as ``dead_tokens_threshold`` when the
        settings leave it to the batch size (None).
        """
        return cls(d_in=d_in, **{**dataclasses.asdict(settings), **overrides})

    @property
    def matryoshka_prefixes(self) -> list[int]:
        """The nested prefixes that Matryoshka training asks to reconstruct alone, smallest
        first (the whole code is not listed)."""
        return [self.d_sae >> level for level in range(self.matryoshka_levels, 0, -1)]

    def validate(self) -> None:
        """Raise a ValueError naming the first field that is out of range, and what is valid.

        The hyperparameters' ranges are ``check_sae_settings``'s, shared with training's
        ``SAESettings``; here d_in, d_sae and dead_tokens_threshold are required too.
        """
        require_positive_int("d_in", self.d_in)
        require_positive_int("d_sae", self.d_sae)
        require_positive_int("dead_tokens_threshold", self.dead_tokens_threshold)
        if not isinstance(self.encoder_bias, bool):
            raise ValueError(f"encoder_bias must be true or false; got {self.encoder_bias!r}")
        check_sae_settings(self)
        if self.layer is not None and not (isinstance(self.layer, int) and self.layer >= 0):
            raise ValueError(f"layer must be a non-negative integer or None; got {self.layer!r}")
