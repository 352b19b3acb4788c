"""The worlds side by side: unheld firings per dimension (the truth's, and the truth-free spike
count from TopK's residual), and what each reader keeps of what the width holds on the same
dictionary, with rank correlations across the worlds.

Each ``synth_unheld_spikes.py`` JSON names its dictionary's run; the readings of that run are
found in the ``synth_choose_k.py`` JSONs given (their readings name a ``synth_reread.py``
JSON, which names its run); a reading's reader is its rule's first word.

    python scripts/synth_spikes_table.py results/synthbench/spikes/*.json \\
        --choose-k results/synthbench/choose_k/*.json results/synthbench/choose_k/refit/*.json \\
        --json results/synthbench/spikes/table.json
"""

from __future__ import annotations

import argparse
import sys

from hf_topafa.helpers import read_json, script_command, write_json

READERS = ("risk_floor", "risk_refit")
SMALLEST_GROUP = 0.01  # a share of the samples under which a group's mean is not shown


def ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for i in order[start : stop + 1]:
            out[i] = (start + stop) / 2
        start = stop + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5


def readings_by_run(choose_k_paths: list[str]) -> dict[str, dict[str, float]]:
    """{run: {reader: count over what the width holds}} over every ladder reading."""
    found: dict[str, dict[str, float]] = {}
    for path in choose_k_paths:
        for ladder in read_json(path)["ladders"]:
            for reading in ladder["readings"]:
                run = read_json(reading["path"])["run"]
                reader = reading["rule"].split(",")[0]  # "risk_floor, unfolded by levels, ..."
                found.setdefault(run, {})[reader] = reading["ratio"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("spikes", nargs="+", help="synth_unheld_spikes.py JSONs")
    parser.add_argument("--choose-k", nargs="+", required=True, help="synth_choose_k.py JSONs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    readings = readings_by_run(args.choose_k)
    rows = []
    for path in args.spikes:
        spikes = read_json(path)
        if "by_unheld_firings" not in spikes:
            sys.exit(f"{path}: not a synth_unheld_spikes.py JSON (no by_unheld_firings)")
        read = readings.get(spikes["run"], {})
        rows.append(
            {
                "world": spikes["world"],
                "run": spikes["run"],
                "unheld_per_dimension": spikes["unheld_per_dimension"],
                "spikes_per_dimension": spikes["spikes_truth_free"]["per_dimension"],
                "ratio": {reader: read.get(reader) for reader in READERS},
                "refit_surplus_by_unheld": {  # None for a group of too few samples
                    name: group["false_per_sample"]["refit_surplus"]
                    if group["share"] >= SMALLEST_GROUP
                    else None
                    for name, group in spikes["by_unheld_firings"].items()
                },
            }
        )
    rows.sort(key=lambda row: row["unheld_per_dimension"])
    truth = [row["unheld_per_dimension"] for row in rows]
    correlations = {
        "spikes_per_dimension": spearman(truth, [r["spikes_per_dimension"] for r in rows])
    }
    for reader in READERS:
        pairs = [(t, r["ratio"][reader]) for t, r in zip(truth, rows, strict=True)
                 if r["ratio"][reader] is not None]  # fmt: skip
        if len(pairs) > 2:
            correlations[reader] = spearman(*map(list, zip(*pairs, strict=True)))
    print("| world | unheld firings / d | truth-free spikes / d | risk_floor | risk_refit | "
          "refit's extra false per sample at 0 / 1 / 2 / 3+ unheld |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = [f"{row['ratio'][r]:.3f}×" if row["ratio"][r] is not None else "–" for r in READERS]
        surplus = " / ".join(f"{v:.2f}" if v is not None else "–"
                             for v in row["refit_surplus_by_unheld"].values())  # fmt: skip
        print(f"| {row['world']} | {row['unheld_per_dimension']:.4f} | "
              f"{row['spikes_per_dimension']:.4f} | {ratio[0]} | {ratio[1]} | {surplus} |")  # fmt: skip
    print("Spearman with the truth's unheld firings per dimension: "
          + ", ".join(f"{name} {value:+.2f}" for name, value in correlations.items()))  # fmt: skip
    if args.json:
        write_json(args.json, {"command": script_command(), "rows": rows,
                               "spearman_with_unheld_per_dimension": correlations})  # fmt: skip


if __name__ == "__main__":
    main()
