"""The SAE's own hyperparameters as a torch-free dataclass, and their one validation.

``SAESettings`` is the ``sae`` section of a training configuration and the source of
``SAEConfig.from_settings``; ``check_sae_settings`` is the validation both use, so that each
range is written once. Kept free of torch and transformers (``SAEConfig`` is a
``PretrainedConfig``, whose import loads torch), so that ``hf-topafa train`` can check its flags
before the training code loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..cli.cli_args import arg as _arg
from ..helpers import (
    is_positive_number,
    require_nonnegative_number,
    require_positive_int,
    require_positive_number,
)
from . import rules
from .rules import ACTIVATIONS, get_rule

INPUT_NORMALIZATIONS = ("none", "layer_norm", "layer_norm_biased")
LOSS_CONVENTIONS = ("paper", "hf_topafa_v0.1")
INITS = ("kaiming", "unit_tied")


@dataclass
class SAESettings:
    """The SAE's hyperparameters, with the defaults of a training run.

    The fields are ``SAEConfig``'s (see its docstring for their meaning) without ``d_in`` and the
    provenance, which training takes from the data. Three defaults differ from ``SAEConfig``'s on
    purpose: ``input_normalization`` is ``"layer_norm"`` (the paper's standardization; a bare
    ``SAEConfig`` reads inputs as they are), ``dead_tokens_threshold`` is None, meaning five
    training batches (resolved by ``TrainConfig.resolved_dead_threshold``), and ``d_sae`` is None,
    meaning ``d_in * expansion_factor`` once ``d_in`` is known.
    """

    _argument_group_name = "the SAE"  # a heading of `hf-topafa train --help`

    activation: str = _arg("topafa", "Sparse activation rule.", choices=ACTIVATIONS)
    expansion_factor: float = _arg(
        8.0, "d_sae = d_in * expansion_factor when --d-sae is not given."
    )
    d_sae: int | None = _arg(None, "Number of features.")
    k: int | None = _arg(
        None, f"Features kept per token (required for {' and '.join(rules.NEEDS_K)})."
    )
    afa_coef: float = _arg(1 / 32, "lambda_AFA: weight of the norm-matching loss.")
    aux_k: int = _arg(512, "Dead features the aux-k loss may use.")
    aux_coef: float = _arg(1 / 32, "Weight of the aux-k loss.")
    dead_tokens_threshold: int | None = _arg(
        None,
        "A feature silent for this many training tokens is dead; default: 5 batches "
        "(the paper's n_batches_to_dead = 5).",
    )
    l1_coef: float = _arg(0.05, "L1 weight (relu).")
    l0_coef: float = _arg(1e-3, "L0 weight (jumprelu).")
    jumprelu_init_threshold: float = _arg(1e-3, "Initial JumpReLU threshold.")
    jumprelu_bandwidth: float = _arg(1e-3, "JumpReLU pseudo-gradient bandwidth.")
    input_normalization: Literal["none", "layer_norm", "layer_norm_biased"] = _arg(
        "layer_norm",
        "layer_norm: standardize each token as the paper does, (x - mean) / (std + 1e-5) with the "
        "unbiased std; none: raw activations; layer_norm_biased: hf-topafa 0.1's standardization.",
    )
    loss_convention: Literal["paper", "hf_topafa_v0.1"] = _arg(
        "paper",
        "paper: the published loss (means over elements and tokens, lambda_AFA in the paper's "
        "units); hf_topafa_v0.1: the 0.1 objective, normalized by the batch's sum of ||x||^2.",
    )
    encoder_bias: bool | None = _arg(
        None,
        f"Train an encoder bias, or not (--no-encoder-bias); default: yes for "
        f"{'/'.join(rules.ENCODER_BIAS)}, no else (the paper's k-selecting encoders have none).",
    )
    init: Literal["kaiming", "unit_tied"] = _arg(
        "kaiming",
        "kaiming: the paper's kaiming-uniform W_enc with W_dec its transpose (unit rows); "
        "unit_tied: hf-topafa 0.1's unit-norm Gaussian decoder, encoder tied to it.",
    )
    batchtopk_threshold_momentum: float = _arg(
        0.99, "EMA momentum of BatchTopK's inference threshold."
    )
    matryoshka_levels: int = _arg(
        0,
        "Matryoshka training: the first d_sae/2, d_sae/4, ... (this many) features must also "
        "reconstruct the input alone, so general features are not absorbed by specific ones; "
        "0: off. Any rule.",
    )

    def __post_init__(self):
        check_sae_settings(self)
        check_rule_options(self)


def check_rule_options(s: SAESettings) -> None:
    """Refuse a rule-specific option set (away from its default) for a rule that does not read
    it: ``--k 32`` with top-AFA would do nothing but be recorded. Training's check only: a saved
    SAEConfig may carry such a value (``SAEConfig`` drops a stored k its rule has no use for)."""
    rule = get_rule(s.activation)
    defaults = {f.name: f.default for f in dataclasses.fields(SAESettings)}
    for name in rules.RULE_OPTIONS:
        if name in rule.options or getattr(s, name) == defaults[name]:
            continue
        users = rules.rules_reading(name)
        raise ValueError(
            f"--{name.replace('_', '-')} {getattr(s, name)} does not apply to activation "
            f"{s.activation!r}: only {' and '.join(users)} read{'s' if len(users) == 1 else ''} "
            "it; leave it out"
        )


def check_sae_settings(s) -> None:
    """Raise a ValueError naming the first hyperparameter of ``s`` (an ``SAESettings`` or an
    ``SAEConfig``) that is out of range, and what is valid.

    ``d_sae``, ``dead_tokens_threshold`` and ``encoder_bias`` may be None (resolved later);
    ``SAEConfig.validate`` requires the first two itself.
    """
    rule = get_rule(s.activation)
    if not is_positive_number(s.expansion_factor):
        raise ValueError(f"expansion_factor must be a positive number, got {s.expansion_factor!r}")
    if s.d_sae is not None:
        require_positive_int("d_sae", s.d_sae)
    if rule.needs_k and s.k is None:
        most = "d_sae" if s.d_sae is None else f"d_sae={s.d_sae}"
        raise ValueError(
            f"k is required for activation={s.activation!r}: an integer between 1 and {most} "
            f"(features kept per token; hf-topafa train: --activation {s.activation} needs --k, "
            "e.g. --k 32)"
        )
    if s.k is not None:
        require_positive_int("k", s.k)
        if rule.needs_k and s.d_sae is not None and s.k > s.d_sae:
            raise ValueError(f"k must be at most d_sae={s.d_sae}; got {s.k}")
    require_positive_int("aux_k", s.aux_k)
    if s.dead_tokens_threshold is not None:
        require_positive_int("dead_tokens_threshold", s.dead_tokens_threshold)
    for name in ("afa_coef", "aux_coef", "l1_coef", "l0_coef"):
        require_nonnegative_number(name, getattr(s, name))
    for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
        require_positive_number(name, getattr(s, name))
    levels = s.matryoshka_levels
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"matryoshka_levels must be an integer >= 0; got {levels!r}")
    if levels and s.d_sae is not None and s.d_sae >> levels < 1:
        raise ValueError(
            f"matryoshka_levels={levels} halves d_sae={s.d_sae} below one feature; at most "
            f"{s.d_sae.bit_length() - 1}"
        )
    momentum = s.batchtopk_threshold_momentum
    if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
        raise ValueError(f"batchtopk_threshold_momentum must be in [0, 1); got {momentum!r}")
    for name, valid in (
        ("input_normalization", INPUT_NORMALIZATIONS),
        ("loss_convention", LOSS_CONVENTIONS),
        ("init", INITS),
    ):
        if getattr(s, name) not in valid:
            raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(s, name)!r}")
    if s.encoder_bias is not None and not isinstance(s.encoder_bias, bool):
        raise ValueError(f"encoder_bias must be true or false; got {s.encoder_bias!r}")
