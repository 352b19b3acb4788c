"""Choosing TopK's k with no truth: train every k from two or more seeds, keep the k they agree on.

Features that are in the data come back from any seed; what a seed makes up does not
(``evaluation.agreement``). On SynthSAEBench's worlds, where the true features are known, the k
whose seeds' dictionaries agreed most was mostly the k whose dictionary matched the truth best,
sometimes through a near-tie; on the 4k world at 12M samples it was the best-F1 k, 0.03 under
the best MCC (results/synthbench/README.md, "Choosing k with no truth"). A near-tie is printed
because it can hold the better dictionary. This runs that procedure on any data
``hf-topafa train`` reads. Each (k, seed) is an ordinary run folder under --output, so a killed
sweep continues where it stopped and a finished run is left as it is.

Beside it, with an --eval-cache, the self-consistent k: each dictionary read as procedure D
reads it (``risk_floor``, its absorbed ancestors unfolded by levels, no group of latents that
fire nested), and the smallest k whose reading keeps at most k per token. A dictionary with
fewer slots than features merges parents into children, and the unfolded reading then asks for
more than k. A k whose dictionaries leave many latents dead is passed over: they miss features
outright, so their reading fits in k for the wrong reason (the flat world's k = 5). On two of
four worlds built after the rule was fixed it chose a k meeting every bar where agreement chose
too small or too large a one; on the other two the reading missed the count at every k
(results/synthbench/README.md, "The dense config in 384 dimensions", "A dead guard").
``--reading`` counts the atoms as the later readings do (hubs silent, folded, doubles dropped,
lone triangles: ``evaluation.unfolded_l0.EXCLUSIVE_READINGS``).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from ..evaluation.unfolded_l0 import EXCLUSIVE_LABEL, EXCLUSIVE_READINGS

# Agreements closer than this swapped order between dictionaries of near-equal quality on the
# synthetic worlds (4k world: k = 12 and 24 at 0.649 / 0.650, MCC 0.668 / 0.666): call it a tie.
NEAR_TIE = 0.005
SET_PER_RUN = ("--seed", "--resume", "--overwrite")
READING = "risk_floor"  # procedure D's reader
# --reader: risk_refit re-fits amplitudes; risk_calibrated, risk_tail, risk_balance and
# risk_switch also set the price (sae.risk, sae.balance)
READERS = ("risk_floor", "risk_refit", "risk_calibrated", "risk_tail", "risk_balance",
           "risk_switch")  # fmt: skip
READING_TOKENS = 8192  # held-out tokens each dictionary is read on
READINGS = tuple(EXCLUSIVE_READINGS)  # --reading: how procedure D's reading counts the atoms
# A dictionary leaving more of its latents dead than this has not learned its width: it misses
# features outright, so its reading fitting in k says nothing. On every synthetic sweep the dead
# share was at most 0.5% or at least 11% (flat world k = 5: 16%, where the unguarded choice
# missed), so the threshold sits in that gap (results/synthbench/README.md, "A dead guard").
DEAD_SHARE_GUARD = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-topafa choose-k",
        allow_abbrev=False,  # --seed must not pass for --seeds
        description="Train a TopK (or BatchTopK) SAE at each k from two or more seeds, match the "
        "seeds' dictionaries one to one (`hf-topafa agreement`) and choose the k whose seeds "
        "agree most: the dictionary the data fixes, found with no ground truth. With "
        "--eval-cache, also read each dictionary with no k (risk_floor, absorbed ancestors "
        "unfolded) and name the self-consistent k: the smallest whose reading keeps at most k.",
        epilog="Every other option goes to `hf-topafa train` for each run (see its --help), e.g. "
        "--activation-cache, --max-tokens, --batch-size, --d-sae. --afa-coef defaults to 0 here.",
    )
    parser.add_argument("--k", type=int, nargs="+", required=True, help="two or more values of k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="initialization and data-order seeds, two or more (default: 0 1)")  # fmt: skip
    parser.add_argument("--output", required=True,
                        help="folder for one run folder per (k, seed), the table and the plot")  # fmt: skip
    parser.add_argument("--activation", choices=("topk", "batchtopk"), default="topk")
    parser.add_argument("--reader", choices=READERS, default=READING,
                        help="the rule that reads each dictionary with no k, absorbed ancestors "
                        f"unfolded (default: {READING}; risk_refit re-fits each token's "
                        "amplitudes by least squares, slower; risk_calibrated also sets its "
                        "price by empirical Bayes, slower still; risk_tail reads it from "
                        "the residual's own tail; risk_balance sets it where false and "
                        "missed latents are expected to balance; risk_switch takes the "
                        "balance's price, or the tail's where the balance's fit fails)")  # fmt: skip
    parser.add_argument("--reading", choices=READINGS, default=None,
                        help="how the atoms are counted (default: exclusive, procedure D's): hubs: "
                        "an atom is silent where its group's parent's own row fires, so that "
                        "parent is not counted twice; folded: that row folded into the atom, one "
                        "latent per parent; doubles: folded, without the atoms that fire inside "
                        "another latent and are most of its firings; lone: folded, with rows "
                        "that meet only in threes grouped too (absorption; results/synthbench/"
                        "README.md, \"Parents counted twice\", \"Hubs folded into their atoms\")")  # fmt: skip
    parser.add_argument("--hubs", action="store_true", help="the same as --reading hubs")
    parser.add_argument("--json", default=None, help="default: OUTPUT/choose_k.json")
    parser.add_argument("--plot", default=None, help="default: OUTPUT/choose_k.png")
    return parser


def parse_command(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This command's options, checked, and the options left for ``hf-topafa train``."""
    args, train_argv = build_parser().parse_known_args(argv)
    if len(set(args.k)) < 2 or min(args.k) < 1:
        raise ValueError(f"--k needs two or more distinct positive values, got {args.k}")
    if len(set(args.seeds)) < 2:
        raise ValueError(f"--seeds needs two or more distinct seeds, got {args.seeds}")
    if args.hubs and args.reading not in (None, "hubs"):
        raise ValueError(f"--hubs is --reading hubs; it cannot go with --reading {args.reading}")
    args.reading = "hubs" if args.hubs else args.reading or "exclusive"
    given = [option.split("=")[0].replace("_", "-") for option in train_argv]
    for name in SET_PER_RUN:
        if name in given:
            raise ValueError(f"{name} is set by choose-k for each run (seeds: --seeds; a killed "
                             "sweep continues by itself); leave it out")  # fmt: skip
    if "--afa-coef" not in given:
        train_argv = [*train_argv, "--afa-coef", "0"]  # a plain TopK baseline, not the paper's
    return args, train_argv


