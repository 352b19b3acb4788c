"""Where ``risk_calibrated``'s and ``risk_tail``'s prices settle on trained dictionaries.

For each TopK dictionary (a run folder and its world's held-out cache), on the first 1,024
scored samples (the tokens a batch's price is found on), before any unfolding: the calibrated
price over its noise level sigma^2, against 2 ln h; sigma^2, the share of latents kept p and
the signal-to-noise c it settled at; ``risk_tail``'s price over the same sigma^2 (how much
heavier than Gaussian the residual's tail is, free of the input's scale); and ``risk_refit``'s
level. Beside them the truth's unheld firings per dimension (the features the width cannot
hold that fire per sample, over d: what the readers' errors follow, ``spikes/``) and the
residual share sigma^2 d / mean ||x - b_dec||^2 (truth-free and free of the input's scale),
with the rank correlation of each truth-free figure with the truth's over the dictionaries
given (give one per world). One JSON for all.

    python scripts/synth_calibration.py --json results/synthbench/calibrated/prices.json \\
        runs/synthbench_mix/runs/synthsaebench-4k-mix/topk-k6 runs/synthbench_mix/cache/synthsaebench-4k-mix-eval ...
"""

from __future__ import annotations

import torch
from synth_spikes_table import spearman  # the sibling script's rank correlation

from hf_topafa.evaluation.on_truth import (
    dictionary_on_truth,
    report_rows,
    run_cache_pairs_from_command_line,
)
from hf_topafa.sae import balance, risk

TRUTH_FREE = (
    "level",
    "residual_share",
    "price_over_level",
    "kept_share",
    "signal_to_noise",
    "tail_price_over_level",
)


@torch.no_grad()
def calibration_of(run: str, cache: str) -> dict:
    """The calibrated price and ``risk_refit``'s level for one dictionary (see the module)."""
    read = dictionary_on_truth(run, cache, risk.REFIT_LEVEL_TOKENS)
    z, pre = read.centered(), read.activations()
    unheld = read.firings(held=False).float().mean()
    return {
        "run": run,
        "world": read.world_name,
        **balance.price_figures(pre, read.sae.W_dec, z),
        "unheld_per_dimension": float(unheld) / z.shape[-1],
    }


def rank_correlation(values: list[float], truth: list[float]) -> float | None:
    """Spearman's, or None where it is undefined: under three rows, or either side constant."""
    if len(values) < 3 or len(set(values)) < 2 or len(set(truth)) < 2:
        return None
    return spearman(values, truth)


LINE = (
    "{world:<34} price {price_over_level:5.2f} sigma^2 (2 ln h {two_ln_h:.2f}); sigma^2 {level:.4f}"
    " (risk_refit's {refit_level:.4f}); p {kept_share:.4f} ({kept_per_sample:.2f} per sample);"
    " c {signal_to_noise:.1f}; risk_tail's price {tail_price_over_level:.2f} sigma^2"
)


def main() -> None:
    pairs, args = run_cache_pairs_from_command_line(__doc__)
    rows = [calibration_of(run, cache) for run, cache in pairs]
    truth = [row["unheld_per_dimension"] for row in rows]
    correlations = {key: rank_correlation([row[key] for row in rows], truth) for key in TRUTH_FREE}
    report_rows(rows, LINE.format_map, args.json, spearman_with_unheld_per_dimension=correlations)
    print("rank correlation with the truth's unheld firings per dimension: " + ", ".join(
        f"{key} {value:+.3f}" for key, value in correlations.items() if value is not None))  # fmt: skip


if __name__ == "__main__":
    main()
