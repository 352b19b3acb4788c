"""Which true features procedure D's reading misses, by their place in the world's hierarchy.

Procedure D (``synth_reread.py RUN CACHE risk_floor --stars --exclusive TRAIN``) keeps a count
near what the width holds on most worlds, but 0.59-0.75x of it on the deep world at every k.
This says where the missing features sit. Of the features the width holds (the most frequent in
the scored samples), grouped by place (outside the hierarchy; a root; a child of a parent whose
children are exclusive or not; with children of its own or a leaf): how often they fire, the
share of those firings the reading keeps on the feature's one-to-one matched latent, and how
near that latent's decoder row is (|cosine|). A group the dictionary never learned shows low
cosines; one it learned but the reading drops shows high cosines and low recall. Of the missed
firings, the share where a hierarchy relative's latent is kept instead (an ancestor's, or a
descendant's: the feature absorbed into a relative's row). The same by
depth below the root, and by how often the feature fires (four equal bands of the held ones).
First it prints the noise level ``risk_floor`` prices each latent at on this dictionary beside
the truth's (the energy of the features the width does not hold): a level set too high drops
true features that the dictionary holds. ``--rule`` reads with another rule (e.g. the switch's
``risk_tail@PRICE``); ``--fold`` adds procedure D with each hub folded into its atom
(``absorption.FoldedView``), where a parent is counted once and on the latent matched to it, so
what it misses is missed, not counted on a latent matched elsewhere. Per reading it also splits
the missed firings by what the feature's one-to-one matched latent is (``missed_by_latent``):
none, an atom that stayed silent, a row learned (|cos| >= 0.9) that the rule dropped, or a row
learned badly; and the false firings, of atoms and of rows, and of the atoms' false firings
those where the feature the atom points nearest is on (the match gave it to another latent) and
where that latent fires too. Of the held features no latent stands for, it says how much of
each is in the SAE's decoder (``unmatched_in_decoder``): the nearest row, how many rows meet it
above chance, and how those rows meet each other.

    python scripts/synth_missed_by_level.py runs/synthbench_deep/runs/synthsaebench-4k-deep/topk-k14 \\
        runs/synthbench_deep/cache/synthsaebench-4k-deep-eval runs/synthbench_deep/cache/synthsaebench-4k-deep-train \\
        --samples 10000 --json results/synthbench/missed/deep-8m-topk-k14.json
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.agreement import matched_cosines
from hf_topafa.evaluation.ground_truth import (
    TruthSet,
    ancestor_steps,
    codes_of,
    hierarchy_depths,
    hierarchy_nodes,
    hierarchy_parents,
    most_frequent,
    nearest_features,
    readings_of,
)
from hf_topafa.evaluation.sparse_recovery import unheld_noise
from hf_topafa.evaluation.unfolded_l0 import EXCLUSIVE_LABEL
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae import risk
from hf_topafa.sae.absorption import (
    NESTED_SAMPLES,
    FoldedView,
    UnfoldedView,
    chance_coherence,
    unabsorbed_directions,
)
from hf_topafa.sae.kfree import centered_input
from hf_topafa.sae.reading import read_with

PROCEDURE_D = EXCLUSIVE_LABEL  # procedure D's reading's label
FOLDED = PROCEDURE_D + ", hubs folded"
NEAR = 0.9  # a matched |cosine| at least this counts as the feature learned
LEVEL_SAMPLES = 4096  # one batch, as the reading prices each batch of 4,096
LEVEL_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5)  # levels tried, times the unheld energy


@torch.no_grad()
def noise_levels(sae, cache, truth: TruthSet, held: torch.Tensor) -> dict:
    """The noise level ``risk_floor`` prices latents at on this dictionary (the pooled residual
    per dimension at its counts, on the first scored samples) beside the truth's: the energy
    per dimension of the features the width does not hold. And the fixed point's map: at the
    counts each of ``LEVEL_FACTORS`` times the truth's level gives, the pooled residual over
    it (a map that stays above 1 has no fixed point near the truth)."""
    n = min(LEVEL_SAMPLES, truth.num_samples)
    x = cache.first_activations(n)
    x_n = sae.normalize_input(x)[0]
    pre, z = sae.pre_activations(x), centered_input(sae, x_n)
    norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    rss, _ = risk.ranked_residuals(pre * norms, pre, sae.W_dec, z)  # as risk_floor ranks them
    d, h = z.shape[-1], pre.shape[-1]
    _, level = risk.pooled_counts(rss, d, h)  # the level risk_floor's batch reading settles on
    unheld = unheld_noise(truth.rows(0, n), held, d)
    found = {"samples": n, "pooled_level": float(level), "unheld_noise": unheld,
             "ratio": float(level) / unheld if unheld > 0 else None}  # fmt: skip
    if unheld > 0:  # the pooled residual at the counts each level gives, both over the unheld
        found["residual_at_level"] = {
            str(f): float(risk.pooled_noise(rss, risk.known_noise_counts(rss, h, f * unheld), d))
            / unheld
            for f in LEVEL_FACTORS
        }
    return found


def places(world) -> list[str]:
    """Each feature's place: ``outside``, ``root``, or ``exclusive``/``shared`` (its parent's
    children are mutually exclusive or may fire together), with ``+children`` where it has any."""
    place = ["outside"] * world.cfg.num_features
    for node, parent in hierarchy_nodes(world):
        kind = ("root" if parent is None
                else "exclusive" if parent.mutually_exclusive_children else "shared")  # fmt: skip
        has_children = any(child.feature_index is not None for child in node.children)
        place[node.feature_index] = kind + ("+children" if has_children else "")
    return place


@torch.no_grad()
def detections(sae, world, truth: TruthSet, match: torch.Tensor, batch: int = 4096) -> dict:
    """Per feature: how often it is on (``fires``), how often its matched latent (``match``: one
    feature per latent, -1 for none) is kept when it is (``kept``), and how often it is missed
    while the latent of an ancestor (``missed_beside_ancestor``) or of a descendant
    (``missed_beside_descendant``) in the world's hierarchy is kept: a missed feature whose
    relative's latent stands for it, as an absorbed parent's child does."""
    parents = hierarchy_parents(world)
    depth = hierarchy_depths(parents)
    found = {name: torch.zeros(world.cfg.num_features) for name in
             ("fires", "kept", "missed_beside_ancestor", "missed_beside_descendant")}  # fmt: skip
    latents = (match >= 0).nonzero().squeeze(-1)
    for start in range(0, truth.num_samples, batch):
        codes = truth.rows(start, min(truth.num_samples, start + batch))
        on = codes > 0
        kept = torch.zeros_like(on)
        kept[:, match[latents]] = sae(world.feature_dict(codes)).feature_acts[:, latents] != 0
        missed = on & ~kept
        found["fires"] += on.sum(0)
        found["kept"] += (on & kept).sum(0)
        found["missed_beside_ancestor"] += (missed & kept_ancestor(kept, parents)).sum(0)
        found["missed_beside_descendant"] += (missed & kept_descendant(kept, parents, depth)).sum(0)
    return found


def latent_positions(view) -> torch.Tensor:
    """[latents]: each of a reading's latents' position in its unfolded code (a folded view has
    left some out)."""
    return view.kept if isinstance(view, FoldedView) else torch.arange(view.config.d_sae)


def atom_latents(view, width: int) -> torch.Tensor:
    """[latents] bool: which of a reading's latents are atoms (added after the SAE's ``width``
    own rows)."""
    return latent_positions(view) >= width


@torch.no_grad()
def missed_by_latent(
    sae, world, truth: TruthSet, match, cosine, atoms, held, nearest=None, batch=4096
) -> dict:
    """Per sample: the held features' firings, those the reading misses split by what the
    feature's matched latent is (``match``: one feature per latent, -1 for none; ``cosine``: its
    |cosine| per latent; ``atoms``: which latents are atoms) — ``no_latent`` (no latent stands
    for it), ``atom`` (its atom stayed silent), ``row_learned`` (a row of the SAE's own at
    |cos| >= NEAR, dropped by the rule) or ``row_poorly_learned`` — and the false firings (a
    latent on while its matched feature is off), of all latents and of atoms. What the rule
    could still recover is the learned rows; the rest is the dictionary's or the grouping's.
    Given ``nearest`` (per latent the feature its row is nearest, by |cosine|): the atoms' false
    firings where that feature is on (``false_pos_atoms_nearest_on``: the atom stands for a
    feature that is on, which the one-to-one matching gave to another latent), and of those the
    ones where that other latent fires too (``..._twice``: the feature counted twice)."""
    features = world.cfg.num_features
    latent_of = torch.full((features,), -1, dtype=torch.long)
    latent_of[match[match >= 0]] = (match >= 0).nonzero().squeeze(-1)
    has = latent_of >= 0
    kind = {"no_latent": ~has}
    kind["atom"] = has & atoms[latent_of.clamp_min(0)]
    learned = cosine[latent_of.clamp_min(0)] >= NEAR
    kind["row_learned"] = has & ~kind["atom"] & learned
    kind["row_poorly_learned"] = has & ~kind["atom"] & ~learned
    found = dict.fromkeys(["fires", "missed", *(f"missed_{k}" for k in kind),
                           "false_pos", "false_pos_atoms"], 0.0)  # fmt: skip
    if nearest is not None:
        found.update(false_pos_atoms_nearest_on=0.0, false_pos_atoms_nearest_on_twice=0.0)
    matched = (match >= 0).nonzero().squeeze(-1)
    for start in range(0, truth.num_samples, batch):
        codes = truth.rows(start, min(truth.num_samples, start + batch))
        fired = sae(world.feature_dict(codes)).feature_acts != 0
        on = codes > 0
        kept = torch.zeros_like(on)
        kept[:, match[matched]] = fired[:, matched]
        missed = on & ~kept & held
        found["fires"] += float((on & held).sum())
        found["missed"] += float(missed.sum())
        for name, members in kind.items():
            found[f"missed_{name}"] += float(missed[:, members].sum())
        false = fired[:, matched] & ~on[:, match[matched]]
        found["false_pos"] += float(false.sum())
        found["false_pos_atoms"] += float(false[:, atoms[matched]].sum())
        if nearest is not None:
            false_atoms = false & atoms[matched] & on[:, nearest[matched]]
            holder = latent_of[nearest[matched]]  # the latent matched to the nearest feature
            twice = (holder >= 0) & fired[:, holder.clamp_min(0)]
            found["false_pos_atoms_nearest_on"] += float(false_atoms.sum())
            found["false_pos_atoms_nearest_on_twice"] += float((false_atoms & twice).sum())
    return {key: value / truth.num_samples for key, value in found.items()}


@torch.no_grad()
def first_level_atoms(view, width: int, match: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per row of the SAE its first-level atom, -1 for none [width]; per such atom the feature
    the reading's latent for it is matched to, -1 where it has none [G]) for a view of the SAE."""
    inner = view.view if isinstance(view, FoldedView) else view
    while isinstance(inner.sae, UnfoldedView):
        inner = inner.sae
    positions = latent_positions(view)
    latent_at = torch.full((int(positions.max()) + 1,), -1, dtype=torch.long)
    latent_at[positions] = torch.arange(len(positions))
    latents = latent_at[width : width + inner.added]
    feature = torch.where(latents >= 0, match[latents.clamp_min(0)], latents)
    return inner.group, feature