def run_folder(output: str | Path, activation: str, k: int, seed: int) -> Path:
    return Path(output) / f"{activation}-k{k}-seed{seed}"


def train_sweep(
    args: argparse.Namespace, train_argv: list[str]
) -> tuple[dict[tuple[int, int], Path], str | None]:
    """Every (k, seed) trained, or continued, or left as it is when finished; and the held-out
    cache they were trained with (None: harvested live)."""
    from .train import train
    from .train_config import parse_command as parse_train

    runs = {}
    todo = list(itertools.product(sorted(set(args.k)), dict.fromkeys(args.seeds)))
    for i, (k, seed) in enumerate(todo, 1):
        folder = run_folder(args.output, args.activation, k, seed)
        print(f"[{i}/{len(todo)}] {args.activation} k = {k}, seed {seed}: {folder}", flush=True)
        per_run = ["--activation", args.activation, "--k", str(k), "--seed", str(seed)]
        (config,) = parse_train([*train_argv, *per_run, "--output", str(folder)])
        runs[k, seed] = train(config)
    return runs, config.data.eval_cache


def held_out_activations(eval_cache: str):
    """The first ``READING_TOKENS`` tokens of the held-out cache, read once for every run."""
    from ..data.harvest import ActivationCache

    cache = ActivationCache(eval_cache)
    return cache.first_activations(min(READING_TOKENS, cache.num_tokens))


def reading_counts(sae_or_folder, acts, reader: str = READING) -> dict[str, float]:
    """Per held-out token, what procedure D's reading keeps of a run's dictionary (the loaded
    SAE, or its folder), read by ``reader``, for each way of counting its atoms (``READINGS``:
    one evaluation reads them all)."""
    from ..evaluation.evaluate import evaluate_activations

    metrics, _ = evaluate_activations(sae_or_folder, acts, read_with=reader, unfold=True)
    sparsity = metrics["sparsity"]
    return {name: sparsity[f"l0_unfolded_by_levels{suffix}_mean"]
            for name, (suffix, _) in EXCLUSIVE_READINGS.items()}  # fmt: skip


