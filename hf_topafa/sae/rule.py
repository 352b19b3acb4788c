"""``Rule``: everything the package needs to know about one activation rule (its name, what it
needs, how it is shown, how it selects). The registry of rules is ``rules.RULES``. Imports no
torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

THRESHOLD_KINDS = (None, "learned", "estimated")


@dataclass(frozen=True)
class Rule:
    """One activation rule: what it needs, how it is shown, and how it selects features."""

    name: str
    """The ``SAEConfig.activation`` value (also ``--activation``)."""
    display_name: str
    """Its name in prose and card titles ("Top-AFA")."""
    card_tag: str
    """Its Hub tag on model cards ("top-afa")."""
    card_text: str
    """One paragraph for the model card; ``{k}`` is replaced by ``config.k``."""
    select: Callable[[Any, Any, Any], tuple[Any, Any]]
    """Dense selection ``(sae, pre, x_n) -> (acts, k or None)``."""
    ground_truth: str = ""
    """What ground truth (SynthSAEBench, known features; results/synthbench) showed about the
    rule, said plainly on its model cards; empty where nothing was measured."""
    needs_k: bool = False
    """Whether ``k`` (features kept per token) must be given."""
    adaptive_k: bool = False
    """Whether ``k`` is chosen per token (evaluation reports its distribution)."""
    threshold: Literal[None, "learned", "estimated"] = None
    """A per-feature ``threshold`` tensor: trained (``nn.Parameter``), estimated during training
    (a buffer), or none."""
    threshold_init: Callable[[Any], float] | None = None
    """The threshold's starting value from the config."""
    threshold_power: int = 1
    """How the threshold scales with the input: 1 for an activation level, 2 for an energy
    (``afa_count``); a fold of the input's scale by s divides the threshold by s ** power."""
    encoder_bias: bool = False
    """Default of ``SAEConfig.encoder_bias`` (the paper's k-selecting encoders have none)."""
    afa_loss: bool = True
    """Whether the paper trains this rule with its AFA norm loss (its comparison gives the rules
    that need k ``afa_coef = 0``). ``SAEConfig.afa_coef`` defaults to 1/32 for every rule."""
    penalty: Callable[[Any, Any, Any, Any, float], Any] | None = None
    """Sparsity penalty ``(sae, pre, acts, x_n, coef) -> coef * loss``; called when coef > 0."""
    penalty_coef: str | None = None
    """The SAEConfig field weighing the penalty (0 turns it off)."""
    penalty_name: str | None = None
    """The penalty on model cards ("L1")."""
    select_pairs: Callable[[Any, Any, Any], tuple[Any, Any, Any]] | None = None
    """Sparse selection ``(sae, pre, x_n) -> (rows, cols, k or None)``; None: dense path only."""
    kept_per_token: Callable[[Any], int] | None = None
    """Expected features kept per token (decides whether the sparse path pays)."""
    observe: Callable[[Any, Any, Any], None] | None = None
    """``(sae, raw, x_n)``, called while training with the encoder's product before the ReLU
    [N, d_sae] (no autograd) and its input [N, d_in], ahead of the selection: for a rule that
    estimates from the negative half too (latent_noise, afa_energy), without a second product."""
    options: tuple[str, ...] = ()
    """The SAEConfig fields of ``RULE_OPTIONS`` that this rule reads; training refuses the
    others for it, since they would do nothing."""

    def __post_init__(self):
        if self.threshold not in THRESHOLD_KINDS:
            raise ValueError(f"rule {self.name}: threshold must be one of {THRESHOLD_KINDS}")
        if (self.threshold is None) != (self.threshold_init is None):
            raise ValueError(f"rule {self.name}: threshold and threshold_init go together")
        if not (self.penalty is None) == (self.penalty_coef is None) == (self.penalty_name is None):
            raise ValueError(
                f"rule {self.name}: penalty, penalty_coef and penalty_name go together"
            )
        if (self.select_pairs is None) != (self.kept_per_token is None):
            raise ValueError(f"rule {self.name}: select_pairs and kept_per_token go together")
        if self.needs_k != ("k" in self.options):
            raise ValueError(f"rule {self.name}: needs_k and options=('k', ...) go together")
        if self.penalty_coef is not None and self.penalty_coef not in self.options:
            raise ValueError(f"rule {self.name}: options must name penalty_coef")

    @property
    def sparse_path(self) -> bool:
        """Whether the model may take the sparse (row-gather) route for this rule."""
        return self.select_pairs is not None
