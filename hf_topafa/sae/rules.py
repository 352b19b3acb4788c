"""The activation rules of the SAE family, one registry entry each.

A ``Rule`` says everything the rest of the package needs to know about a selection rule: its
name, whether it needs ``k``, what threshold it keeps, whether it has a sparse fast path, whether
its encoder has a bias and the paper trains it with the AFA norm loss, its sparsity penalty, the
text of model cards, and the functions that apply it. ``SAEConfig`` validation, the training
flags, the model, saved-folder checks, conversion, evaluation and the model card all read this
table, so adding a rule touches this file only (and ``findings.py`` once ground truth has
measured it).

The module imports no torch (the command line validates names with it before loading torch);
the apply functions import ``activations`` when they first run.

How to add a rule
-----------------
1. Write its selection below as ``_name_select(sae, pre, x_n) -> (acts, k)``: ``pre`` is the
   ReLU pre-activation [N, d_sae], ``x_n`` the SAE's (normalized) input [N, d_in], ``acts`` the
   dense activations [N, d_sae] (zeros where inactive) and ``k`` a long tensor [N] of features
   kept per token, or None. Gradients must flow into the kept pre-activations. Put new tensor
   math in ``activations.py`` only if it is shared; a rule's own arithmetic can live here (a
   k-free rule's in ``kfree.py``, adapted to this signature in ``kfree_rules.py``).
2. Append ``Rule(name=..., display_name=..., card_tag=..., card_text=..., select=...)`` to
   ``RULES``, setting the fields whose defaults do not fit (a k-free rule with no threshold,
   no penalty and no sparse path needs nothing more). ``card_text`` may use ``{k}``.
3. Optional: a sparse path (``select_pairs`` returning (rows, cols, k) sorted by token, plus
   ``kept_per_token`` estimating the kept count), an ``observe`` hook that sees the encoder's
   product before the ReLU while training, a threshold (``threshold="learned"`` is an
   ``nn.Parameter`` named ``threshold``, ``"estimated"`` a buffer; ``threshold_init`` gives its
   starting value) or a penalty (``penalty`` returns the weighted loss, ``penalty_coef`` names
   the SAEConfig field that weighs it). A new hyperparameter is a new SAEConfig argument and
   the same field of ``SAESettings`` (training's ``sae`` section, whose fields are the flags);
   one that only some rules read goes in ``RULE_OPTIONS`` and in those rules' ``options``.
Then run ``pytest tests/test_rules.py``: it checks every registered rule end to end (config,
forward, backward, save and load, model card, training flag).
"""

from __future__ import annotations

from . import kfree_rules
from .findings import GROUND_TRUTH
from .kfree_rules import topafa_target
from .rule import Rule


def _ops():
    from . import activations

    return activations


def _k_tensor(sae, pre):
    import torch

    return torch.full(pre.shape[:1], sae.config.k, dtype=torch.long, device=pre.device)


# -- top-AFA ---------------------------------------------------------------------------------


def _topafa_select(sae, pre, x_n):
    import torch

    decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    target = topafa_target(sae, x_n)
    acts, k = _ops().topafa(pre, decoder_norms, target, sae._topafa_candidates)
    sae._adapt_topafa_candidates(k)
    return acts, k


def _topafa_kept(sae):
    """Features a token keeps on average under top-AFA or a ranked kfree rule: the last batch's
    mean k (the candidate count, which covers the batch's largest k, before any batch). It
    decides the route, not the ranking."""
    return sae._topafa_candidates if sae._topafa_mean_k is None else sae._topafa_mean_k


def _topafa_pairs(sae, pre, x_n):
    import torch

    decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    target = topafa_target(sae, x_n)
    rows, cols, k = _ops().topafa_pairs(
        pre, decoder_norms, target, sae._topafa_candidates, nonnegative=True
    )
    sae._adapt_topafa_candidates(k)
    return rows, cols, k


# -- TopK and BatchTopK ----------------------------------------------------------------------


def _topk_select(sae, pre, x_n):
    return _ops().topk(pre, sae.config.k), _k_tensor(sae, pre)


def _topk_pairs(sae, pre, x_n):
    rows, cols = _ops().topk_pairs(pre, sae.config.k)
    return rows, cols, _k_tensor(sae, pre)


