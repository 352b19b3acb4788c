"""The price at which procedure D's count would meet the truth, per dictionary, from a price
sweep read before unfolding and procedure D's readings at the readers' own prices.

``synth_price_sweep.py`` reads each dictionary at a ladder of prices before unfolding (fast);
procedure D (``synth_read_again.py``) unfolds absorbed ancestors, but only at each reader's own
price (slow). Over the three re-fit readers' prices (13–37 sigma^2 on the 16 dictionaries of
``tail/``) the unfolding multiplies the count by nearly the same factor on each dictionary
(within 7% on 14 of 16), so the ladder times that factor (interpolated in log price between the
readers' prices, held flat beyond them) estimates procedure D's count at every price on it.
Where it crosses the truth is the right price for that dictionary: an estimate, not a reading.
With ``--prices`` (``synth_calibration.py``'s JSON for the same dictionaries) also the rank
correlation of that price with each truth-free figure there, and the count-unbiased price of
``risk_calibrated``'s Gaussian model with the count the ladder estimates there. One JSON.

    python scripts/synth_right_price.py --sweep results/synthbench/tail/price_sweep.json \\
        --readers results/synthbench/tail/readers.json --prices results/synthbench/tail/prices.json \\
        --json results/synthbench/tail/right_price.json
"""

from __future__ import annotations

import argparse
import math

from synth_calibration import TRUTH_FREE, rank_correlation  # the sibling scripts
from synth_price_sweep import crossing_price

from hf_topafa.helpers import read_json, script_command, write_json
from hf_topafa.sae import risk

REFIT_READERS = ("risk_refit", "risk_calibrated", "risk_tail")


def in_log_price(points: list[tuple[float, float]], price: float, hold: bool) -> float | None:
    """The value at ``price`` of ``points`` (price, value), interpolated linearly in log price;
    beyond them the nearest end's value where ``hold``, else None."""
    points = sorted(points)
    if not points[0][0] <= price <= points[-1][0]:
        return (points[0][1] if price < points[0][0] else points[-1][1]) if hold else None
    for (low, a), (high, b) in zip(points, points[1:], strict=False):
        if price <= high:
            return a + (b - a) * (math.log(price / low) / math.log(high / low) if high > low else 0)
    return points[-1][1]  # a single point


def unfolding_factor(points: list[tuple[float, float]], price: float) -> float:
    """The unfolding factor at ``price`` from the readers' (price, factor) ``points``, held at
    the nearest end beyond them."""
    return in_log_price(points, price, hold=True)


def gaussian_balance_price(kept_share: float, signal_to_noise: float) -> float:
    """The price over sigma^2 at which ``risk_calibrated``'s model (a latent on with
    probability p, its contribution then Gaussian of variance (1 + c) sigma^2, else Gaussian of
    variance sigma^2) expects as many false latents as missed ones: (1 - p) P(chi2_1 > t) =
    p P(chi2_1 < t / (1 + c)); found by bisection in log price. A count-unbiased price where
    ``risk_calibrated``'s is the Bayes one (fewest errors)."""
    p, c = min(max(kept_share, 1e-12), 0.5), max(signal_to_noise, 1e-3)

    def excess(t: float) -> float:
        return (1 - p) * math.erfc(math.sqrt(t / 2)) - p * math.erf(math.sqrt(t / (2 * (1 + c))))

    return risk.log_bisection(excess, 1e-3, 1e4, 100)


def estimated_count(ladder: list[dict], price: float) -> float | None:
    """The unfolded ladder's count over the truth at ``price``; None off the ladder."""
    points = [(r["price_over_level"], r["unfolded_over_truth"]) for r in ladder]
    return in_log_price(points, price, hold=False)


