"""The k-free rules' functions as the registry (``rules.py``) calls them: selections, budgets,
sparse routes, the estimated-threshold fields, and the pre-ReLU observers. Their math
is in ``kfree``; this module only adapts it to ``(sae, pre, x_n)``.

Like ``rules.py`` it imports no torch at import time (the command line validates rule names
before loading torch); each function imports what it needs when it first runs.
"""

from __future__ import annotations


def topafa_target(sae, x_n):
    """The paper's target norm, ||x - b_dec|| (top-AFA's, and the AFA rules')."""
    from .afa import afa_norm
    from .kfree import centered_input

    return afa_norm(centered_input(sae, x_n))


def kfree_select(rule, ranked: bool = False):
    """A kfree rule applied with top-AFA's target ||x - b_dec|| and the decoder's eps_rms. A
    ``ranked`` rule ranks top-AFA's adaptive candidate count first; its k sets the candidates
    and the route of the next batch, as top-AFA's does (speed only)."""

    def select(sae, pre, x_n):
        import torch

        from . import kfree

        decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        args = (
            pre,
            decoder_norms,
            topafa_target(sae, x_n),
            kfree.decoder_coherence_rms(sae.W_dec),
        )
        if not ranked:
            return getattr(kfree, rule)(*args)
        *out, k = getattr(kfree, rule)(*args, candidates=sae._topafa_candidates)
        sae._adapt_topafa_candidates(k)
        return (*out, k)

    return select


band_entry_select = kfree_select("band_entry", ranked=True)


def batch_rule_acts(keep_in_batch):
    """A rule that selects across the batch while training (or before its threshold is
    estimated) and by the estimated threshold on decoder-scaled activations after, as BatchTopK.
    ``keep_in_batch(sae, pre, decoder_norms, x_n) -> (acts, smallest kept)``. Returns the dense
    activations; ``batch_rule`` makes its dense and sparse selections from them."""

    def acts(sae, pre, x_n):
        import torch

        if not (sae.training or bool(sae.threshold[0] < 0)):
            return pre * above_threshold(sae, pre)
        decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
        kept, smallest = keep_in_batch(sae, pre, decoder_norms, x_n)
        if sae.training:
            sae._update_batchtopk_threshold(smallest)
        return kept

    return acts


ESTIMATED_THRESHOLD = {
    "threshold": "estimated",
    "threshold_init": lambda config: -1.0,  # -1: not estimated yet
    "options": ("batchtopk_threshold_momentum",),
}
"""The Rule fields of a k-free rule whose threshold is estimated while training, at a momentum."""

POOLED_LEVEL = {"adaptive_k": True, "threshold_power": 2, **ESTIMATED_THRESHOLD}
"""The Rule fields of the risk rules at one pooled noise level (risk_pooled, risk_floor,
risk_refit): the threshold holds that level, a variance in squared input units, as a running
mean (risk_calibrated's, risk_tail's, risk_balance's and risk_switch's hold their price, in the
same units)."""


def batch_rule(keep_in_batch) -> dict:
    """The Rule fields shared by the rules that select across the batch while training and by an
    estimated threshold after (afa_batch, noise_batch): only the budget differs."""
    acts = batch_rule_acts(keep_in_batch)

    def select(sae, pre, x_n):
        kept = acts(sae, pre, x_n)
        remember_mean_kept(sae, int((kept != 0).sum()), pre.shape[0])
        return kept, None

    def pairs(sae, pre, x_n):
        rows, cols = acts(sae, pre, x_n).nonzero(as_tuple=True)
        remember_mean_kept(sae, rows.numel(), pre.shape[0])
        return rows, cols, None

    fields = {"select": select, "select_pairs": pairs, "kept_per_token": mean_kept}
    return {**fields, **ESTIMATED_THRESHOLD}


def band_budget(sae, pre, decoder_norms, x_n):
    from . import kfree

    eps = kfree.decoder_coherence_rms(sae.W_dec)
    return kfree.batch_band(pre, decoder_norms, topafa_target(sae, x_n), eps)