def unmatched_in_decoder(W_dec, features, unmatched, rate, parents, atoms=None) -> dict:
    """Of the ``unmatched`` features (bool [features]; ``rate``: firings per sample), weighted
    by how often they fire: the |cosine| of the nearest decoder row, how many rows meet the
    feature above the chance level (``chance_coherence``), the mean |cosine| between two such
    rows (where there are two), and the share with children in the world's hierarchy. A feature
    spread over several rows that do not meet each other above chance is absorbed, but into
    rows no grouping at that level joins. Given ``atoms`` (``first_level_atoms``): the share
    whose grouped rows all fall in one atom, and the share whose atom is matched to one of the
    feature's ancestors (one latent for a chain of features)."""
    if not bool(unmatched.any()):
        return {"features": 0}
    unit = torch.nn.functional.normalize
    rows = unit(W_dec.detach().float(), dim=-1)
    cos = (rows @ unit(features.float(), dim=-1)[unmatched].T).abs()  # [h, unmatched]
    level = chance_coherence(*rows.shape)
    near = cos > level
    weight = rate[unmatched] / rate[unmatched].sum().clamp_min(1e-12)
    between, has_pairs = torch.zeros(len(weight)), torch.zeros(len(weight), dtype=torch.bool)
    one_atom, to_ancestor = torch.zeros_like(has_pairs), torch.zeros_like(has_pairs)
    steps = list(ancestor_steps(parents))  # each feature's ancestors, one level up at a time
    for j, feature in enumerate(unmatched.nonzero().squeeze(-1).tolist()):
        members = near[:, j].nonzero().squeeze(-1)
        if len(members) >= 2:
            meet = (rows[members] @ rows[members].T).abs()
            between[j] = meet[~torch.eye(len(members), dtype=torch.bool)].mean()
            has_pairs[j] = True
            if atoms is not None:
                groups = atoms[0][members].unique()
                one_atom[j] = len(groups) == 1 and int(groups[0]) >= 0
                if one_atom[j]:
                    target = int(atoms[1][groups[0]])
                    to_ancestor[j] = target >= 0 and any(int(a[feature]) == target for a in steps)
    children = torch.zeros(len(rate), dtype=torch.bool)
    children[parents[parents >= 0]] = True
    paired = weight[has_pairs].sum().clamp_min(1e-12)
    return {
        "features": int(unmatched.sum()),
        "firings_per_sample": float(rate[unmatched].sum()),
        "level": level,
        "nearest_row_cosine": float((cos.max(0).values * weight).sum()),
        "rows_above_level": float((near.sum(0).float() * weight).sum()),
        "share_in_two_or_more_rows": float(weight[has_pairs].sum()),
        "cosine_between_those_rows": float((between * weight)[has_pairs].sum() / paired),
        "share_with_children": float(weight[children[unmatched]].sum()),
        **(
            {}
            if atoms is None
            else {
                "share_in_one_atom": float(weight[one_atom].sum()),
                "share_in_an_atom_matched_to_an_ancestor": float(weight[to_ancestor].sum()),
            }
        ),
    }