def self_consistent(rows: list[dict], reader: str = READING, reading: str = "exclusive") -> dict:
    """The smallest k whose seeds' readings keep at most k per token on average, passing over a
    k whose dictionaries leave more than ``DEAD_SHARE_GUARD`` of their latents dead (a row's
    ``dead_share``; such a row needs no reading). None where no k is left: the sweep needs a
    larger k."""
    passed_over = [row["k"] for row in rows if (row.get("dead_share") or 0) > DEAD_SHARE_GUARD]
    fits = [row["k"] for row in rows if row["k"] not in passed_over and row["reading"] <= row["k"]]
    return {"k": min(fits) if fits else None, "passed_over": passed_over,
            "dead_share_guard": DEAD_SHARE_GUARD,
            "reader": reader, "reading": reading,
            "rule": f"{reader}{EXCLUSIVE_LABEL}{EXCLUSIVE_READINGS[reading][1]}",
            "tokens": READING_TOKENS}  # fmt: skip


def agreement_by_k(decoders: dict[int, list]) -> list[dict]:
    """Per k, how far its seeds' decoders agree: the mean over seed pairs of the matched |cos|
    and of the share of latents matched above 0.7."""
    from ..evaluation.agreement import dictionary_agreement

    rows = []
    for k, weights in sorted(decoders.items()):
        pairs = [dictionary_agreement(a, b) for a, b in itertools.combinations(weights, 2)]
        rows.append({"k": k, "agreement": sum(p["mcc"] for p in pairs) / len(pairs),
                     "above_0.7": sum(p["above_0.7"] for p in pairs) / len(pairs)})  # fmt: skip
    return rows


def choice(rows: list[dict]) -> dict:
    """The k whose seeds agree most, any other k within ``NEAR_TIE`` of it, and whether it is
    the sweep's smallest or largest k (then the agreement may peak beyond the sweep)."""
    best = max(rows, key=lambda row: row["agreement"])
    ties = [r["k"] for r in rows if r is not best and best["agreement"] - r["agreement"] < NEAR_TIE]
    ks = [row["k"] for row in rows]
    edge = "smallest" if best["k"] == min(ks) else "largest" if best["k"] == max(ks) else None
    return {"k": best["k"], "agreement": best["agreement"], "near_ties": ties, "edge": edge}


def held_out_figures(folder: Path) -> dict:
    """What a run printed on its held-out tokens (metrics.json), where it did."""
    metrics = json.loads((folder / "metrics.json").read_text())
    keys = {"l0": "l0_mean", "normalized_mse": "normalized_mse", "dead": "dead_features_held_out"}
    return {name: metrics.get(key) for name, key in keys.items()}


def describe(
    args: argparse.Namespace, runs: dict[tuple[int, int], Path], eval_cache: str | None = None
) -> dict:
    """Agreement per k, how far training moved each decoder from its start, chance, the choice;
    with ``eval_cache``, each dictionary's reading and the self-consistent k."""
    from ..evaluation.agreement import dictionary_agreement, starting_decoder
    from ..sae.modeling_sae import SparseAutoencoder

    def from_start(key) -> float:  # the decoder against the one its seed started it from
        return dictionary_agreement(saes[key].W_dec, starting_decoder(saes[key], key[1]))["mcc"]

    saes = {key: SparseAutoencoder.from_pretrained(folder) for key, folder in runs.items()}
    acts = held_out_activations(eval_cache) if eval_cache is not None else None
    decoders: dict[int, list] = {}
    for (k, _), sae in saes.items():
        decoders.setdefault(k, []).append(sae.W_dec)
    rows = agreement_by_k(decoders)
    for row in rows:
        keys = [key for key in runs if key[0] == row["k"]]
        figures = [held_out_figures(runs[key]) for key in keys]
        row["from_start"] = sum(from_start(key) for key in keys) / len(keys)
        row["runs"] = [{"seed": key[1], "folder": str(runs[key]), **f}
                       for key, f in zip(keys, figures, strict=True)]  # fmt: skip
        shares = [f["dead"] / saes[key].config.d_sae
                  for key, f in zip(keys, figures, strict=True) if f["dead"] is not None]  # fmt: skip
        row["dead_share"] = sum(shares) / len(shares) if shares else None
        if acts is not None:  # the SAEs loaded above, not read from disk again
            for key, run in zip(keys, row["runs"], strict=True):
                run["readings"] = reading_counts(saes[key], acts, args.reader)
                run["reading"] = run["readings"][args.reading]
            row["readings"] = {name: sum(run["readings"][name] for run in row["runs"]) / len(keys)
                               for name in READINGS}  # fmt: skip
            row["reading"] = row["readings"][args.reading]
    some = next(iter(saes.values()))
    first, second = list(dict.fromkeys(args.seeds))[:2]
    chance = dictionary_agreement(starting_decoder(some, first), starting_decoder(some, second))
    result = {"activation": args.activation, "seeds": args.seeds, "rows": rows,
              "chance": chance["mcc"], "chosen": choice(rows)}  # fmt: skip
    if eval_cache is not None:
        result["self_consistent"] = self_consistent(rows, args.reader, args.reading)
        result["self_consistent_by_reading"] = {
            name: self_consistent([{**row, "reading": row["readings"][name]} for row in rows],
                                  args.reader, name)["k"]
            for name in READINGS
        }  # fmt: skip
    return result


