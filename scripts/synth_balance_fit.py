"""What ``risk_balance``'s fit of the true latents sees, against the truth.

``risk_balance`` prices where the false latents expected to pass equal the true ones expected
under the price, the true ones' contributions a normal fitted to every latent the calibrated
reading kept. On the sparse worlds that fit's mean went to its floor of 0 and the reader
overcounted. This splits, per TopK dictionary (its first 1,024 held-out samples, at the
calibrated reading, before unfolding), the kept latents into true (the matched feature is on)
and false, with their contributions over sigma. Of the true latents the reading missed: their
true amplitudes over sigma (a miss far above the cut is no weak feature), how many the encoder
fired at all and their decoder-scaled activations over sigma (small where a relative's row
carries the feature: absorbed). Then the balance price again with the truth's help (an
oracle): the normal fitted to the true kept latents alone, p the share of latents whose
feature is on. With ``--right-price`` (``synth_right_price.py``'s JSON for the same
dictionaries) also the right price and procedure D's count the sweep estimates at both
prices. One JSON for all.

    python scripts/synth_balance_fit.py --right-price results/synthbench/tail/right_price.json \\
        --json results/synthbench/balance/fit_split.json RUN CACHE ...
"""

from __future__ import annotations

import math

import torch
from synth_right_price import estimated_count  # a sibling script

from hf_topafa.evaluation.on_truth import (
    dictionary_on_truth,
    report_rows,
    run_cache_pairs_from_command_line,
)
from hf_topafa.helpers import read_json
from hf_topafa.sae import balance, risk

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantiles(values: torch.Tensor) -> list[float] | None:
    """``QUANTILES`` of ``values`` (None where empty)."""
    if values.numel() == 0:
        return None
    return values.double().quantile(torch.tensor(QUANTILES, dtype=torch.float64)).tolist()


@torch.no_grad()
def balance_fit(run: str, cache: str, right_rows: dict) -> dict:
    """One dictionary's split of the calibrated reading and the oracle balance (see the module)."""
    read = dictionary_on_truth(run, cache, risk.REFIT_LEVEL_TOKENS)
    W_dec, z, pre = read.sae.W_dec, read.centered(), read.activations()
    n, h = pre.shape
    found = risk.calibrated_price(pre, W_dec, z)
    amplitudes, _ = risk.refit_kept(pre, W_dec, z, found.price)
    kept = amplitudes != 0
    sigma = math.sqrt(found.level)
    norms = torch.linalg.vector_norm(W_dec, dim=-1)
    contribution = amplitudes * norms / sigma
    missed = read.on & ~kept
    fired = missed & (pre > 0)
    true_amplitude = read.codes[:, read.match.clamp_min(0)] / sigma
    cut = math.sqrt(found.price / found.level)
    fitted = balance.balance_reading(pre, W_dec, z, found)
    oracle_mean, oracle_spread = balance.truncated_normal_fit(contribution[kept & read.on], cut)
    null = risk.left_out_projections(amplitudes, W_dec, z) / found.level
    on_share = float(read.on.sum()) / (n * h)
    oracle = balance.count_balance(null, on_share, oracle_mean, oracle_spread)
    row = {
        "run": run,
        "world": read.world_name,
        "cut_over_sigma": cut,
        "kept_true_per_sample": float((kept & read.on).sum()) / n,
        "kept_false_per_sample": float((kept & ~read.on).sum()) / n,
        "missed_per_sample": float(missed.sum()) / n,
        "missed_fired_per_sample": float(fired.sum()) / n,
        "kept_true_contribution_quantiles": quantiles(contribution[kept & read.on]),
        "kept_false_contribution_quantiles": quantiles(contribution[kept & ~read.on]),
        "missed_true_amplitude_quantiles": quantiles(true_amplitude[missed]),
        "missed_fired_activation_quantiles": quantiles((pre * norms / sigma)[fired]),
        "fit_all_kept": [fitted.on_mean, fitted.on_spread],
        "fit_true_kept": [oracle_mean, oracle_spread],
        "balance_price_over_level": fitted.price / found.level,
        "oracle_balance_price_over_level": oracle,
    }
    if run in right_rows:
        sweep = right_rows[run]
        row["right_price_over_level"] = sweep["right_price_over_level"]
        for name in ("balance_price_over_level", "oracle_balance_price_over_level"):
            row[name.replace("price_over_level", "estimated_count")] = estimated_count(
                sweep["unfolded_ladder"], row[name]
            )
    return row


def describe(row: dict) -> str:
    """One dictionary in two lines."""

    def figure(value):
        return "off the ladder" if value is None else f"{value:.3f}x"

    kept = row["kept_true_contribution_quantiles"] or [math.nan] * 5
    false = row["kept_false_contribution_quantiles"] or [math.nan] * 5
    missed = row["missed_true_amplitude_quantiles"] or [math.nan] * 5
    fired = row["missed_fired_activation_quantiles"] or [math.nan] * 5
    line = (f"{row['run']}\n  cut {row['cut_over_sigma']:.2f} sigma; kept true "
            f"{row['kept_true_per_sample']:.2f}/sample (median {kept[2]:.1f} sigma), false "
            f"{row['kept_false_per_sample']:.2f} (median {false[2]:.1f}), missed "
            f"{row['missed_per_sample']:.2f} (true amplitude median {missed[2]:.1f}; fired "
            f"{row['missed_fired_per_sample']:.2f}, median {fired[2]:.1f}); fit on all "
            f"kept {row['fit_all_kept'][0]:.1f} +- {row['fit_all_kept'][1]:.1f}, on true kept "
            f"{row['fit_true_kept'][0]:.1f} +- {row['fit_true_kept'][1]:.1f}; balance "
            f"{row['balance_price_over_level']:.1f} sigma^2, oracle "
            f"{row['oracle_balance_price_over_level']:.1f}")  # fmt: skip
    if "right_price_over_level" in row:
        right = row["right_price_over_level"]
        line += (f"; right {'none on the ladder' if right is None else f'{right:.1f}'}; "
                 f"estimated count {figure(row['balance_estimated_count'])}, oracle "
                 f"{figure(row['oracle_balance_estimated_count'])}")  # fmt: skip
    return line


def main() -> None:
    def options(parser):
        parser.add_argument("--right-price", default=None, help="synth_right_price.py's JSON")

    pairs, args = run_cache_pairs_from_command_line(__doc__, options)
    right_rows = {}
    if args.right_price:
        right_rows = {row["run"]: row for row in read_json(args.right_price)["rows"]}
    rows = [balance_fit(run, cache, right_rows) for run, cache in pairs]
    report_rows(rows, describe, args.json)


if __name__ == "__main__":
    main()
