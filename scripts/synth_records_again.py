"""Do dictionaries trained again by their committed commands reproduce their committed records?

``synth_bench.py`` run again with a record's own command but ``--results AGAIN/NAME`` (and
without ``--commit``) writes a fresh record beside the run folder it retrains. This compares
each record under ``AGAIN`` with the committed one of the same path under ``COMMITTED``, on
the row's scores, and exits 1 if any differs beyond ``--tolerance``.

    python scripts/synth_records_again.py runs/regen --json results/synthbench/records_again.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_topafa.helpers import read_json, script_command, write_json

SCORES = ("f1", "mcc", "l0", "explained_variance", "dead", "l0_corr")


def compare(again: Path, committed: Path, tolerance: float) -> list[dict]:
    """One row per record under ``again``: its scores against the committed record's."""
    rows = []
    for path in sorted(again.glob("*/records/*/*.json")):
        relative = path.relative_to(again)
        reference = committed / relative
        if not reference.exists():
            sys.exit(f"{path}: no committed record at {reference}")
        fresh, kept = read_json(path)["row"], read_json(reference)["row"]
        differs = [
            name for name in SCORES
            if (fresh.get(name) is None) != (kept.get(name) is None)
            or (kept.get(name) is not None and abs(fresh[name] - kept[name]) > tolerance)
        ]  # fmt: skip
        rows.append({"record": str(relative), "scores": {n: kept.get(n) for n in SCORES},
                     "differs": differs})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("again", type=Path, help="the --results folders of the runs again")
    parser.add_argument("--committed", type=Path, default=Path("results/synthbench"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = compare(args.again, args.committed, args.tolerance)
    if not rows:
        sys.exit(f"no records under {args.again}/*/records/")
    for row in rows:
        scores = "  ".join(f"{n} {v:.4f}" for n, v in row["scores"].items() if v is not None)
        verdict = "differs in " + ", ".join(row["differs"]) if row["differs"] else "the same"
        print(f"{row['record']}: {verdict} ({scores})")
    different = sum(bool(row["differs"]) for row in rows)
    print(f"{len(rows) - different} of {len(rows)} records reproduced within {args.tolerance}")
    if args.json:
        write_json(args.json, {"command": script_command(), "tolerance": args.tolerance,
                               "reproduced": len(rows) - different, "rows": rows})  # fmt: skip
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
