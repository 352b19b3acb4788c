"""Which TopK dictionary of a sweep should procedure D read? Two truth-free choices, scored.

Procedure D reads a trained TopK dictionary with no k (``synth_reread.py RUN CACHE risk_floor
--stars --exclusive TRAIN``); its weak step is which k of the sweep to read. For each ladder
(one seed's bench ``summary.json`` and the procedure D readings of its TopK runs) this prints
every reading against the moonshot's four bars and the k two rules choose without the truth:

- self-consistent: the smallest k whose reading keeps at most k per sample. A dictionary with
  fewer slots than features to name has merged some (its reading, unfolded, asks for more);
  the first k that leaves the reading room is the smallest that did not have to. A k whose
  dictionary leaves more than ``choose_k.DEAD_SHARE_GUARD`` of its latents dead (the summary's
  ``dead`` over ``d_sae``) is passed over: it misses features outright, so its reading fitting
  says nothing. Per seed, and (given several ladders of one world, only) on the seeds' mean reading
  and dead share, as ``hf-topafa choose-k``; also without the guard, as first filed.
- agreement: the k whose two seeds' dictionaries agree most (``synth_seed_agreement.py``).

The bars: the count within 0.9-1.1x of the true L0 the width holds, F1 and MCC at or above
the best TopK of that ladder's summary, and a per-sample correlation of at least 0.8.

    python scripts/synth_choose_k.py \\
        --ladder results/synthbench/d256/summary.json results/synthbench/absorption/d256/d256-8m-topk-k{8,12,16,24}.json \\
        --agreement results/synthbench/seeds/4k-d256-8m-seeds.json --json OUT.json
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from hf_topafa.helpers import read_json, script_command, write_json
from hf_topafa.training.choose_k import DEAD_SHARE_GUARD, self_consistent

COUNT_BAND = (0.9, 1.1)
CORRELATION_BAR = 0.8
TOPK_RUN = re.compile(r"(?:^|-)topk-k(\d+)$")


def topk_k(name: str) -> int | None:
    """The k of a plain TopK run or record name (``topk-k12``), None for anything else."""
    match = TOPK_RUN.search(name)
    return int(match.group(1)) if match else None


def best_topk(summary: dict, world: str) -> dict:
    """Best F1 and MCC over the plain TopK rows this package trained on ``world`` in one bench
    summary (a summary may hold several worlds), and each k's share of dead latents."""
    rows = [r for r in summary.get("rows", []) if r.get("world") == world
            and r.get("activation") == "topk" and r.get("trainer") == "hf_topafa"]  # fmt: skip
    if not rows:
        raise ValueError(f"the summary holds no TopK row of this package's trainer on {world}")
    return {"ks": sorted(r["k"] for r in rows), "f1": max(r["f1"] for r in rows),
            "mcc": max(r["mcc"] for r in rows),
            "dead_share": {r["k"]: r["dead"] / r["d_sae"] for r in rows}}  # fmt: skip


def reading_of(path: Path) -> dict:
    """One procedure D reading: its k, its world (the run folder's parent, as the bench names
    it) and its last (fully unfolded) row."""
    data = read_json(path)
    run = Path(data.get("run", ""))
    k = topk_k(run.name)
    if k is None or not data.get("rows"):
        raise ValueError(f"{path} is not a reading of a plain TopK run (synth_reread.py --json)")
    row = data["rows"][-1]
    return {"k": k, "world": run.parent.name, "path": str(path), "rule": row["rule"], "count": row["l0"],
            "held": row["true_l0_top_width"], "f1": row["f1"], "mcc": row["mcc"],
            "corr": row["l0_corr"]}  # fmt: skip


def bars_met(reading: dict, best: dict) -> dict[str, bool]:
    ratio = reading["count"] / reading["held"]
    return {"count": COUNT_BAND[0] <= ratio <= COUNT_BAND[1], "f1": reading["f1"] >= best["f1"],
            "mcc": reading["mcc"] >= best["mcc"], "corr": reading["corr"] >= CORRELATION_BAR}  # fmt: skip


def choice_on(counts: dict[int, float], dead_share: dict[int, float | None]) -> int | None:
    """The self-consistent k (``choose_k.self_consistent``) over the trained k (``dead_share``'s
    keys) in order, passing over a k whose share of dead latents is over the guard (None: not
    guarded); None where a smaller k that is kept is unread (the choice would depend on it)."""
    rows = []
    for k, share in sorted(dead_share.items()):
        if share is not None and share > DEAD_SHARE_GUARD:
            rows.append({"k": k, "reading": None, "dead_share": share})  # passed over, unread
        elif k in counts:
            rows.append({"k": k, "reading": counts[k], "dead_share": share})
        else:
            break
    return self_consistent(rows)["k"]


def self_consistent_k(readings: list[dict], best: dict, guard: bool = True) -> int | None:
    """Per seed: the smallest trained k whose reading keeps at most k per sample."""
    shares = best["dead_share"] if guard else dict.fromkeys(best["ks"])
    return choice_on({r["k"]: r["count"] for r in readings}, shares)


def seeds_mean_self_consistent_k(reports: list[dict], guard: bool = True) -> int | None:
    """``hf-topafa choose-k``'s version: the same on the seeds' mean reading and mean dead share,
    over the k that every seed's ladder read."""
    counts: dict[int, list[float]] = {}
    shares: dict[int, list[float]] = {}
    for report in reports:
        for r in report["readings"]:
            counts.setdefault(r["k"], []).append(r["count"])
        for k, share in report["best_topk"]["dead_share"].items():
            shares.setdefault(k, []).append(share)
    mean = {k: sum(c) / len(c) for k, c in counts.items() if len(c) == len(reports)}
    mean_share = {k: sum(s) / len(s) if guard else None for k, s in shares.items()}
    return choice_on(mean, mean_share)


