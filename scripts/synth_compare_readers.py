"""Procedure D's readings of the same dictionaries by several readers, side by side.

Each given JSON is a ``synth_reread.py`` reading; its procedure D row (the reader's name, then
", unfolded by levels, exclusive") is taken, and the readings are grouped by the dictionary
they read. Per dictionary and reader: the count as a share of what the width holds, F1, MCC,
the per-sample correlation with the truth, and true and false latents per sample; then, per
reader, on how many dictionaries its count lands in the band and its F1 is the best.

    python scripts/synth_compare_readers.py results/synthbench/absorption/mix/mix-8m-topk-k6.json \\
        results/synthbench/absorption/refit/mix-8m-topk-k6.json \\
        results/synthbench/absorption/calibrated/mix-8m-topk-k6.json --json OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synth_choose_k import COUNT_BAND  # the count's bar, as the choices are judged

from hf_topafa.evaluation.unfolded_l0 import EXCLUSIVE_LABEL as PROCEDURE_D  # as readings name it
from hf_topafa.helpers import read_json, script_command, write_json


def procedure_d_row(reading: dict, path: str) -> tuple[str, dict]:
    """(reader, the row) of a ``synth_reread.py`` reading's procedure D view."""
    for row in reading.get("rows", []):
        if row["rule"].endswith(PROCEDURE_D):
            return row["rule"].removesuffix(PROCEDURE_D), row
    raise ValueError(f"{path}: no procedure D row (a rule ending in {PROCEDURE_D!r})")


def side_by_side(paths: list[str], fixed_as: str | None = None) -> dict:
    """{"dictionaries": {run: {reader: scores}}, "readers": {reader: tallies}}; each scores
    names its reading, whose file name names the dictionary (seed included). With
    ``fixed_as``, a reader at a fixed price (``NAME@PRICE``, one per dictionary) is one column
    under that label, its reader kept in ``read_as``."""
    found: dict[str, dict] = {}
    for path in paths:
        reading = read_json(path)
        reader, row = procedure_d_row(reading, path)
        read_as = reader
        if fixed_as is not None and "@" in reader:
            reader = fixed_as
        found.setdefault(reading["run"], {})[reader] = {
            "reading": path,
            "read_as": read_as,
            "ratio": row["l0"] / row["true_l0_top_width"],
            "f1": row["f1"],
            "mcc": row["mcc"],
            "l0_corr": row["l0_corr"],
            "true_per_sample": row["true_pos"],
            "false_per_sample": row["false_pos"],
        }
    readers = sorted({reader for by in found.values() for reader in by})
    tallies = {}
    for reader in readers:
        read = [by for by in found.values() if reader in by]
        tallies[reader] = {
            "dictionaries": len(read),
            "in_band": sum(COUNT_BAND[0] <= by[reader]["ratio"] <= COUNT_BAND[1] for by in read),
            "best_f1": sum(by[reader]["f1"] == max(s["f1"] for s in by.values()) for by in read),
        }
    return {"dictionaries": found, "readers": tallies}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("readings", nargs="+", help="synth_reread.py JSONs")
    parser.add_argument("--fixed-as", default=None, metavar="LABEL",
                        help="one column for the readings at a fixed price (NAME@PRICE)")  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        table = side_by_side(args.readings, args.fixed_as)
    except (ValueError, KeyError) as exc:
        raise SystemExit(str(exc)) from None
    readers = list(table["readers"])
    print("| dictionary | " + " | ".join(readers) + " |")
    print("|---|" + "---|" * len(readers))
    for by in table["dictionaries"].values():
        cells = [f"{by[r]['ratio']:.3f}×, F1 {by[r]['f1']:.3f}, false {by[r]['false_per_sample']:.2f}"
                 if r in by else "–" for r in readers]  # fmt: skip
        name = Path(next(iter(by.values()))["reading"]).stem
        print(f"| {name} | " + " | ".join(cells) + " |")
    for reader, tally in table["readers"].items():
        print(f"{reader}: in the band on {tally['in_band']} of {tally['dictionaries']}, "
              f"the best F1 on {tally['best_f1']}")  # fmt: skip
    if args.json:
        write_json(args.json, {"command": script_command(), **table})


if __name__ == "__main__":
    main()