def noise_floor_budget(sae, pre, decoder_norms, x_n):
    from . import kfree

    return kfree.batch_noise_floor(pre, decoder_norms)


def kurtosis_budget(sae, pre, decoder_norms, x_n):
    from . import kfree

    z = kfree.centered_input(sae, x_n)
    return kfree.batch_kurtosis(pre, decoder_norms, kfree.decoder_projections(sae, x_n), z)


def risk_inflation_budget(sae, pre, decoder_norms, x_n):
    from . import risk
    from .kfree import centered_input

    return risk.batch_risk_inflation(pre, decoder_norms, sae.W_dec, centered_input(sae, x_n))


def noise_floor_select(sae, pre, x_n):
    import torch

    from . import kfree

    return kfree.noise_floor(pre, torch.linalg.vector_norm(sae.W_dec, dim=-1))


def risk_inflation_select(sae, pre, x_n):
    from . import risk
    from .kfree import centered_input

    return risk.risk_inflation(pre, sae.W_dec, centered_input(sae, x_n))


def at_pooled_level(sae, pre, x_n, read):
    """``read(pre, W_dec, z, sigma2 or None) -> (acts, k, level used)`` at one noise level for
    all tokens: the batch's own while training, folded into the running level ``threshold``
    holds; that level, fixed, at inference; this batch's own where never estimated."""
    from .kfree import centered_input

    level = sae.threshold[0]
    fixed = not sae.training and bool(level >= 0)
    acts, k, used = read(pre, sae.W_dec, centered_input(sae, x_n), float(level) if fixed else None)
    if sae.training:
        sae._update_batchtopk_threshold(used.to(sae.threshold.dtype))
    return acts, k


def risk_pooled_select(sae, pre, x_n, floor: bool = False):
    """Each token's risk-inflation count at one pooled noise level (``risk.risk_pooled``); with
    ``floor`` (``risk_floor``) each kept latent must also pay the price alone."""
    from . import risk

    return at_pooled_level(sae, pre, x_n, lambda *args: risk.risk_pooled(*args, floor=floor))


def risk_floor_select(sae, pre, x_n):
    return risk_pooled_select(sae, pre, x_n, floor=True)


def risk_refit_select(sae, pre, x_n):
    """Each token's candidates re-fit by least squares and pruned at one pooled noise level
    (``risk.risk_refit``)."""
    from . import risk

    return at_pooled_level(sae, pre, x_n, risk.risk_refit)


def risk_calibrated_select(sae, pre, x_n):
    """``risk_refit``'s elimination at the price empirical Bayes calibrates (``threshold`` holds
    that price, not a noise level; ``risk.risk_calibrated``)."""
    from . import risk

    return at_pooled_level(sae, pre, x_n, risk.risk_calibrated)


def risk_tail_select(sae, pre, x_n):
    """``risk_refit``'s elimination at the price read from the residual's own tail
    (``threshold`` holds that price, not a noise level; ``risk.risk_tail``)."""
    from . import risk

    return at_pooled_level(sae, pre, x_n, risk.risk_tail)


def risk_balance_select(sae, pre, x_n):
    """``risk_refit``'s elimination at the count-unbiased price (``threshold`` holds that
    price, not a noise level; ``balance.risk_balance``)."""
    from . import balance

    return at_pooled_level(sae, pre, x_n, balance.risk_balance)


def risk_switch_select(sae, pre, x_n):
    """``risk_refit``'s elimination at the balance price, or the tail price where the balance's
    normal does not describe the kept amplitudes (``threshold`` holds the price;
    ``balance.risk_switch``)."""
    from . import balance

    return at_pooled_level(sae, pre, x_n, balance.risk_switch)