def agreed_k(agreement: dict) -> int | None:
    """The TopK k whose two seeds agree most in a ``synth_seed_agreement.py`` JSON."""
    scored = [(r["seeds_mcc"], topk_k(r["name"])) for r in agreement.get("rows", [])]
    scored = [(s, k) for s, k in scored if k is not None]
    return max(scored)[1] if scored else None


def ladder_report(summary_path: Path, reading_paths: list[Path], agreed: int | None) -> dict:
    readings = sorted((reading_of(p) for p in reading_paths), key=lambda r: r["k"])
    worlds = sorted({r["world"] for r in readings})
    if len(worlds) != 1:
        raise ValueError(f"a ladder's readings must come from one world, found {worlds or 'none'}")
    best = best_topk(read_json(summary_path), worlds[0])
    for r in readings:
        if r["k"] not in best["ks"]:
            raise ValueError(f"{r['path']} reads TopK k = {r['k']}, which {summary_path} "
                             f"did not train (its TopK k: {best['ks']})")  # fmt: skip
        r["ratio"] = r["count"] / r["held"]
        r["bars"] = bars_met(r, best)
    unread = [k for k in best["ks"] if k not in {r["k"] for r in readings}]
    return {"summary": str(summary_path), "world": worlds[0], "best_topk": best, "readings": readings,
            "unread_k": unread, "self_consistent_k": self_consistent_k(readings, best),
            "self_consistent_k_unguarded": self_consistent_k(readings, best, guard=False),
            "agreed_k": agreed}  # fmt: skip


def own_k_tally(reports: list[dict]) -> dict:
    """Over the ladders, each read at its own (guarded, per seed) self-consistent k: the bars met
    of four per ladder, how many ladders meet the count, how many all four; a ladder with no
    choice, or whose choice was not read, meets none."""
    met = []
    for report in reports:
        chosen = next(
            (r for r in report["readings"] if r["k"] == report["self_consistent_k"]), None
        )
        met.append(chosen["bars"] if chosen else {})
    return {"ladders": len(reports), "bars": sum(sum(m.values()) for m in met),
            "of": 4 * len(reports), "count_in_band": sum(m.get("count", False) for m in met),
            "all_four": sum(bool(m) and all(m.values()) for m in met)}  # fmt: skip


def print_ladder(report: dict) -> None:
    best = report["best_topk"]
    print(f"\n{report['world']} ({report['summary']}): TopK k {best['ks']}, best F1 {best['f1']:.3f}, "
          f"best MCC {best['mcc']:.3f}")  # fmt: skip
    print(f"{'k':>4} {'count':>7} {'x held':>7} {'F1':>6} {'MCC':>6} {'corr':>6} {'dead':>6}  bars")
    for r in report["readings"]:
        met = [name for name, ok in r["bars"].items() if ok]
        print(f"{r['k']:>4} {r['count']:7.2f} {r['ratio']:7.3f} {r['f1']:6.3f} {r['mcc']:6.3f} "
              f"{r['corr']:6.3f} {best['dead_share'][r['k']]:6.1%}  {len(met)} "
              f"({', '.join(met) or 'none'})")  # fmt: skip
    for rule in ("self_consistent_k", "self_consistent_k_unguarded", "agreed_k"):
        k = report[rule]
        chosen = next((r for r in report["readings"] if r["k"] == k), None)
        verdict = (f"{sum(chosen['bars'].values())} of 4 bars" if chosen
                   else "not read" if k is not None else "no choice")  # fmt: skip
        print(f"  {rule.replace('_', ' ')}: {k if k is not None else '-'} ({verdict})")
    if report["unread_k"]:
        print(f"  trained but not read: k {report['unread_k']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ladder", nargs="+", action="append", required=True, metavar="FILE",
                   help="a bench summary.json, then the procedure D readings of its TopK runs "
                   "(repeat per seed)")  # fmt: skip
    p.add_argument("--agreement", default=None, help="synth_seed_agreement.py's JSON")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    try:
        agreed = agreed_k(read_json(args.agreement)) if args.agreement else None
        reports = [ladder_report(Path(files[0]), [Path(f) for f in files[1:]], agreed)
                   for files in args.ladder]  # fmt: skip
    except (OSError, ValueError) as err:
        raise SystemExit(f"synth_choose_k: {err}") from None
    except KeyError as err:
        raise SystemExit(
            f"synth_choose_k: a summary, reading or agreement file lacks {err}"
        ) from None
    for report in reports:
        print_ladder(report)
    worlds = {report["world"] for report in reports}
    several = len(reports) > 1 and len(worlds) == 1  # seeds of one world: a mean means something
    mean_k = seeds_mean_self_consistent_k(reports) if several else None
    unguarded = seeds_mean_self_consistent_k(reports, guard=False) if several else None
    if several:
        print(f"\nself-consistent k on the seeds' mean reading (as hf-topafa choose-k): "
              f"{mean_k if mean_k is not None else '- (no choice)'}; without the dead guard: "
              f"{unguarded if unguarded is not None else '- (no choice)'}")  # fmt: skip
    elif len(worlds) > 1:
        print(f"\nladders of {len(worlds)} worlds: no seeds' mean reading is taken across them")
    tally = own_k_tally(reports)
    print(f"at each ladder's own self-consistent k: {tally['bars']} bars of {tally['of']}, the "
          f"count in the band on {tally['count_in_band']} of {tally['ladders']} ladders, all four "
          f"bars on {tally['all_four']}")  # fmt: skip
    if args.json:
        write_json(args.json, {"ladders": reports, "seeds_mean_self_consistent_k": mean_k,
                               "seeds_mean_self_consistent_k_unguarded": unguarded,
                               "own_k_tally": tally, "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