def _batchtopk_estimating(sae) -> bool:
    """Training, or no threshold estimated yet: select across the batch."""
    return sae.training or bool(sae.threshold[0] < 0)


def _batchtopk_select(sae, pre, x_n):
    if _batchtopk_estimating(sae):
        acts, smallest = _ops().batchtopk(pre, sae.config.k)
        if sae.training:
            sae._update_batchtopk_threshold(smallest)
        return acts, None
    return _ops().threshold_activation(pre, sae.threshold), None


def _batchtopk_pairs(sae, pre, x_n):
    if _batchtopk_estimating(sae):
        rows, cols, smallest = _ops().batchtopk_pairs(pre, sae.config.k)
        if sae.training:
            sae._update_batchtopk_threshold(smallest)
        return rows, cols, None
    rows, cols = (pre > sae.threshold).nonzero(as_tuple=True)
    return rows, cols, None


# -- ReLU and JumpReLU -----------------------------------------------------------------------


def _relu_select(sae, pre, x_n):
    return pre, None


def _relu_l1(sae, pre, acts, x_n, coef):
    """coef * sum_i f_i ||W_dec,i|| per token over the batch's mean ||x|| (scale-free)."""
    import torch

    from .afa import afa_norm

    decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    l1 = (acts * decoder_norms).sum(-1).mean()
    return coef * l1 / afa_norm(x_n.detach()).mean().clamp_min(1e-12)


def _jumprelu_select(sae, pre, x_n):
    return _ops().jumprelu(pre, sae.threshold, sae.config.jumprelu_bandwidth), None


def _jumprelu_l0(sae, pre, acts, x_n, coef):
    """coef * the straight-through L0 per token."""
    return coef * _ops().jumprelu_l0(pre, sae.threshold, sae.config.jumprelu_bandwidth).mean()


