"""Procedure D's readings done again with another reader, one JSON per dictionary, resumable.

Each given JSON is a ``synth_reread.py`` reading (its ``command`` recorded); this runs the same
command with ``risk_floor`` swapped for READER, scoring only the last reading (``--last-only``:
procedure D's), into OUT/ under the same file name. A JSON already in OUT/ is skipped, so a
killed run continues, and two calls over different lists run side by side (one thread each).

    OMP_NUM_THREADS=1 python scripts/synth_read_again.py risk_refit results/synthbench/absorption/refit \\
        results/synthbench/absorption/mix/mix-8m-topk-k{4,6,8,12}.json
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from hf_topafa.helpers import read_json

READ_BY = "risk_floor"


def command_again(recorded: str, reader: str, out: Path) -> list[str]:
    """The recorded ``synth_reread.py`` command with ``reader`` for ``risk_floor``, ``--json
    out`` and ``--last-only``."""
    words = shlex.split(recorded)
    if len(words) < 2 or not words[1].endswith("synth_reread.py") or READ_BY not in words:
        raise ValueError(f"not a synth_reread.py reading by {READ_BY}: {recorded[:80]}")
    words[words.index(READ_BY)] = reader
    if "--json" in words:
        words[words.index("--json") + 1] = str(out)
    else:
        words += ["--json", str(out)]
    return [sys.executable, *words[1:], *([] if "--last-only" in words else ["--last-only"])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("reader", help="the rule to read with instead of risk_floor")
    parser.add_argument("out", help="folder for the new readings")
    parser.add_argument("readings", nargs="+", help="synth_reread.py JSONs to read again")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(args.readings, 1):
        out = Path(args.out) / Path(path).name
        if out.exists():
            continue
        try:
            command = command_again(read_json(path)["command"], args.reader, out)
        except (ValueError, KeyError) as exc:
            raise SystemExit(f"{path}: {exc}") from None
        print(f"[{i}/{len(args.readings)}] {out}", flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
