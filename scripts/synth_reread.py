"""A trained SAE's dictionary read by other selection rules at inference, scored against the truth.

The weights stay as trained; only the rule that picks each sample's features changes (an
estimated threshold is dropped, so rules that need one start from their own estimate). This is
how the k-free rules were screened post hoc: e.g. the risk inflation criterion on the TopK k = 16
and afa_band dictionaries of the 4k world.

    python scripts/synth_reread.py runs/synthbench/runs/synthsaebench-4k/topk-k16 \\
        runs/synthbench/cache/synthsaebench-4k-eval risk_inflation noise_floor topk:8 afa_batch@1.75

``oracle:WIDTH`` in place of a run reads the world's own WIDTH most frequent features as the
dictionary (``ground_truth.oracle_sae``): what each rule does when the dictionary is perfect;
``oracle:WIDTH:whitened`` reads them with the least-interference linear encoder,
``oracle:WIDTH:prior`` with each feature's firing rate as a Bayes prior in its encoder bias.

    python scripts/synth_reread.py oracle:1024 runs/synthbench/cache/synthsaebench-4k-eval \\
        topk:12 noise_batch afa_energy

First it prints what ``afa_kurtosis``'s count would read on a perfect dictionary of the run's
width, from the true codes alone, and the two factors that move it off the L0 the width holds
(``ground_truth.kurtosis_reading_of_truth``).

``--unabsorb`` scores every reading a second time with each latent read along its decoder row
less the direction it shares with its above-chance neighbours (``absorption.unabsorbed_directions``:
absorbed parents), the code and reconstruction unchanged. It prints how many rows changed and,
against the truth, how often the shared direction is nearest an ancestor of the row's feature.
``--unfold`` adds two more scores: the absorbed parents as latents of their own
(``absorption.UnfoldedView``, width d_sae + one latent per group of rows that share a direction),
and the same repeated over the atoms until they share none (``absorption.unfolded_by_levels``:
the ancestors above the parents). ``--stars`` adds one more: by levels, with no atom for a group
whose rows all lean on one of them and not on each other (``absorption.star_groups``: that row is
the parent, already in the dictionary). ``--exclusive CACHE`` adds another: by levels, with no
group of latents that fire nested (``absorption.nested_pairs``) in each reading's code of the
first ``--firing-samples`` activations of CACHE (samples not scored: the training cache), and
``--hubs`` one more after it: each atom silent where its group's parent's own row fires
(``absorption.group_hubs``: the parent is counted once), and ``--fold`` one more: each hub folded
into its atom, which fires where the hub did, the hub's column left out (``absorption.FoldedView``:
the parent counted once, on one latent, and its ancestors on the hub's firings too).
``--doubles`` one more after that: without the atoms that are most of another latent's firings
and fire inside them (``absorption.doubled_atoms``: one feature counted twice).
``--triangles`` groups, in those exclusive readings, rows that meet in threes above the triangle
chance level too (``absorption.triangle_coherence``), ``--lone-triangles`` only rows that meet no
other above the pair level, each triangle a group of its own.
``--last-only`` scores only each rule's last reading (procedure D's with ``--stars
--exclusive``), for readers as slow as ``risk_refit``. The JSON's ``unabsorb`` holds each
exclusive reading's atoms, hubs and doubles under its row's rule (files written before
2026-12-08 hold one figure per rule, the last reading's).

    python scripts/synth_reread.py runs/synthbench_dense12m/runs/synthsaebench-4k-dense/topk-k16 \
        runs/synthbench_dense12m/cache/synthsaebench-4k-dense-eval topk:16 risk_batch --unabsorb
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.ground_truth import (
    TruthSet,
    ancestor_steps,
    codes_of,
    firings_by_latent,
    hierarchy_parents,
    kurtosis_reading_of_truth,
    matched_features,
    nearest_features,
    oracle_sae,
    readings_of,
    score_against_truth,
)
from hf_topafa.evaluation.unfolded_l0 import EXCLUSIVE_LABEL
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae.absorption import NESTED_SAMPLES, unabsorbed_directions
from hf_topafa.sae.reading import read_with

HUBS = ", hubs"
DOUBLES = ", doubles dropped"
SHOWN = ("l0", "true_l0_top_width", "f1", "mcc", "precision", "recall", "l0_corr", "dead")


def shared_is_ancestor(unabsorbed, match, world) -> float | None:
    """Of the rows that changed, the share whose shared direction is nearest (|cosine|) a true
    feature that is an ancestor of the row's matched feature in the world's hierarchy."""
    changed = unabsorbed.changed.nonzero().squeeze(-1)
    if not len(changed):
        return None
    nearest = nearest_features(unabsorbed.shared[changed], world.feature_dict.feature_vectors)
    feature = match[changed]
    is_ancestor = torch.zeros(len(changed), dtype=torch.bool)
    for above in ancestor_steps(hierarchy_parents(world)):
        is_ancestor |= above[feature] == nearest
    return int(is_ancestor.sum()) / len(changed)


@torch.no_grad()
def kept_true_and_false(sae, world, truth: TruthSet, match, batch: int = 4096) -> dict:
    """Per sample, how many kept latents' matched features (``match``, one per latent) are on
    (true) and off (false)."""
    true, false = firings_by_latent(sae, world, truth, match, batch=batch)
    return {"true_pos": float(true.sum()) / truth.num_samples,
            "false_pos": float(false.sum()) / truth.num_samples}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "run", help="a trained SAE folder, or oracle:WIDTH[:whitened|:prior] (the world's features)"
    )
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument(
        "rules",
        nargs="+",
        help="rule names; name:k for rules with a k; name@LEVEL to fix an estimated threshold",
    )
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--json", default=None, help="also write the rows, with the command, here")
    p.add_argument(
        "--unabsorb",
        action="store_true",
        help="also score each reading with the unabsorbed feature directions",
    )
    p.add_argument(
        "--unfold",
        action="store_true",
        help="also score each reading with the absorbed parents as latents of their own, one "
        "level and by levels (absorption.UnfoldedView, unfolded_by_levels; implies --unabsorb)",
    )
    p.add_argument(
        "--stars",
        action="store_true",
        help="also score each reading unfolded by levels with no atom for a star group "
        "(absorption.star_groups; implies --unfold)",
    )
    p.add_argument(
        "--exclusive",
        metavar="CACHE",
        default=None,
        help="also score each reading unfolded by levels with no group of latents that fire "
        "nested in its code of CACHE's first activations (absorption.nested_pairs; a cache not "
        "scored, e.g. the training one; implies --unfold)",
    )
    p.add_argument(
        "--hubs",
        action="store_true",
        help="with --exclusive, also score each reading so with each atom silent where its "
        "group's parent's own row fires (absorption.group_hubs; the last reading)",
    )
    p.add_argument(
        "--fold",
        action="store_true",
        help="with --exclusive, also score each reading with each hub folded into its atom: the "
        "atom fires where the hub did and the hub's column is left out (absorption.FoldedView; "
        "the last reading; implies --hubs)",
    )
    p.add_argument(
        "--doubles",
        action="store_true",
        help="with --exclusive, also score each reading folded without the atoms that double "
        "another latent: most of its firings, inside them (absorption.doubled_atoms; the last "
        "reading; implies --fold)",
    )
    p.add_argument(
        "--triangles",
        action="store_const",
        const="joined",
        help="with --exclusive, group rows that meet in threes above the triangle chance level "
        "too (absorption.triangle_coherence) in the exclusive readings",
    )
    p.add_argument(
        "--lone-triangles",
        action="store_const",
        const="lone",
        dest="triangles",
        help="as --triangles, but only rows that meet no other above the pair level: each "
        "triangle a group of its own",
    )
    p.add_argument("--firing-samples", type=int, default=NESTED_SAMPLES)
    p.add_argument(
        "--last-only",
        action="store_true",
        help="score only each rule's last reading (with --stars --exclusive: procedure D's, the "
        "one synth_choose_k.py reads); for slow readers",
    )
    p.add_argument(
        "--unabsorb-level",
        type=float,
        default=None,
        help="the cosine above which two rows count as neighbours (default: what random "
        "directions reach by chance, absorption.chance_coherence)",
    )
    args = p.parse_args()
    args.unfold = args.unfold or args.stars or args.exclusive is not None
    args.fold = args.fold or args.doubles
    args.hubs = args.hubs or args.fold
    if args.triangles and args.exclusive is None:
        option = "--triangles" if args.triangles == "joined" else "--lone-triangles"
        raise SystemExit(f"{option} groups the exclusive readings: give --exclusive CACHE")
    if args.hubs and args.exclusive is None:
        option = "--doubles" if args.doubles else "--fold" if args.fold else "--hubs"
        raise SystemExit(f"{option} reads the hubs from the codes of --exclusive CACHE: give both")
    torch.set_num_threads(1)
    cache = ActivationCache(args.cache)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=args.samples)
    kind, _, width = args.run.partition(":")
    if kind == "oracle":
        width, _, encoder = width.partition(":")
        if not width.isdigit():
            raise SystemExit(f"oracle:WIDTH needs a whole number of features, not {width!r}")
        try:
            base = oracle_sae(world, truth, int(width), encoder or "matched")
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    else:
        base = SparseAutoencoder.from_pretrained(args.run)
    features = world.feature_dict.feature_vectors
    firing_x = None
    if args.exclusive is not None:
        firing_x = ActivationCache(args.exclusive).first_activations(args.firing_samples)
    unabsorbed = found = None
    if args.unabsorb or args.unfold:
        unabsorbed = unabsorbed_directions(base.W_dec, args.unabsorb_level)
    # each reading's latents matched to the truth once, from the dictionary as trained
    match = {}
    for suffix, view, directions in readings_of(base, unabsorbed, args.unfold, args.stars):
        match[suffix] = matched_features(view.W_dec if directions is None else directions, features)
    if unabsorbed is not None:
        found = {"level": unabsorbed.level, "rows_changed": int(unabsorbed.changed.sum()),
                 "shared_is_ancestor": shared_is_ancestor(unabsorbed, match[""], world)}  # fmt: skip
        if args.unfold:
            found["parent_atoms"] = len(match[", unfolded"]) - base.config.d_sae
            found["atoms_by_levels"] = len(match[", unfolded by levels"]) - base.config.d_sae
        if args.stars:
            stars = ", unfolded by levels, stars"
            found["atoms_by_levels_stars"] = len(match[stars]) - base.config.d_sae
        if args.exclusive is not None:
            found["firing"] = {"cache": args.exclusive, "samples": len(firing_x)}
            found["atoms_by_levels_exclusive"] = {}
        print(json.dumps({"unabsorb": found}))
    expected = kurtosis_reading_of_truth(truth, base.config.d_sae)
    print(json.dumps({"truth": {key: round(v, 3) for key, v in expected.items()}}))
    rows = []
    for rule in args.rules:
        try:
            read = read_with(base, rule)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        codes = None if firing_x is None else codes_of(read, firing_x)
        views = readings_of(read, unabsorbed, args.unfold, args.stars, codes, args.hubs, args.fold,
                            args.triangles, args.doubles)  # fmt: skip
        for suffix, sae, directions in views[-1:] if args.last_only else views:
            label = rule + suffix  # each exclusive reading's groups, hubs and doubles: its own
            if suffix.startswith(EXCLUSIVE_LABEL):  # its groups follow this reading's code
                match[suffix] = matched_features(sae.W_dec, features)
                found["atoms_by_levels_exclusive"][label] = sae.atoms
            if suffix.startswith(EXCLUSIVE_LABEL + HUBS):
                found.setdefault("hubs", {})[label] = sae.hubs
            if DOUBLES in suffix:
                found.setdefault("doubles", {})[label] = sae.doubles
            row = {
                **score_against_truth(sae, world, truth, directions=directions)["row"],
                **kept_true_and_false(sae, world, truth, match[suffix]),
            }
            shown = {key: round(row[key], 3) if isinstance(row[key], float) else row[key]
                     for key in (*SHOWN, "true_pos", "false_pos")}  # fmt: skip
            print(json.dumps({"rule": label, **shown}))
            rows.append({"rule": label, **row})
    if args.json:
        write_json(args.json, {"run": args.run, "cache": args.cache, "samples": truth.num_samples,
                               "true_l0": rows[0]["true_l0"] if rows else None,
                               "kurtosis_reading_of_truth": expected,
                               "unabsorb": found,
                               "command": script_command(), "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