# -- the registry ----------------------------------------------------------------------------

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            name="topafa",
            display_name="Top-AFA",
            card_tag="top-afa",
            card_text=(
                "Features are chosen per token by **top-AFA**: the largest features are kept "
                "until the norm of the decoder-scaled feature vector reaches the input's norm "
                "(its approximate feature activation), so the number of active features adapts "
                "to each token and there is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["topafa"],
            select=_topafa_select,
            adaptive_k=True,
            select_pairs=_topafa_pairs,
            kept_per_token=_topafa_kept,
        ),
        Rule(
            name="topk",
            display_name="TopK",
            card_tag="top-k",
            card_text="Features are chosen per token by **top-k** with k = {k}.",
            ground_truth=GROUND_TRUTH["topk"],
            select=_topk_select,
            needs_k=True,
            afa_loss=False,
            select_pairs=_topk_pairs,
            kept_per_token=lambda sae: sae.config.k,
            options=("k",),
        ),
        Rule(
            name="batchtopk",
            display_name="BatchTopK",
            card_tag="batch-top-k",
            card_text=(
                "Features are chosen by **BatchTopK** (k = {k} per token on average over a batch "
                "during training; a learned threshold at inference)."
            ),
            select=_batchtopk_select,
            needs_k=True,
            afa_loss=False,
            threshold="estimated",
            threshold_init=lambda config: -1.0,  # -1: not estimated yet
            select_pairs=_batchtopk_pairs,
            kept_per_token=lambda sae: sae.config.k,
            options=("k", "batchtopk_threshold_momentum"),
        ),
        Rule(
            name="relu",
            display_name="ReLU",
            card_tag="relu",
            card_text=(
                "Features are a **ReLU** of the encoder output, trained with an L1 sparsity "
                "penalty."
            ),
            select=_relu_select,
            encoder_bias=True,
            afa_loss=False,
            penalty=_relu_l1,
            penalty_coef="l1_coef",
            penalty_name="L1",
            options=("l1_coef",),
        ),
        Rule(
            name="jumprelu",
            display_name="JumpReLU",
            card_tag="jumprelu",
            card_text=(
                "Features are a **JumpReLU** of the encoder output (learned per-feature "
                "thresholds), trained with an L0 sparsity penalty."
            ),
            select=_jumprelu_select,
            encoder_bias=True,
            afa_loss=False,
            threshold="learned",
            threshold_init=lambda config: config.jumprelu_init_threshold,
            penalty=_jumprelu_l0,
            penalty_coef="l0_coef",
            penalty_name="L0",
            options=("l0_coef", "jumprelu_init_threshold", "jumprelu_bandwidth"),
            ground_truth=GROUND_TRUTH["jumprelu"],
        ),
        Rule(
            name="afa_band",
            display_name="AFA band entry",
            card_tag="afa-band",
            card_text=(
                "Features are chosen per token by **AFA band entry**: the largest features are "
                "kept until their cumulative norm enters the AFA bound for a code of that many "
                "features, ||x - b_dec||^2 / (1 + eps (k - 1)), with eps the decoder's measured "
                "RMS coherence; there is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["afa_band"],
            select=kfree_rules.band_entry_select,
            adaptive_k=True,
            select_pairs=kfree_rules.kfree_select("band_entry_pairs", ranked=True),
            kept_per_token=_topafa_kept,
        ),
        Rule(
            name="afa_universal",
            display_name="AFA universal threshold",
            card_tag="afa-universal",
            card_text=(
                "Features are kept when their decoder-scaled activation exceeds the largest "
                "interference the decoder allows, eps sqrt(2 ln h) ||x - b_dec|| (eps: the "
                "decoder's measured RMS coherence; at least one feature per token); there is no "
                "*k* to tune."
            ),
            select=kfree_rules.kfree_select("universal_threshold"),
            adaptive_k=True,
        ),
        Rule(
            name="afa_batch",
            display_name="AFA batch band",
            card_tag="afa-batch",
            card_text=(
                "Features are chosen by **AFA batch band**: during training a batch keeps as many "
                "(token, feature) pairs as AFA band entry would keep per token in total, taken "
                "as the largest activations across the batch; at inference a per-feature "
                "threshold estimated during training. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["afa_batch"],
            **kfree_rules.batch_rule(kfree_rules.band_budget),
        ),
        Rule(
            name="noise_floor",
            display_name="Noise floor",
            card_tag="noise-floor",
            card_text=(
                "Features are kept per token when their decoder-scaled activation exceeds the "
                "level that one interference term in n+ crosses by chance, with the interference "
                "level measured from the token's own positive activations (their median over "
                "0.6745) and n+ their count; there is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["noise_floor"],
            select=kfree_rules.noise_floor_select,
            adaptive_k=True,
        ),
        Rule(
            name="afa_count",
            display_name="AFA count",
            card_tag="afa-count",
            card_text=(
                "Features are chosen per token by **AFA count**: the token keeps its k largest "
                "decoder-scaled activations, k = ||x - b_dec||^2 / mu, the AFA's estimate of the "
                "code's energy over the energy one kept feature carries (mu: a running mean "
                "over training, fixed at inference); there is no *k* to tune."
            ),
            select=kfree_rules.afa_count_select,
            adaptive_k=True,
            threshold_power=2,  # an energy: squared decoder-scaled activations
            **kfree_rules.ESTIMATED_THRESHOLD,  # the momentum is the running energy's
        ),
        Rule(
            name="afa_energy",
            display_name="AFA energy count",
            card_tag="afa-energy",
            card_text=(
                "Features are chosen per token by the **AFA energy count**: the token keeps its k "
                "largest decoder-scaled activations, k = ||x - b_dec||^2 / E, the AFA's estimate "
                "of the code's energy over the energy E one confidently detected feature carries "
                "(the median squared projection of x - b_dec onto the decoder rows of the "
                "activations above each token's interference level; a running mean over "
                "training, fixed at inference); there is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["afa_energy"],
            select=kfree_rules.afa_energy_select,
            observe=kfree_rules.afa_energy_observe,
            adaptive_k=True,
            threshold_power=2,  # an energy: squared decoder-scaled activations
            **kfree_rules.ESTIMATED_THRESHOLD,  # the momentum is the running energy's
        ),
        Rule(
            name="afa_mdl",
            display_name="AFA band entry, then risk inflation",
            card_tag="afa-mdl",
            card_text=(
                "Trained as **AFA band entry** (the largest features kept until their cumulative "
                "norm enters the AFA bound), and read at inference by the **risk inflation "
                "criterion**: each token keeps the count k of its ranked features that minimizes "
                "d ln RSS_k + 2 k ln h. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["afa_mdl"],
            select=kfree_rules.afa_mdl_select,
            adaptive_k=True,
        ),
        Rule(
            name="risk_inflation",
            display_name="Risk inflation",
            card_tag="risk-inflation",
            card_text=(
                "Features are ranked per token as top-AFA ranks them, and the token keeps the "
                "count k that minimizes d ln RSS_k + 2 k ln h (the residual of the k-feature "
                "reconstruction against the price of naming k features out of h: the risk "
                "inflation criterion); there is no *k* to tune."
            ),
            select=kfree_rules.risk_inflation_select,
            adaptive_k=True,
        ),
        Rule(
            name="risk_pooled",
            display_name="Risk inflation, pooled noise",
            card_tag="risk-pooled",
            card_text=(
                "Features are ranked per token as top-AFA ranks them, and the token keeps the "
                "count k that minimizes RSS_k / sigma^2 + 2 k ln h (the risk inflation criterion "
                "with its noise level known), where sigma^2 is one level for all tokens: the "
                "residual per dimension pooled over the batch at the counts it selects, a running "
                "mean while training and fixed at inference. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_pooled"],
            select=kfree_rules.risk_pooled_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_floor",
            display_name="Risk inflation, pooled noise, each feature paying",
            card_tag="risk-floor",
            card_text=(
                "Features are ranked per token as top-AFA ranks them; the token keeps the count "
                "k that minimizes RSS_k / sigma^2 + 2 k ln h at one pooled noise level sigma^2 "
                "(as risk_pooled), and of those k only the features whose own decoder-scaled "
                "activation squared pays the price 2 sigma^2 ln h alone (the criterion's hard "
                "threshold where the decoder's rows are orthonormal). The level is a running "
                "mean while training and fixed at inference. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_floor"],
            select=kfree_rules.risk_floor_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_refit",
            display_name="Risk inflation, pooled noise, amplitudes re-fit",
            card_tag="risk-refit",
            card_text=(
                "Each token's 64 largest decoder-scaled activations are re-fit by least squares "
                "on the decoder's rows, and the candidate whose removal raises the residual "
                "least is dropped until each one left raises it by at least 2 sigma^2 ln h (the "
                "risk inflation price at one pooled noise level sigma^2: the residual per "
                "dimension at the counts kept, a running mean while training and fixed at "
                "inference). The code holds the re-fit amplitudes. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_refit"],
            select=kfree_rules.risk_refit_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_calibrated",
            display_name="Risk inflation, amplitudes re-fit, price calibrated",
            card_tag="risk-calibrated",
            card_text=(
                "As risk_refit (each token's 64 largest decoder-scaled activations re-fit by "
                "least squares on the decoder's rows, the weakest dropped until each one left "
                "pays the price), but the price is calibrated by empirical Bayes instead of "
                "2 sigma^2 ln h: 2 sigma^2 (1 + c) / c [ln((1 - p) / p) + ln(1 + c) / 2], the "
                "Bayes threshold for a feature on with probability p whose amplitude is Gaussian "
                "with variance c sigma^2, where p (the share of features kept), c and sigma^2 "
                "(the residual per dimension) are read from the reading itself at a fixed point. "
                "The price is a running mean while training and fixed at inference. There is "
                "no *k* and no coefficient to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_calibrated"],
            select=kfree_rules.risk_calibrated_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_tail",
            display_name="Risk inflation, amplitudes re-fit, price from the residual's tail",
            card_tag="risk-tail",
            card_text=(
                "As risk_calibrated, at the price the squared projections of the residual onto "
                "the rows left out pass as rarely as a Gaussian null passes 2 sigma^2 ln h (a "
                "fixed point). There is no *k* and no coefficient to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_tail"],
            select=kfree_rules.risk_tail_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_balance",
            display_name="Risk inflation, amplitudes re-fit, count-unbiased price",
            card_tag="risk-balance",
            card_text=(
                "As risk_calibrated, at the price where the features expected to pass it "
                "falsely (the residual's projections onto the rows left out, as risk_tail reads "
                "them) equal the true ones expected to fall under it (a normal fitted to the "
                "kept amplitudes above their cut): a count unbiased rather than the fewest "
                "errors. There is no *k* and no coefficient to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_balance"],
            select=kfree_rules.risk_balance_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="risk_switch",
            display_name="Risk inflation, amplitudes re-fit, balance or tail price",
            card_tag="risk-switch",
            card_text=(
                "As risk_balance where its normal describes the kept amplitudes (a "
                "Kolmogorov-Smirnov distance of at most 0.15 between them and the normal's part "
                "above the cut), else as risk_tail: where the kept latents are two groups, false "
                "ones piled at the cut and true ones far above it, the balance overcounts. There "
                "is no *k*; the 0.15 sits in the gap the misfits of 24 read dictionaries left."
            ),
            ground_truth=GROUND_TRUTH["risk_switch"],
            select=kfree_rules.risk_switch_select,
            **kfree_rules.POOLED_LEVEL,
        ),
        Rule(
            name="noise_batch",
            display_name="Noise-floor batch",
            card_tag="noise-batch",
            card_text=(
                "Features are chosen by **noise-floor batch**: during training a batch keeps as "
                "many (token, feature) pairs as the noise floor would keep per token in total "
                "(activations above the level one interference term in n+ crosses by chance), "
                "taken as the largest decoder-scaled activations across the batch; at inference "
                "a threshold estimated during training. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["noise_batch"],
            **kfree_rules.batch_rule(kfree_rules.noise_floor_budget),
        ),
        Rule(
            name="risk_batch",
            display_name="Risk inflation batch",
            card_tag="risk-batch",
            card_text=(
                "Features are chosen by **risk inflation batch**: during training a batch keeps "
                "as many (token, feature) pairs as the risk inflation criterion would keep per "
                "token in total (the count k minimizing d ln RSS_k + 2 k ln h), taken as the "
                "largest decoder-scaled activations across the batch; at inference a threshold "
                "estimated during training. There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["risk_batch"],
            **kfree_rules.batch_rule(kfree_rules.risk_inflation_budget),
        ),
        Rule(
            name="afa_kurtosis",
            display_name="AFA kurtosis batch",
            card_tag="afa-kurtosis",
            card_text=(
                "Features are chosen by **AFA kurtosis batch**: during training a batch keeps "
                "its largest decoder-scaled activations, as many as its tokens hold by the AFA: "
                "the energy ||x - b_dec||^2 over the energy of one feature, read from how far "
                "the fourth moment of the projections of x - b_dec onto the decoder rows exceeds "
                "that of their interference; at inference a threshold estimated during training. "
                "There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["afa_kurtosis"],
            **kfree_rules.batch_rule(kfree_rules.kurtosis_budget),
        ),
        Rule(
            name="latent_noise",
            display_name="Per-latent noise level",
            card_tag="latent-noise",
            card_text=(
                "Features are kept by a **per-latent noise level**: where a latent's values start "
                "to outnumber a Gaussian fit of its own interference (estimated while training, "
                "fixed at inference). There is no *k* to tune."
            ),
            ground_truth=GROUND_TRUTH["latent_noise"],
            select=kfree_rules.latent_noise_select,
            observe=kfree_rules.latent_noise_observe,
            select_pairs=kfree_rules.latent_noise_pairs,
            kept_per_token=kfree_rules.mean_kept,
            **kfree_rules.ESTIMATED_THRESHOLD,  # the momentum is the running fits'
        ),
    )
}

ACTIVATIONS: tuple[str, ...] = tuple(RULES)
"""The rule names, in registry order."""
NEEDS_K: tuple[str, ...] = tuple(name for name, rule in RULES.items() if rule.needs_k)
"""The rules that need ``k``."""
ENCODER_BIAS: tuple[str, ...] = tuple(name for name, rule in RULES.items() if rule.encoder_bias)
"""The rules whose encoder bias is trained by default."""
RULE_OPTIONS: tuple[str, ...] = (
    "k", "l1_coef", "l0_coef", "jumprelu_init_threshold", "jumprelu_bandwidth",
    "batchtopk_threshold_momentum",
)  # fmt: skip
"""The SAEConfig fields that only some rules read (``Rule.options``)."""


def rules_reading(option: str) -> tuple[str, ...]:
    """The names of the rules that read ``option`` (one of ``RULE_OPTIONS``)."""
    return tuple(name for name, rule in RULES.items() if option in rule.options)


def get_rule(name: str) -> Rule:
    """The registered rule called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}"
        ) from None
