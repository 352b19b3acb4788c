"""What the tail that ``risk_tail``'s price is read from is made of, against the truth.

``risk_tail`` prices each latent at the quantile of the squared projections of its reading's
residual onto the rows each sample left out that a Gaussian null passes at 2 ln h. A left-out
row whose matched true feature is on in that sample is not null: it is a true feature the
reading missed, and its projection raises the tail the price is read from. For each TopK
dictionary (a run folder and its world's held-out cache; the first 1,024 scored samples, as a
batch's price is found, before unfolding): the price over the calibrated sigma^2; the share of
left-out projections above the price that belong to a missed true feature, beside that share
among all left-out projections; and the price read from the null projections alone (truth
used: an oracle, to see how far the missed features move it). One JSON for all.

    python scripts/synth_tail_sources.py --json results/synthbench/tail/sources.json \\
        runs/synthbench_flatd256/runs/synthsaebench-4k-flat-d256/topk-k15 \\
        runs/synthbench_flatd256/cache/synthsaebench-4k-flat-d256-eval ...
"""

from __future__ import annotations

import torch

from hf_topafa.evaluation.on_truth import (
    dictionary_on_truth,
    report_rows,
    run_cache_pairs_from_command_line,
)
from hf_topafa.sae import risk


@torch.no_grad()
def tail_sources(run: str, cache: str) -> dict:
    """The tail price's sources for one dictionary (see the module)."""
    read = dictionary_on_truth(run, cache, risk.REFIT_LEVEL_TOKENS)
    sae, z, pre = read.sae, read.centered(), read.activations()
    level = risk.calibrated_price(pre, sae.W_dec, z).level
    price = risk.tail_price(pre, sae.W_dec, z)
    h = pre.shape[-1]
    amplitudes, _ = risk.refit_kept(pre, sae.W_dec, z, price)
    left_out = amplitudes == 0
    projections = risk.residual_projections(amplitudes, sae.W_dec, z)
    missed = read.on & left_out
    above = left_out & (projections >= price)
    null = projections[left_out & ~read.on]
    return {
        "run": run,
        "world": read.world_name,
        "tail_price_over_level": price / level,
        "missed_share_of_left_out": float(missed.sum() / left_out.sum()),
        "missed_share_above_price": float((missed & above).sum() / above.sum().clamp_min(1)),
        "above_price_per_sample": float(above.sum()) / len(z),
        "null_price_over_level": risk.tail_quantile(null, h) / level,
    }


def describe(row: dict) -> str:
    """One dictionary's tail in a line."""
    return (f"{row['world']:<34} tail price {row['tail_price_over_level']:5.2f} sigma^2; "
            f"missed true features: {row['missed_share_above_price']:.3f} of the projections "
            f"above it ({row['above_price_per_sample']:.2f} per sample), "
            f"{row['missed_share_of_left_out']:.5f} of all left out; from the null ones "
            f"alone {row['null_price_over_level']:5.2f} sigma^2")  # fmt: skip


def main() -> None:
    pairs, args = run_cache_pairs_from_command_line(__doc__)
    report_rows([tail_sources(run, cache) for run, cache in pairs], describe, args.json)


if __name__ == "__main__":
    main()
