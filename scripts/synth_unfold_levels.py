"""Where an unfolded-by-levels reading's latents come from, level by level, against the truth.

``absorption.unfolded_by_levels`` adds atoms in levels: the SAE's own rows, then one atom per
group of rows that share a direction, then one per group of those atoms, and so on. Per level this
prints how many latents it has, how many of them fire per sample, how many of those firings are
true (the latent's matched feature, matched one to one on |cosine| as SAELens's MCC does, is
active in the sample) or false, the median |cosine| with the matched feature, and the hierarchy
depth of the matched features (0: a root; "outside": a feature with no parent and no child).
It says which level a count that overshoots takes its false latents from, and how often a
level's atoms fire together with a member that points at the atom's own nearest feature (one
feature counted twice). Each reading comes three times, four with ``--exclusive``: with each
level's atoms grouped at the chance level of their own number (the committed readings), with
the first level's cosine held at every level (``held=True``), with no atom for a star group
(``stars=True``, ``absorption.star_groups``), and, given ``--exclusive CACHE``, with no group of
latents that fire nested in the reading's code of CACHE's first activations
(``absorption.nested_pairs``), and with ``--hubs`` that reading once more with each atom silent
where its group's parent's own row fires (``absorption.group_hubs``).
Last, the first level read alone, its atoms banded by the size of their group: how often each
band's firings are true, and how many of its groups are one parent's children.

    python scripts/synth_unfold_levels.py runs/synthbench16k/runs/synthsaebench-16k/topk-k25 \\
        runs/synthbench16k/cache/synthsaebench-16k-eval risk_floor --samples 5000 --json out.json
"""

from __future__ import annotations

import argparse

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.agreement import matched_cosines
from hf_topafa.evaluation.ground_truth import (
    TruthSet,
    codes_of,
    firings_by_latent,
    hierarchy_depths,
    hierarchy_parents,
    nearest_features,
)
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae.absorption import (
    NESTED_SAMPLES,
    UnfoldedView,
    exclusive_views,
    unfolded_by_levels,
    unfolded_further,
)
from hf_topafa.sae.reading import read_with


def unfolding_levels(view) -> list[UnfoldedView]:
    """The views (``view`` and those it reads) that added atoms, the first level first."""
    levels = []
    while isinstance(view, UnfoldedView):
        levels = [view, *levels] if view.added else levels
        view = view.sae
    return levels


def level_sizes(view) -> list[int]:
    """[the SAE's own width, atoms added by the first level, by the second, ...] (a level that
    added none is left out)."""
    added = [level.added for level in unfolding_levels(view)]
    return [view.W_dec.shape[0] - sum(added), *added]


def doubled_by_members(
    view, world, truth: TruthSet, samples: int, batch: int = 1000
) -> list[float]:
    """Per level after the rows: how often per sample an atom fires together with one of its own
    members whose nearest true feature (|cos|) is the atom's too, so that one feature is counted
    twice in the sample (a group whose member is already the parent, ``absorption.star_groups``)."""
    nearest = nearest_features(view.W_dec, world.feature_dict.feature_vectors)
    levels = []  # (first atom, the atoms' member matrix [latents, atoms]) per level
    for level in unfolding_levels(view):
        base = level.W_dec.shape[0] - level.added
        members = torch.zeros(view.W_dec.shape[0], level.added)
        member = (level.group >= 0).nonzero().squeeze(-1)
        same = nearest[member] == nearest[base + level.group[member]]
        members[member[same], level.group[member[same]]] = 1.0
        levels.append((base, members))
    doubled = torch.zeros(len(levels))
    with torch.no_grad():
        for start in range(0, samples, batch):
            codes = truth.rows(start, min(samples, start + batch))
            fired = (view(world.feature_dict(codes)).feature_acts != 0).float()
            for i, (base, members) in enumerate(levels):
                atoms = fired[:, base : base + members.shape[1]]
                doubled[i] += float((atoms * ((fired @ members) > 0)).sum())
    return [round(float(d) / samples, 3) for d in doubled]


def sources_by_level(view, world, truth: TruthSet, samples: int, batch: int = 1000) -> list[dict]:
    """Per level: latents, firings / true / false per sample, matched |cos|, matched depths,
    (after the rows) the firings that double a member's (``doubled_by_members``), and the pairs
    of its latents that met above the level, of them how many were left apart as nested (None
    where no level follows)."""
    bounds = torch.tensor([0, *level_sizes(view)]).cumsum(0).tolist()
    match, cos = matched_cosines(view.W_dec, world.feature_dict.feature_vectors)
    true, false = firings_by_latent(view, world, truth, match, samples, batch)
    doubled = [None, *doubled_by_members(view, world, truth, samples, batch)]
    parents = hierarchy_parents(world)
    has_child = torch.zeros_like(parents, dtype=torch.bool)
    has_child[parents[parents >= 0]] = True
    in_hierarchy = (parents >= 0) | has_child
    depths = hierarchy_depths(parents)
    grouping = unfolding_levels(view)  # the view that grouped each level's latents
    rows = []
    for level, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        matched = match[a:b]
        inside = in_hierarchy[matched]
        fired_true, fired_false = (
            float(true[a:b].sum()) / samples,
            float(false[a:b].sum()) / samples,
        )
        rows.append({
            "level": level, "latents": b - a, "fire": round(fired_true + fired_false, 3),
            "true": round(fired_true, 3), "false": round(fired_false, 3),
            "matched_cos_median": round(float(cos[a:b].median()), 3),
            "matched_depths": torch.bincount(depths[matched][inside], minlength=4).tolist(),
            "matched_outside": int((~inside).sum()), "doubled": doubled[level],
            "pairs": grouping[level].pairs if level < len(grouping) else None,
            "nested": grouping[level].nested if level < len(grouping) else None,
        })  # fmt: skip
    return rows


