"""What the price alone can do: each dictionary read by ``risk_refit``'s elimination at a
ladder of prices, against the truth.

``risk_refit``, ``risk_calibrated`` and ``risk_tail`` share one reading (least-squares
amplitudes, backward elimination at a price) and differ only in the price. On the crowded
worlds all three undercount. This asks whether any price would land on the truth there, and
what it would cost: for each TopK dictionary (a run folder and its world's held-out cache,
the first ``--samples`` samples, before unfolding), at prices of ``--ladder`` times the
calibrated noise level sigma^2 and at the three readers' own prices, the count per sample
over the true count of the features the width holds, the true and false firings per sample
(a kept latent is true where its matched feature is on), the share of the firings the
dictionary could make (its matched features on) that it keeps, and the per-sample count's
correlation with the true count; then the prices, interpolated on the ladder, where the count
meets the truth and where the false firings equal the findable ones missed (before unfolding,
a hierarchical world's count also lacks the parents its children absorbed; the balance does
not count those). One JSON for all.

    python scripts/synth_price_sweep.py --json results/synthbench/tail/price_sweep.json \\
        runs/synthbench_flatd256/runs/synthsaebench-4k-flat-d256/topk-k15 \\
        runs/synthbench_flatd256/cache/synthsaebench-4k-flat-d256-eval ...
"""

from __future__ import annotations

import math

import torch

from hf_topafa.evaluation import on_truth
from hf_topafa.evaluation.ground_truth import correlation
from hf_topafa.sae import balance, risk

LADDER = (6.0, 8.0, 10.0, 12.0, 14.0, 17.0, 20.0, 24.0, 28.0, 34.0, 40.0)


@torch.no_grad()
def reading_at(read, pre, z, price: float, truth_count: torch.Tensor) -> dict:
    """One reading at ``price`` (squared input units) against the truth."""
    amplitudes, _ = risk.refit_kept(pre, read.sae.W_dec, z, price)
    kept = amplitudes != 0
    true = (kept & read.on).sum(-1).double()
    count = kept.sum(-1).double()
    return {
        "count_over_truth": float(count.mean() / truth_count.double().mean()),
        "per_sample": float(count.mean()),
        "true_per_sample": float(true.mean()),
        "false_per_sample": float(count.mean() - true.mean()),
        "share_of_findable_kept": float(true.sum() / read.on.sum().clamp_min(1)),
        "missed_findable_per_sample": float(read.on.sum() - true.sum()) / len(z),
        "corr_with_true_count": correlation(count, truth_count),
    }


def crossing_price(ladder_rows: list[dict], gap) -> float | None:
    """The price over sigma^2 where ``gap(row)`` crosses zero, interpolated in log price
    between the ladder's neighbours; None where the ladder never crosses it."""
    for low, high in zip(ladder_rows, ladder_rows[1:], strict=False):
        a, b = gap(low), gap(high)
        if a * b <= 0 and a != b:
            t = a / (a - b)
            return math.exp(math.log(low["price_over_level"]) * (1 - t)
                            + math.log(high["price_over_level"]) * t)  # fmt: skip
    return None


@torch.no_grad()
def sweep(run: str, cache: str, samples: int, ladder: tuple[float, ...]) -> dict:
    """The ladder and the three readers' prices for one dictionary (see the module)."""
    read = on_truth.dictionary_on_truth(run, cache, samples)
    sae, z, pre = read.sae, read.centered(), read.activations()
    first = slice(0, risk.REFIT_LEVEL_TOKENS)  # where a batch finds its price
    figures = balance.price_figures(pre[first], sae.W_dec, z[first])
    level, readers = figures["level"], figures["prices"]
    truth_count = read.firings(held=True)
    rows = [{"price_over_level": m, **reading_at(read, pre, z, m * level, truth_count)}
            for m in ladder]  # fmt: skip
    return {
        "run": run,
        "world": read.world_name,
        "samples": len(z),
        "two_ln_h": figures["two_ln_h"],
        "true_count": float(truth_count.double().mean()),
        "findable_per_sample": float(read.on.sum()) / len(z),
        "ladder": rows,
        "readers": {
            name: {
                "price_over_level": price / level,
                **reading_at(read, pre, z, price, truth_count),
            }
            for name, price in readers.items()
        },
        "price_meeting_truth_over_level": crossing_price(rows, lambda r: r["count_over_truth"] - 1),
        "price_balancing_errors_over_level": crossing_price(
            rows, lambda r: r["false_per_sample"] - r["missed_findable_per_sample"]
        ),
    }


def describe(row: dict) -> str:
    """One dictionary's sweep in a few lines."""
    ladder = "; ".join(f"{r['price_over_level']:g} sigma^2 {r['count_over_truth']:.3f}x "
                       f"(false {r['false_per_sample']:.2f})" for r in row["ladder"])  # fmt: skip
    readers = "".join(f"\n  {name}: {r['price_over_level']:.1f} sigma^2, "
                      f"{r['count_over_truth']:.3f}x" for name, r in row["readers"].items())  # fmt: skip
    return (f"{row['world']} ({row['true_count']:.2f} true per sample): {ladder}{readers}\n"
            f"  the count meets the truth at {row['price_meeting_truth_over_level']} sigma^2; "
            f"false and missed balance at {row['price_balancing_errors_over_level']}")  # fmt: skip


def add_options(parser) -> None:
    """This script's options beside ``--json``."""
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--ladder", type=float, nargs="+", default=list(LADDER),
                        help="prices over the calibrated sigma^2, rising")  # fmt: skip


def main() -> None:
    pairs, args = on_truth.run_cache_pairs_from_command_line(__doc__, add_options)
    if sorted(args.ladder) != args.ladder or min(args.ladder) <= 0:
        raise SystemExit(f"--ladder must be positive and rising, got {args.ladder}")
    rows = [sweep(run, cache, args.samples, tuple(args.ladder)) for run, cache in pairs]
    on_truth.report_rows(rows, describe, args.json)


if __name__ == "__main__":
    main()
