"""One dot per reading of each dictionary: the count it keeps over what the width holds.

Reads a folder of ``synth_reread.py`` JSONs (e.g. ``results/synthbench/absorption/exclusive``)
and draws, per dictionary, each reading's L0 over the true L0 of the features the width holds,
with the moonshot's band (0.9–1.1×) shaded, so the readings can be compared world by world at
a glance. Readings are the rows' rule names after the first ", " (the rule itself: "as read").

    python scripts/synth_readings_plot.py results/synthbench/absorption/exclusive \\
        --out results/synthbench/absorption/exclusive/counts.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BAND = (0.9, 1.1)


def count_ratios(folder: Path) -> dict[str, dict[str, float]]:
    """{dictionary (file stem): {reading: L0 / true L0 the width holds}} for every JSON."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        rows = json.loads(path.read_text()).get("rows")
        if not rows:
            raise SystemExit(f"{path} holds no rows: not a synth_reread.py --json output")
        found[path.stem] = {
            (row["rule"].split(", ", 1)[1] if ", " in row["rule"] else "as read"):
            row["l0"] / row["true_l0_top_width"]
            for row in rows
        }  # fmt: skip
    if not found:
        raise SystemExit(f"no synth_reread.py JSON in {folder}")
    return found


def plot(ratios: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ratios)
    readings = list(dict.fromkeys(r for found in ratios.values() for r in found))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(names) + 1.6))
    ax.axvspan(*BAND, color="tab:green", alpha=0.15, label="within 10% of the truth")
    ax.axvline(1.0, color="tab:green", lw=0.8)
    for j, reading in enumerate(readings):
        ys = [
            i + (j - (len(readings) - 1) / 2) * 0.12
            for i, n in enumerate(names)
            if reading in ratios[n]
        ]
        xs = [ratios[n][reading] for n in names if reading in ratios[n]]
        ax.scatter(xs, ys, s=22, label=reading, zorder=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("L0 / true L0 of the features the width holds")
    ax.set_title(title, fontsize=9)
    under_the_label = -0.06 - 0.6 / len(names)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, under_the_label), ncol=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of synth_reread.py --json outputs")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--title", default="Each reading's count against the truth")
    args = p.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is not a folder")
    print(f"wrote {plot(count_ratios(args.folder), args.out, args.title)}")


if __name__ == "__main__":
    main()