def afa_count_select(sae, pre, x_n):
    """The count from the AFA and the running energy per kept feature (``threshold`` holds it;
    -1 until the first training batch)."""
    import torch

    from . import kfree

    decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    energy = sae.threshold[0]
    if bool(energy < 0):  # not estimated yet: start from this batch's
        energy = kfree.first_energy(pre.detach(), decoder_norms.detach())
        if sae.training:
            sae.threshold.fill_(energy.item())
    acts, k, kept_energy = kfree.afa_count(pre, decoder_norms, topafa_target(sae, x_n), energy)
    if sae.training:
        sae._update_batchtopk_threshold(kept_energy)
    return acts, k


def afa_energy_observe(sae, raw, x_n):
    """While training: fold the batch's energy of one detected feature (``batch_energy``) into
    the running estimate ``threshold`` holds, from the product the forward already made."""
    import torch

    scaled = raw * torch.linalg.vector_norm(sae.W_dec, dim=-1)
    sae._update_batchtopk_threshold(batch_energy(sae, scaled, x_n))


def batch_energy(sae, scaled, x_n):
    """The energy one confidently detected feature carries in this batch
    (``kfree.confident_energy``; ``scaled``: the decoder-scaled product before the ReLU), or
    the largest activations' where nothing is detected."""
    import torch

    from . import kfree

    with torch.no_grad():
        energy = kfree.confident_energy(scaled, kfree.decoder_projections(sae, x_n))
        if bool(torch.isfinite(energy)):
            return energy
        return kfree.first_energy(scaled.clamp_min(0), torch.ones_like(scaled[0]))


def afa_energy_select(sae, pre, x_n):
    """Each token keeps k = ||x - b_dec||^2 / E features: the AFA's energy of the code over the
    energy E one confidently detected feature carries (``batch_energy``; a running mean while
    training, moved by ``afa_energy_observe``, fixed at inference; read from the batch itself
    where never estimated)."""
    import torch

    from . import kfree

    energy = sae.threshold[0]
    if bool(energy < 0):  # never estimated: this batch's
        energy = batch_energy(sae, kfree.decoder_scaled_preactivations(sae, x_n), x_n)
    decoder_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    acts, k, _ = kfree.afa_count(pre, decoder_norms, topafa_target(sae, x_n), energy)
    return acts, k


def afa_mdl_select(sae, pre, x_n):
    """Band entry while training (it learns the dictionary, its budget annealing itself); the
    risk inflation criterion at inference (each token's count, a model-selection choice)."""
    if sae.training:
        return band_entry_select(sae, pre, x_n)
    return risk_inflation_select(sae, pre, x_n)


# -- latent_noise: a threshold per latent, estimated from the product before the ReLU ----------


def latent_noise_observe(sae, raw, x_n):
    """While training: fold the encoder's product before the ReLU into the latents' running
    noise fits, and move the threshold (``kfree.follow_latent_noise``)."""
    from . import kfree

    kfree.follow_latent_noise(sae, raw)


def above_threshold(sae, pre):
    """[N, h] bool: where a latent's decoder-scaled activation clears its estimated threshold
    (latent_noise's per-latent levels; the batch rules' inference threshold)."""
    import torch

    return pre * torch.linalg.vector_norm(sae.W_dec, dim=-1) > sae.threshold


def latent_noise_select(sae, pre, x_n):
    kept = above_threshold(sae, pre)
    remember_mean_kept(sae, int(kept.sum()), pre.shape[0])
    return pre * kept, None


def latent_noise_pairs(sae, pre, x_n):
    rows, cols = above_threshold(sae, pre).nonzero(as_tuple=True)
    remember_mean_kept(sae, rows.numel(), pre.shape[0])
    return rows, cols, None


def remember_mean_kept(sae, kept: int, tokens: int) -> None:
    """Note the batch's mean kept count for ``mean_kept``: it picks the next batch's route
    (speed only)."""
    sae._topafa_mean_k = kept / max(tokens, 1)


def mean_kept(sae):
    """Features a token kept on average in the last batch (every feature before one): what
    decides whether a threshold rule's sparse route pays."""
    return sae.config.d_sae if sae._topafa_mean_k is None else sae._topafa_mean_k