def right_price(sweep_row: dict, readings: dict) -> dict:
    """One dictionary: the unfolding factor at each reader's price, the estimated procedure D
    count along the ladder, and the price where it meets the truth (None off the ladder),
    with the false firings per true one at the ladder's rung nearest it (before unfolding)."""
    factors = [(sweep_row["readers"][name]["price_over_level"],
                readings[name]["ratio"] / sweep_row["readers"][name]["count_over_truth"])
               for name in REFIT_READERS]  # fmt: skip
    ladder = [{**r, "unfolded_over_truth": r["count_over_truth"]
               * unfolding_factor(factors, r["price_over_level"])} for r in sweep_row["ladder"]]  # fmt: skip
    price = crossing_price(ladder, lambda r: r["unfolded_over_truth"] - 1)
    false_per_true = None
    if price is not None:
        near = min(ladder, key=lambda r: abs(math.log(r["price_over_level"] / price)))
        false_per_true = near["false_per_sample"] / max(near["true_per_sample"], 1e-9)
    return {
        "run": sweep_row["run"],
        "world": sweep_row["world"],
        "unfolding_factors": {name: f for name, (_, f) in zip(REFIT_READERS, factors, strict=True)},
        "reader_prices_over_level": {
            name: p for name, (p, _) in zip(REFIT_READERS, factors, strict=True)
        },
        "unfolded_ladder": [
            {
                "price_over_level": r["price_over_level"],
                "unfolded_over_truth": r["unfolded_over_truth"],
            }
            for r in ladder
        ],
        "right_price_over_level": price,
        "false_per_true_near_it": false_per_true,
    }


def balance_or_end(sweep_row: dict) -> float:
    """The sweep's balance price, or where the ladder never crosses it the end beyond which it
    lies (its first rung less one, its last plus one): a rank, not a price."""
    found = sweep_row["price_balancing_errors_over_level"]
    if found is not None:
        return found
    first, last = sweep_row["ladder"][0], sweep_row["ladder"][-1]
    below = first["false_per_sample"] < first["missed_findable_per_sample"]
    return first["price_over_level"] - 1 if below else last["price_over_level"] + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--sweep", required=True, help="synth_price_sweep.py's JSON")
    parser.add_argument("--readers", required=True, help="synth_compare_readers.py's JSON")
    parser.add_argument("--prices", default=None, help="synth_calibration.py's JSON")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sweep = {row["run"]: row for row in read_json(args.sweep)["rows"]}
    readings = read_json(args.readers)["dictionaries"]
    missing = [run for run in readings if run not in sweep]
    if missing:
        raise SystemExit(f"the sweep has no row for {missing[0]}: sweep the readers' dictionaries")
    rows = [right_price(sweep[run], readings[run]) for run in readings]
    for row in rows:
        found = row["right_price_over_level"]
        print(f"{row['run']}: right price {'off the ladder' if found is None else f'{found:.1f}'}"
              " sigma^2; readers " + ", ".join(f"{k} {v:.1f}" for k, v in
                                             row["reader_prices_over_level"].items()))  # fmt: skip
    correlations = {}
    if args.prices:
        figures = {row["run"]: row for row in read_json(args.prices)["rows"]}
        for row in rows:
            found = figures[row["run"]]
            price = gaussian_balance_price(found["kept_share"], found["signal_to_noise"])
            row["gaussian_balance_price_over_level"] = price
            row["estimated_count_at_gaussian_balance"] = estimated_count(
                row["unfolded_ladder"], price
            )
        placed = [row for row in rows if row["right_price_over_level"] is not None]
        truth = [row["right_price_over_level"] for row in placed]
        for key in (*TRUTH_FREE, "unheld_per_dimension"):
            correlations[key] = rank_correlation(
                [figures[row["run"]][key] for row in placed], truth
            )
        print("rank correlation with the right price: " + ", ".join(
            f"{k} {v:+.3f}" for k, v in correlations.items() if v is not None))  # fmt: skip
    balance = [balance_or_end(sweep[run]) for run in readings]
    tail = [sweep[run]["readers"]["risk_tail"]["price_over_level"] for run in readings]
    balance_with_tail = rank_correlation(tail, balance)
    print(f"the sweep's balance price against risk_tail's, rank correlation {balance_with_tail}")
    if args.json:
        write_json(args.json, {"command": script_command(), "rows": rows,
                               "spearman_with_right_price": correlations,
                               "balance_spearman_with_tail_price": balance_with_tail})  # fmt: skip


if __name__ == "__main__":
    main()