def kept_ancestor(kept: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """[samples, features]: whether some ancestor of the feature has its latent kept."""
    out = torch.zeros_like(kept)
    for above in ancestor_steps(parents):
        out |= (above >= 0) & kept[:, above.clamp_min(0)]
    return out


def kept_descendant(kept: torch.Tensor, parents: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[samples, features]: whether some descendant of the feature has its latent kept."""
    below = torch.zeros(kept.shape, dtype=torch.float32)
    for level in range(int(depth.max()), 0, -1):  # deepest first, each level into its parents
        children = ((depth == level) & (parents >= 0)).nonzero().squeeze(-1)
        either = (kept[:, children] | (below[:, children] > 0)).float()
        below.index_add_(1, parents[children], either)
    return below > 0


def depths(world, place: list[str]) -> list[str]:
    """Each feature's depth below its root (``depth 0``: a root), or ``outside``."""
    depth = hierarchy_depths(hierarchy_parents(world)).tolist()
    return [
        "outside" if p == "outside" else f"depth {d}" for p, d in zip(place, depth, strict=True)
    ]


def frequency_quarters(counts: torch.Tensor, held: torch.Tensor) -> list[str]:
    """The held features in four equal bands by how often they fire (``quarter 1``: the most
    frequent), the rest ``not held``."""
    label = ["not held"] * len(counts)
    order = [i for i in torch.argsort(counts, descending=True, stable=True).tolist() if held[i]]
    for rank, feature in enumerate(order):
        label[feature] = f"quarter {1 + 4 * rank // len(order)}"
    return label


def by_place(place: list[str], held: torch.Tensor, found: dict, cosine, samples: int) -> dict:
    """Per place (a label per feature), over the held features: their firings per sample, the
    reading's recall of them, the share of their missed firings beside a kept ancestor or
    descendant (``detections``) and their matched latents' |cosine|."""
    groups = {}
    fires, kept = found["fires"], found["kept"]
    for name in sorted(set(place)):
        members = torch.tensor([p == name for p in place]) & held
        if not members.any():
            continue
        missed = (fires[members] - kept[members]).sum().clamp(min=1)
        groups[name] = {
            "features_held": int(members.sum()),
            "firings_per_sample": round(float(fires[members].sum()) / samples, 3),
            "recall": float(kept[members].sum() / fires[members].sum().clamp(min=1)),
            "missed_beside_ancestor": float(
                found["missed_beside_ancestor"][members].sum() / missed
            ),
            "missed_beside_descendant": float(
                found["missed_beside_descendant"][members].sum() / missed
            ),
            "matched_cosine_mean": float(cosine[members].mean()),
            f"matched_cosine_at_least_{NEAR}": float((cosine[members] >= NEAR).float().mean()),
        }
    return groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run", help="a trained TopK SAE folder")
    for name, role in (("cache", "the world's held-out synthetic cache (with true codes)"),
                       ("train_cache", "the training cache, for the nested-firing groups")):  # fmt: skip
        parser.add_argument(name, help=role)
    parser.add_argument("--samples", type=int, default=10000, help="scored samples")
    parser.add_argument(
        "--rule", default="risk_floor", help="the reading rule (default risk_floor)"
    )
    parser.add_argument(
        "--fold",
        action="store_true",
        help="also procedure D with each hub folded into its atom (absorption.FoldedView)",
    )
    parser.add_argument("--json", default=None, help="write the groups, with the command, here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    cache = ActivationCache(args.cache)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=args.samples)
    base = SparseAutoencoder.from_pretrained(args.run)
    try:
        read = read_with(base, args.rule)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    codes = codes_of(read, ActivationCache(args.train_cache).first_activations(NESTED_SAMPLES))
    unabsorbed = unabsorbed_directions(base.W_dec)
    found_views = readings_of(read, unabsorbed, True, True, codes, args.fold, args.fold)
    views = {suffix: view for suffix, view, _ in found_views}
    features = world.feature_dict.feature_vectors
    held = most_frequent(truth.feature_counts(), base.config.d_sae)
    place = places(world)
    groupings = {"place": place, "depth": depths(world, place),
                 "frequency": frequency_quarters(truth.feature_counts(), held)}  # fmt: skip
    noise = noise_levels(base, cache, truth, held)
    ratio = f" ({noise['ratio']:.2f}x)" if noise["ratio"] is not None else ""
    print(f"risk_floor's noise level {noise['pooled_level']:.4g} per dimension; the unheld "
          f"features' {noise['unheld_noise']:.4g}{ratio}")  # fmt: skip
    if "residual_at_level" in noise:
        steps = ", ".join(f"{f}x -> {r:.2f}x" for f, r in noise["residual_at_level"].items())
        print(f"  the pooled residual at the counts of each level (both over the unheld): {steps}")
    result = {"run": args.run, "cache": args.cache, "samples": truth.num_samples,
              "noise": noise, "command": script_command(), "readings": {}}  # fmt: skip
    readings = [(args.rule, views[""]), ("procedure D", views[PROCEDURE_D])]
    if args.fold:
        readings.append(("procedure D, hubs folded", views[FOLDED]))
    rate = truth.feature_counts().float() / truth.num_samples
    parents = hierarchy_parents(world)
    for label, view in readings:
        match, cos = matched_cosines(view.W_dec, features)
        cosine = torch.zeros(world.cfg.num_features)
        cosine[match[match >= 0]] = cos[match >= 0]
        found = detections(view, world, truth, match)
        latent_cos = torch.where(match >= 0, cos, torch.zeros_like(cos))
        atoms = atom_latents(view, base.config.d_sae)
        nearest = nearest_features(view.W_dec, features)
        split = missed_by_latent(view, world, truth, match, latent_cos, atoms, held, nearest)
        unmatched = held.clone()
        unmatched[match[match >= 0]] = False
        grouped = None if view is read else first_level_atoms(view, base.config.d_sae, match)
        spread = unmatched_in_decoder(base.W_dec, features, unmatched, rate, parents, grouped)
        result["readings"][label] = {"missed_by_latent": split, "unmatched_in_decoder": spread}
        print(f"\n{label}: {split['fires']:.3f} held firings per sample, {split['missed']:.3f} "
              f"missed: no latent {split['missed_no_latent']:.3f}, a silent atom "
              f"{split['missed_atom']:.3f}, a learned row dropped {split['missed_row_learned']:.3f}, "
              f"a row learned badly {split['missed_row_poorly_learned']:.3f}; false "
              f"{split['false_pos']:.3f} ({split['false_pos_atoms']:.3f} of atoms, "
              f"{split['false_pos_atoms_nearest_on']:.3f} where the atom's nearest feature is "
              f"on, {split['false_pos_atoms_nearest_on_twice']:.3f} with that feature's latent "
              "on too)")  # fmt: skip
        if spread["features"]:
            print(f"  the {spread['features']} held features no latent stands for "
                  f"({spread['firings_per_sample']:.3f} firings per sample), weighted by firing: "
                  f"nearest row |cos| {spread['nearest_row_cosine']:.3f}, "
                  f"{spread['rows_above_level']:.2f} rows above chance ({spread['level']:.3f}), "
                  f"which meet each other at {spread['cosine_between_those_rows']:.3f}; "
                  f"{spread['share_with_children']:.2f} have children")  # fmt: skip
            if "share_in_one_atom" in spread:
                print(f"  {spread['share_in_one_atom']:.2f} of them in rows of one atom, "
                      f"{spread['share_in_an_atom_matched_to_an_ancestor']:.2f} in an atom "
                      "matched to one of their ancestors")  # fmt: skip
        for grouping, labels in groupings.items():
            groups = by_place(labels, held, found, cosine, truth.num_samples)
            result["readings"][label][grouping] = groups
            print(f"\n{label}, by {grouping}: {'held':>5} {'fires/sample':>13} {'recall':>7} "
                  f"{'missed: ancestor':>17} {'descendant':>11} {'mean |cos|':>10} "
                  f"{f'|cos|>={NEAR}':>10}")  # fmt: skip
            for name, g in groups.items():
                print(f"  {name:<20} {g['features_held']:>5} {g['firings_per_sample']:>13.3f} "
                      f"{g['recall']:>7.3f} {g['missed_beside_ancestor']:>17.3f} "
                      f"{g['missed_beside_descendant']:>11.3f} {g['matched_cosine_mean']:>10.3f} "
                      f"{g[f'matched_cosine_at_least_{NEAR}']:>10.3f}")  # fmt: skip
    if args.json:
        write_json(args.json, result)
    print(json.dumps({"wrote": args.json}) if args.json else "")


if __name__ == "__main__":
    main()