GROUP_SIZES = ((2, 2), (3, 4), (5, 8), (9, None))


def first_level_groups(view, world, truth: TruthSet, samples: int, batch: int = 1000) -> list[dict]:
    """The first level read alone (``view``, one ``UnfoldedView`` of the SAE), its atoms banded by how many rows their
    group holds: atoms, rows, firings per sample, the share of them that are true, and the share
    of groups whose rows' matched features all have one parent (one parent's children), and of
    those, how many parents the SAE already holds as a row of its own (then the atom doubles a
    latent that fires anyway, and one of the two is matched elsewhere and counted false)."""
    if not view.added:
        return []
    h = view.sae.W_dec.shape[0]
    features = world.feature_dict.feature_vectors.detach()
    match = matched_cosines(view.W_dec, features)[0]
    true, false = firings_by_latent(view, world, truth, match, samples, batch)
    parents = hierarchy_parents(world)[match[:h]]  # each row's matched feature's parent
    held_by_row = torch.zeros(len(features), dtype=torch.bool)
    held_by_row[match[:h]] = True  # the features the SAE's own rows are matched to
    grouped = view.group >= 0
    sizes = torch.bincount(view.group[grouped], minlength=view.added)
    first_parent = torch.full((view.added,), -1, dtype=torch.long)
    first_parent[view.group[grouped]] = parents[grouped]
    other = (parents[grouped] != first_parent[view.group[grouped]]).float()
    mixed = torch.bincount(view.group[grouped], weights=other, minlength=view.added) > 0
    one_parent = ~mixed & (first_parent >= 0)
    parent = first_parent.clamp_min(0)
    parent_cos = (torch.nn.functional.normalize(view.W_dec[h:], dim=-1) * features[parent]).sum(-1)
    bands = []
    for low, high in GROUP_SIZES:
        band = (sizes >= low) & (sizes <= (high or sizes.max()))
        fired = float(true[h:][band].sum() + false[h:][band].sum())
        bands.append({
            "group_rows": f"{low}-{high}" if high else f"{low}+", "atoms": int(band.sum()),
            "rows": int(sizes[band].sum()), "fire": round(fired / samples, 3),
            "true_share": round(float(true[h:][band].sum()) / fired, 3) if fired else None,
            "one_parent_share": round(float(one_parent[band].float().mean()), 3)
            if band.any() else None,
            # of those groups: how many parents the SAE already holds as a row of its own, and
            # how much of the parent the atom is (|cos|, median)
            "parent_has_own_row_share": round(float(held_by_row[parent][band & one_parent]
                                                    .float().mean()), 3)
            if (band & one_parent).any() else None,
            "atom_parent_cos_median": round(float(parent_cos[band & one_parent].abs().median()), 3)
            if (band & one_parent).any() else None,
        })  # fmt: skip
    return bands


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE's run folder")
    p.add_argument("cache", help="a synthetic evaluation cache written with the true codes")
    p.add_argument("rule", help="the reading rule, as synth_reread.py takes it (e.g. risk_floor)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--exclusive",
        metavar="CACHE",
        default=None,
        help="also read with no group of latents that fire nested in the code of CACHE's first "
        f"{NESTED_SAMPLES} activations (a cache not scored: the training one)",
    )
    p.add_argument(
        "--hubs",
        action="store_true",
        help="with --exclusive, also read so with each atom silent where its group's parent's "
        "own row fires (absorption.group_hubs)",
    )
    args = p.parse_args()
    if args.hubs and args.exclusive is None:
        raise SystemExit("--hubs reads the hubs from the codes of --exclusive CACHE: give both")
    torch.set_num_threads(1)
    cache = ActivationCache(args.cache)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=args.samples)
    samples = min(args.samples, truth.num_samples)
    once = UnfoldedView(read_with(SparseAutoencoder.from_pretrained(args.run), args.rule))
    views = {"relaxed": unfolded_further(once), "held": unfolded_further(once, held=True),
             "stars": unfolded_by_levels(once.sae, stars=True)}  # fmt: skip
    if args.exclusive is not None:
        firing = ActivationCache(args.exclusive).first_activations(NESTED_SAMPLES)
        codes = codes_of(once.sae, firing)
        found = exclusive_views(once.sae, codes, hubs=args.hubs)  # one view, or two with hubs
        views.update(zip(("exclusive", "exclusive_hubs"), found, strict=False))
    readings = {}
    for name, view in views.items():
        rows = sources_by_level(view, world, truth, samples)
        readings[name] = {"l0": round(sum(row["fire"] for row in rows), 3), "levels": rows}
        print(name, "L0", readings[name]["l0"])
        for row in rows:
            print(" ", row)
    groups = first_level_groups(once, world, truth, samples)
    print("the first level alone, by group size")
    for band in groups:
        print(" ", band)
    if args.json:
        write_json(args.json, {"run": args.run, "cache": args.cache, "rule": args.rule,
                               "samples": samples, "firing_cache": args.exclusive, **readings, "first_level_groups": groups,
                               "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
