"""How many true features per sample a trained dictionary can tell from interference.

Every latent is matched one-to-one to a true feature (Hungarian matching on |cosine| between its
decoder row and the true feature vectors, as SAELens's MCC matches them). Each (sample, latent)
decoder-scaled activation, in the input's scale, then falls in one of two groups: *true* (the
latent's matched feature is active in that sample) or *interference* (it is not). The script
prints both groups' counts per sample over log-spaced activation bins, the level where the two
densities cross (above it a kept activation is more often true than not), and what a global
threshold at each level keeps per sample: L0, true and false positives, and the correlation of
the per-sample count with the true count.

A selection rule cannot find more features per sample than the dictionary lifts above its
interference: the count at the crossing is what a noise-calibrated k-free rule should land on for
that dictionary, whatever the world's true L0.

It also counts the world's hierarchy (``ground_truth.active_chains``: how many chains root ->
child -> ... the true features per sample form) and splits the true activations by role: a parent
whose child is active, or any other. The share of each below one level (``--split-level``; the
crossing by default) shows absorption: parents that a child's latent has taken over stay buried.

    python scripts/synth_detectability.py runs/synthbench/runs/synthsaebench-4k/topk-k16 \\
        runs/synthbench/cache/synthsaebench-4k-eval --json results/synthbench/detectability/x.json
    python scripts/synth_detectability.py --table results/synthbench/detectability
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

EDGES = torch.cat([torch.zeros(1), torch.logspace(-2, 1.3, 34)])
LEVELS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


@torch.no_grad()
def detectability(sae, world, truth, n: int, split_level: float | None = None) -> dict:
    """Counts per sample of true and interference activations per bin, and per global level."""
    from hf_topafa.evaluation.ground_truth import matched_features

    codes = truth.rows(0, n)
    x = world.feature_dict(codes)
    match = matched_features(sae.W_dec, world.feature_dict.feature_vectors)
    scale = sae.input_scale(sae.normalize_input(x)[2]).reshape(-1, 1)
    scaled = sae.pre_activations(x) * torch.linalg.vector_norm(sae.W_dec, dim=-1) * scale
    on = codes[:, match] > 0
    positive = scaled > 0
    bins = []
    for lo, hi in zip(EDGES[:-1].tolist(), EDGES[1:].tolist(), strict=True):
        inside = positive & (scaled > lo) & (scaled <= hi)
        bins.append({"lo": lo, "hi": hi, "interference": float((inside & ~on).sum()) / n,
                     "true": float((inside & on).sum()) / n})  # fmt: skip
    true_count = (codes > 0).sum(-1).float()
    level_at_crossing = crossing(bins)
    roles = hierarchy_roles(world, codes, match, sae.W_dec.shape[0])
    split = level_at_crossing if split_level is None else split_level
    below = {name: float((scaled[on & mask] <= split).float().mean())
             for name, mask in roles.pop("masks").items() if (on & mask).any()}  # fmt: skip
    levels = []
    for level in sorted({*LEVELS, level_at_crossing}):
        keep = scaled > level
        l0 = keep.sum(-1).float()
        levels.append({
            "level": round(level, 4), "l0": float(l0.mean()),
            "true_positives": float((keep & on).sum()) / n,
            "false_positives": float((keep & ~on).sum()) / n,
            "corr_with_true_l0": float(torch.corrcoef(torch.stack([l0, true_count]))[0, 1]),
        })  # fmt: skip
    return {
        "samples": n,
        "true_l0": float(true_count.mean()),
        "matched_true_per_sample": float(on.sum()) / n,
        "crossing_level": level_at_crossing,
        **roles,
        "split_level": split,
        "true_below_split": below,
        "bins": bins,
        "levels": levels,
    }


def hierarchy_roles(world, codes: torch.Tensor, match: torch.Tensor, width: int) -> dict:
    """The hierarchy's share of the count: active chains per sample (over the world and over the
    ``width`` most frequent features) and, for the matched latents, masks [n, width] of the true
    activations whose feature is a parent with an active child, and of the others."""
    from hf_topafa.evaluation.ground_truth import active_chains, hierarchy_parents, most_frequent

    parents = hierarchy_parents(world)
    on = codes > 0
    held = most_frequent(on.sum(0), width)
    is_child = (parents >= 0).nonzero().squeeze(-1)
    parent_of_active = torch.zeros_like(on)
    rows, cols = on[:, is_child].nonzero(as_tuple=True)
    parent_of_active[rows, parents[is_child[cols]]] = True
    matched = parent_of_active[:, match]
    return {
        "chains": float(active_chains(codes, parents).float().mean()),
        "chains_top_width": float(active_chains(codes, parents, held).float().mean()),
        "true_l0_top_width": float(on[:, held].sum()) / len(codes),
        "masks": {"parent_of_active_child": matched, "other": ~matched},
    }


def crossing(bins: list[dict]) -> float:
    """The lowest level where true activations outnumber interference: the lower edge of the
    first positive bin, going up, in which they do (a few large activations of an unmatched
    latent high above it do not move it). 0 when no bin has more true than interference."""
    return next((b["lo"] for b in bins if b["lo"] > 0 and b["true"] > b["interference"]), 0.0)


def plot(result: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_topafa.helpers import atomic_path

    bins = [b for b in result["bins"] if b["lo"] > 0]
    centers = [(b["lo"] * b["hi"]) ** 0.5 for b in bins]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(centers, [b["interference"] for b in bins], "o-", label="interference")
    ax.plot(centers, [b["true"] for b in bins], "o-", label="matched true feature active")
    at = next(v for v in result["levels"] if v["level"] == round(result["crossing_level"], 4))
    ax.axvline(result["crossing_level"], color="k", ls="--", lw=1,
               label=f"crossing: L0 {at['l0']:.1f} (true L0 {result['true_l0']:.1f})")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="decoder-scaled activation (input scale)",
           ylabel="per sample, per bin", title=title)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def table(folder: Path) -> str:
    """A markdown table of every result in ``folder``: the count at the crossing per dictionary."""
    lines = [
        "| dictionary | true L0 | width's features / chains | matched true active / sample "
        "| crossing level | L0 there | true pos. | false pos. | corr. with true L0 "
        "| true below the split level: parent of active child / other (level) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        at = next(v for v in r["levels"] if v["level"] == round(r["crossing_level"], 4))
        held = (f"{r['true_l0_top_width']:.2f} / {r['chains_top_width']:.2f}"
                if "chains_top_width" in r else "–")  # fmt: skip
        below = r.get("true_below_split", {})
        roles = " / ".join(f"{below[k]:.0%}" for k in ("parent_of_active_child", "other")
                           if k in below) or "–"  # fmt: skip
        if "split_level" in r:
            roles += f" ({r['split_level']:.3g})"
        lines.append(
            f"| {path.stem} | {r['true_l0']:.2f} | {held} | {r['matched_true_per_sample']:.2f} "
            f"| {r['crossing_level']:.2f} | {at['l0']:.2f} | {at['true_positives']:.2f} "
            f"| {at['false_positives']:.2f} | {at['corr_with_true_l0']:.2f} | {roles} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", nargs="?", help="a trained SAE folder")
    p.add_argument("cache", nargs="?", help="a synthetic cache written with its true codes")
    p.add_argument("--table", type=Path, default=None,
                   help="print the table of every result in this folder instead")  # fmt: skip
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--json", type=Path, default=None, help="write the result here (and a .png)")
    p.add_argument("--split-level", type=float, default=None,
                   help="the level at which true activations are split by their role in the "
                   "hierarchy (default: the crossing); one level compares dictionaries")  # fmt: skip
    args = p.parse_args()
    if args.table:
        print(table(args.table), end="")
        return
    if not (args.run and args.cache):
        p.error("give RUN and CACHE, or --table FOLDER")
    torch.set_num_threads(1)
    from hf_topafa import SparseAutoencoder
    from hf_topafa.data.harvest import ActivationCache
    from hf_topafa.data.synthetic_cache import world_of_cache
    from hf_topafa.evaluation.ground_truth import TruthSet
    from hf_topafa.helpers import write_json

    sae = SparseAutoencoder.from_pretrained(args.run).eval()
    cache = ActivationCache(args.cache)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=args.samples)
    result = {"run": str(args.run),
              **detectability(sae, world, truth, truth.num_samples, args.split_level)}  # fmt: skip
    for v in result["levels"]:
        print(json.dumps({key: round(value, 3) for key, value in v.items()}))
    print(f"crossing level {result['crossing_level']:.3f}; true L0 {result['true_l0']:.2f} "
          f"({result['true_l0_top_width']:.2f} over the width's features, in "
          f"{result['chains_top_width']:.2f} chains of the hierarchy); matched true features "
          f"active per sample {result['matched_true_per_sample']:.2f}; below "
          f"{result['split_level']:.3g}: "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["true_below_split"].items()))  # fmt: skip
    if args.json:
        write_json(args.json, result, indent=1)
        plot(
            result,
            f"{Path(args.run).parent.name}: {Path(args.run).name}",
            args.json.with_suffix(".png"),
        )


if __name__ == "__main__":
    main()
