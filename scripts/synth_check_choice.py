"""A truth-free choice of k, made by ``hf-topafa choose-k`` on a synthetic world, scored against
the world's truth: the whole path a researcher without the truth takes, checked at its end.

``choose-k --eval-cache`` names the self-consistent k by each way of counting the atoms
(``self_consistent_by_reading``). The truth: ``hf-topafa evaluate --synthetic`` over the
sweep's folders as trained (the best TopK F1 and MCC of each seed, the bars), and one
``synth_reread.py --last-only`` reading per dictionary and way of counting (its count, F1, MCC
and per-sample correlation; the reading is told by its row's label). For each way this prints
and writes every k's four bars per seed (``synth_choose_k.bars_met``) and marks the k it chose,
with the true and false firings per sample the count is made of (a count can meet the truth by
missing as many features as it counts falsely);
``--plot`` draws each way's count over what the width holds against k, the band shaded.

    python scripts/synth_check_choice.py results/synthbench/ternary/choose_k.json \\
        --trained results/synthbench/ternary/trained.json \\
        --read results/synthbench/ternary/readings/*/*.json --json results/synthbench/ternary/check.json
"""

from __future__ import annotations

import argparse
import re

from synth_choose_k import COUNT_BAND, bars_met

from hf_topafa.evaluation.unfolded_l0 import EXCLUSIVE_LABEL, EXCLUSIVE_READINGS
from hf_topafa.helpers import read_json, script_command, write_json

RUN = re.compile(r"topk-k(\d+)-seed(\d+)")


def run_of(label: str) -> tuple[int, int]:
    """(k, seed) of the choose-k run folder a label or path names."""
    found = RUN.search(label)
    if found is None:
        raise ValueError(f"{label!r} names no choose-k run folder (topk-kK-seedS)")
    return int(found.group(1)), int(found.group(2))


def best_by_seed(trained: dict) -> dict[int, dict]:
    """Per seed, the best F1 and MCC over its dictionaries as trained."""
    best: dict[int, dict] = {}
    for row in trained["results"]:
        _, seed = run_of(row["sae"])
        seen = best.setdefault(seed, {"f1": row["f1"], "mcc": row["mcc"]})
        seen["f1"], seen["mcc"] = max(seen["f1"], row["f1"]), max(seen["mcc"], row["mcc"])
    return best


def reading_rows(readings: list[dict], name: str) -> dict[tuple[int, int], dict]:
    """Per (k, seed), the last row of the ``synth_reread.py`` reading called ``name``
    (``choose-k --reading``), told by the label its rule ends with."""
    label = EXCLUSIVE_LABEL + EXCLUSIVE_READINGS[name][1]
    rows = {run_of(data["run"]): data["rows"][-1] for data in readings
            if data["rows"][-1]["rule"].endswith(label)}  # fmt: skip
    for (k, seed), row in rows.items():
        if "true_pos" not in row:
            raise ValueError(f"the {name} reading of k = {k}, seed {seed} holds no true and false "
                             "firings per sample: read it again with synth_reread.py")  # fmt: skip
    return rows


def check(choice: dict, trained: dict, readings: list[dict]) -> dict:
    best = best_by_seed(trained)
    found = {}
    for name, chosen in choice["self_consistent_by_reading"].items():
        scored = {}
        for (k, seed), row in sorted(reading_rows(readings, name).items()):
            reading = {"count": row["l0"], "held": row["true_l0_top_width"], "f1": row["f1"],
                       "mcc": row["mcc"], "corr": row["l0_corr"], "true": row["true_pos"],
                       "false": row["false_pos"]}  # fmt: skip
            reading.update(
                ratio=reading["count"] / reading["held"], bars=bars_met(reading, best[seed])
            )
            scored.setdefault(str(seed), {})[str(k)] = reading
        found[name] = {"self_consistent_k": chosen, "seeds": scored}
    return {"best_topk": {str(s): b for s, b in best.items()}, "agreed_k": choice["chosen"]["k"],
            "readings": found}  # fmt: skip


def print_check(result: dict) -> None:
    print(f"agreement chose k = {result['agreed_k']}; best TopK per seed: "
          + ", ".join(f"seed {s} F1 {b['f1']:.3f} MCC {b['mcc']:.3f}"
                      for s, b in result["best_topk"].items()))  # fmt: skip
    for name, found in result["readings"].items():
        print(f"-- {name}: self-consistent k = {found['self_consistent_k']}")
        for seed, by_k in found["seeds"].items():
            for k, r in by_k.items():
                mark = " <- chosen" if int(k) == found["self_consistent_k"] else ""
                missed = [bar for bar, met in r["bars"].items() if not met]
                print(f"  seed {seed} k {k:>3}: count {r['count']:.2f} of {r['held']:.2f} "
                      f"({r['ratio']:.3f}x), F1 {r['f1']:.3f}, MCC {r['mcc']:.3f}, corr "
                      f"{r['corr']:.3f}, true {r['true']:.2f} and false {r['false']:.2f} per "
                      f"sample; bars {4 - len(missed)}/4"
                      + (f" (missed: {', '.join(missed)})" if missed else "") + mark)  # fmt: skip


def plot_check(result: dict, path: str, title: str) -> None:
    """Per way of counting, count / truth against k (seed 0 solid, others dashed), the band
    shaded and the chosen k ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.axhspan(*COUNT_BAND, color="tab:green", alpha=0.15, label="within 10% of the truth")
    for i, (name, found) in enumerate(result["readings"].items()):
        color = f"C{i}"
        for seed, by_k in found["seeds"].items():
            ks = sorted(by_k, key=int)
            ratios = [by_k[k]["ratio"] for k in ks]
            ax.plot([int(k) for k in ks], ratios, color=color, marker="o", ms=3,
                    ls="-" if seed == "0" else "--", label=f"{name}, seed {seed}")  # fmt: skip
            chosen = str(found["self_consistent_k"])
            if chosen in by_k:
                ax.scatter([int(chosen)], [by_k[chosen]["ratio"]], s=120, facecolors="none",
                           edgecolors=color, zorder=3)  # fmt: skip
    ax.set_xlabel("TopK k of the dictionary read (ringed: the k each reading chose)")
    ax.set_ylabel("count / true L0 the width holds")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("choose_k", help="the choose_k.json of a sweep read with --eval-cache")
    p.add_argument("--trained", required=True, help="evaluate --synthetic of the runs as trained")
    p.add_argument("--read", required=True, nargs="+",
                   help="synth_reread.py --last-only JSONs of the sweep's runs")  # fmt: skip
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="a PNG of each reading's count against k")
    p.add_argument("--title", default="Each reading's count against the truth, per k")
    args = p.parse_args()
    choice = read_json(args.choose_k)
    if "self_consistent_by_reading" not in choice:
        raise SystemExit(f"{args.choose_k} has no self-consistent k by reading: run choose-k "
                         "again with --eval-cache (finished runs are kept)")  # fmt: skip
    try:
        result = check(choice, read_json(args.trained), [read_json(path) for path in args.read])
    except ValueError as err:  # a file that is not what it should be: one line, no traceback
        raise SystemExit(str(err)) from None
    print_check(result)
    if args.json:
        write_json(args.json, {"command": script_command(), **result})
    if args.plot:
        plot_check(result, args.plot, args.title)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