def report(result: dict) -> str:
    read = "self_consistent" in result
    lines = [f"{'k':>6} {'seeds agree':>12} {'above 0.7':>10} {'from start':>11} "
             f"{'held-out L0':>12} {'norm. MSE':>10} {'dead':>7}"
             + (f" {'reading keeps':>14}" if read else "") + "  (held-out figures: seeds' mean)"]  # fmt: skip
    for row in result["rows"]:
        runs = row["runs"]
        l0, mse = (sum(r[key] or 0 for r in runs) / len(runs) for key in ("l0", "normalized_mse"))
        dead = "-" if row.get("dead_share") is None else f"{row['dead_share']:.1%}"
        lines.append(f"{row['k']:>6} {row['agreement']:>12.3f} {row['above_0.7']:>10.1%} "
                     f"{row['from_start']:>11.3f} {l0:>12.1f} {mse:>10.4f} {dead:>7}"
                     + (f" {row['reading']:>14.2f}" if read else ""))  # fmt: skip
    chosen = result["chosen"]
    tie = (f"; within {NEAR_TIE} of it, a tie: k = {', '.join(map(str, chosen['near_ties']))}"
           if chosen["near_ties"] else "")  # fmt: skip
    lines.append(f"chosen by the seeds' agreement: k = {chosen['k']} (its seeds agree at "
                 f"{chosen['agreement']:.3f}; two fresh starts of this shape: "
                 f"{result['chance']:.3f}){tie}")  # fmt: skip
    if chosen["edge"]:
        beyond = "below" if chosen["edge"] == "smallest" else "above"
        lines.append(f"k = {chosen['k']} is the sweep's {chosen['edge']} k: the agreement may "
                     f"peak {beyond} it; add a k {beyond} and run again (finished runs are kept)")  # fmt: skip
    lines.append("from start: each decoder matched to the one it started from; near 1, training "
                 "has barely moved it, and the agreement says little yet")  # fmt: skip
    lines.append(self_consistent_line(result))
    if "self_consistent_by_reading" in result:
        ks = result["self_consistent_by_reading"].items()
        lines.append("self-consistent k by each way of counting the atoms (--reading): "
                     + ", ".join(f"{name} {'none' if k is None else k}" for name, k in ks))  # fmt: skip
    return "\n".join(lines)


def self_consistent_line(result: dict) -> str:
    if "self_consistent" not in result:
        return "self-consistent k: needs --eval-cache (held-out activations to read on)"
    chosen = result["self_consistent"]
    k, passed = chosen["k"], chosen.get("passed_over", [])
    guard = (f"; passed over, more than {DEAD_SHARE_GUARD:.0%} of their latents dead: "
             f"k = {', '.join(map(str, passed))}" if passed else "")  # fmt: skip
    if k is None:
        return ("self-consistent k: none; every k's reading keeps more than k per token: add a "
                f"larger k and run again (finished runs are kept){guard}")  # fmt: skip
    smallest = min(row["k"] for row in result["rows"] if row["k"] not in passed)
    below = " (the sweep's smallest: a k below may fit too)" if k == smallest else ""
    counted = EXCLUSIVE_READINGS[chosen["reading"]][1]
    return (f"self-consistent k = {k}: the smallest k whose reading ({chosen['reader']}, absorbed "
            f"ancestors unfolded{counted}) keeps at most k per held-out token{below}{guard}")  # fmt: skip


def cli_main(argv: list[str]) -> int:
    from ..evaluation.plots import save_agreement_plot
    from ..helpers import write_json

    args, train_argv = parse_command(argv)
    runs, eval_cache = train_sweep(args, train_argv)
    result = describe(args, runs, eval_cache)
    print(report(result))
    json_path = args.json or Path(args.output) / "choose_k.json"
    plot_path = args.plot or Path(args.output) / "choose_k.png"
    write_json(json_path, {"command": "hf-topafa choose-k " + " ".join(argv), **result})
    save_agreement_plot(result["rows"], result["chance"], result["chosen"]["k"], plot_path)
    print(f"wrote {json_path} and {plot_path}")
    return 0
