"""``risk_switch`` on dictionaries procedure D has read at both of its prices.

``risk_switch`` takes ``risk_balance``'s price where the balance's normal describes the kept
contributions and ``risk_tail``'s where it does not (``balance.switch_reader``), so its reading of
a dictionary is one of two readings already made. This joins, per dictionary, the reader the
switch chose (``reader_prices.py``'s JSON: ``balance_misfit``, ``switch_reader``) with the
readings scored against the four bars (``synth_choose_k.py``'s JSONs, one reader each), and
counts per reader how many dictionaries land in the count's band and meet all four bars, over
the dictionaries read at both prices.

    python scripts/synth_switch_table.py --prices results/synthbench/switch/prices.json \\
        --bars risk_balance=results/synthbench/balance/bars.json \\
        --bars risk_tail=results/synthbench/balance/bars_tail.json \\
        --json results/synthbench/switch/table.json
"""

from __future__ import annotations

import argparse

from hf_topafa.helpers import read_json, script_command, write_json
from hf_topafa.sae.balance import MISFIT_LIMIT

READERS = ("risk_balance", "risk_tail")
SCORED = ("ratio", "f1", "mcc", "corr", "bars", "path")


def readings_by_run(bars_files: list[str]) -> dict[str, dict[str, dict]]:
    """{run: {reader: the scored reading}} from ``READER=FILE`` pairs of choose-k JSONs."""
    found: dict[str, dict[str, dict]] = {}
    for pair in bars_files:
        reader, _, path = pair.partition("=")
        if reader not in READERS or not path:
            raise ValueError(f"--bars takes READER=FILE with READER one of {READERS}, got {pair!r}")
        for ladder in read_json(path)["ladders"]:
            for reading in ladder["readings"]:
                run = read_json(reading["path"])["run"]
                found.setdefault(run, {})[reader] = {name: reading[name] for name in SCORED}
    return found


def switch_rows(price_files: list[str], readings: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per priced dictionary: its misfit, the reader the switch chose, and the
    readings at hand (the switch's is the chosen reader's)."""
    rows = []
    for path in price_files:
        for priced in read_json(path)["rows"]:
            run, chosen = priced["run"], priced["switch_reader"]
            at_hand = dict(readings.get(run, {}))
            if chosen in at_hand:
                at_hand["risk_switch"] = at_hand[chosen]
            rows.append({"run": run, "balance_misfit": priced["balance_misfit"],
                         "switch_reader": chosen, "readings": at_hand})  # fmt: skip
    return rows


def tally(rows: list[dict]) -> dict:
    """Per reader, over the rows read at both prices: dictionaries, in the count's band, all
    four bars met, bars met in all."""
    both = [row for row in rows if all(r in row["readings"] for r in READERS)]
    out = {"dictionaries": len(both)}
    for reader in (*READERS, "risk_switch"):
        bars = [row["readings"][reader]["bars"] for row in both]
        out[reader] = {
            "in_band": sum(b["count"] for b in bars),
            "all_four": sum(all(b.values()) for b in bars),
            "bars": sum(sum(b.values()) for b in bars),
        }
    return out


def describe(row: dict) -> str:
    def reading(reader):
        r = row["readings"].get(reader)
        if r is None:
            return f"{reader} not read"
        return f"{reader} {r['ratio']:.3f}x F1 {r['f1']:.3f} ({sum(r['bars'].values())} bars)"

    return (f"{row['run']}: misfit {row['balance_misfit']:.3f} -> {row['switch_reader']}; "
            + "; ".join(reading(r) for r in READERS))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prices", nargs="+", required=True, help="reader_prices.py JSONs")
    parser.add_argument("--bars", action="append", required=True,
                        help="READER=FILE: a synth_choose_k.py JSON of READER's readings")  # fmt: skip
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    try:
        rows = switch_rows(args.prices, readings_by_run(args.bars))
    except (ValueError, KeyError, OSError) as error:
        parser.exit(2, f"synth_switch_table.py: error: {error}\n")
    for row in rows:
        print(describe(row))
    summary = tally(rows)
    print(f"over the {summary['dictionaries']} read at both prices (misfit limit {MISFIT_LIMIT}):")
    for reader in (*READERS, "risk_switch"):
        s = summary[reader]
        print(f"  {reader}: in the band {s['in_band']}, all four bars {s['all_four']}, "
              f"{s['bars']} bars")  # fmt: skip
    write_json(args.json, {"misfit_limit": MISFIT_LIMIT, "rows": rows, "summary": summary,
                           "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
