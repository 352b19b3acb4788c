"""Configuration of the SAE family: one config class for top-AFA and every baseline."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

ACTIVATIONS = ("topafa", "topk", "batchtopk", "relu", "jumprelu")
INPUT_NORMALIZATIONS = ("none", "layer_norm")


class SAEConfig(PretrainedConfig):
    """Sizes, activation rule, loss weights and provenance of a sparse autoencoder.

    Args:
        d_in: width of the activations the SAE reads (the language model's hidden size).
        d_sae: number of features. Left as None it is resolved to ``d_in * expansion_factor``.
        expansion_factor: used only to resolve ``d_sae`` when it is not given.
        activation: selection rule. ``"topafa"`` keeps, per token, the features whose cumulative
            decoder-scaled norm is nearest the input's norm (no k to tune); ``"topk"`` keeps the k
            largest per token; ``"batchtopk"`` keeps the ``k * batch`` largest across a batch
            (a learned threshold at inference); ``"relu"`` is a ReLU SAE trained with an L1 penalty;
            ``"jumprelu"`` zeroes pre-activations below a learned per-feature threshold.
        k: features kept per token for ``topk`` and ``batchtopk`` (required there, ignored elsewhere).
        afa_coef: lambda_AFA, weight of the norm-matching loss ``(||f~|| - ||x||)^2``. The paper uses
            it for top-AFA; other activations may set it too (0 turns it off).
        aux_k: number of dead features the auxiliary loss may use to model the residual.
        aux_coef: weight of the aux-k loss (0 turns it off).
        dead_tokens_threshold: a feature that has not fired for this many training tokens is dead.
        l1_coef: weight of the L1 penalty for ``relu``: sum_i f_i ||W_dec,i|| per token, divided by
            the batch's mean ||x|| so that it is scale-free.
        l0_coef: weight of the L0 penalty (straight-through) for ``jumprelu``: the price of one
            active feature, in units of normalized MSE.
        jumprelu_init_threshold: initial threshold of every ``jumprelu`` feature.
        jumprelu_bandwidth: width of the rectangle kernel in the threshold's pseudo-gradient.
        batchtopk_threshold_momentum: EMA momentum of the inference threshold of ``batchtopk``.
        input_normalization: ``"none"`` reads inputs as they are; ``"layer_norm"`` standardizes each
            token (zero mean, unit variance), as the paper does. The SAE then works in that space.
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
        input_normalization: str = "none",
        base_model: str | None = None,
        layer: int | None = None,
        hook_point: str | None = None,
        dataset: str | None = None,
        context_length: int | None = None,
        **kwargs,
    ):
        self.d_in = d_in
        self.expansion_factor = expansion_factor
        if d_sae is None and _is_positive_number(d_in) and _is_positive_number(expansion_factor):
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
        self.input_normalization = input_normalization
        self.base_model = base_model
        self.layer = layer
        self.hook_point = hook_point
        self.dataset = dataset
        self.context_length = context_length
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first field that is out of range, and what is valid."""
        _require_positive_int("d_in", self.d_in)
        _require_positive_int("d_sae", self.d_sae)
        if not _is_positive_number(self.expansion_factor):
            raise ValueError(
                f"expansion_factor must be a positive number, got {self.expansion_factor!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}"
            )
        if self.activation in ("topk", "batchtopk"):
            if self.k is None:
                raise ValueError(
                    f"k is required for activation={self.activation!r}: "
                    f"an integer between 1 and d_sae={self.d_sae}"
                )
            _require_positive_int("k", self.k)
            if self.k > self.d_sae:
                raise ValueError(f"k must be at most d_sae={self.d_sae}; got {self.k}")
        elif self.k is not None:
            _require_positive_int("k", self.k)
        _require_positive_int("aux_k", self.aux_k)
        _require_positive_int("dead_tokens_threshold", self.dead_tokens_threshold)
        for name in ("afa_coef", "aux_coef", "l1_coef", "l0_coef"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
            if not _is_positive_number(getattr(self, name)):
                raise ValueError(f"{name} must be a positive number; got {getattr(self, name)!r}")
        momentum = self.batchtopk_threshold_momentum
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise ValueError(f"batchtopk_threshold_momentum must be in [0, 1); got {momentum!r}")
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"input_normalization must be one of {', '.join(INPUT_NORMALIZATIONS)}; "
                f"got {self.input_normalization!r}"
            )
        if self.layer is not None and not (isinstance(self.layer, int) and self.layer >= 0):
            raise ValueError(f"layer must be a non-negative integer or None; got {self.layer!r}")


def _is_positive_number(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _require_positive_int(name: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
