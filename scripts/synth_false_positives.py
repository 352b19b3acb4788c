"""Where a trained SAE's false positives come from, read against the truth.

A kept latent is a false positive when the true feature it is matched to (one-to-one on
|cosine|, as SAELens's MCC matches) is off in that sample. Per false positive, three possible
sources: a **duplicate** (its decoder row is near one of the sample's true-positive latents),
an **active feature's direction** (its row is near a true feature that is on, which it partly
reads), or the **hierarchy** (its matched feature's parent or a child is on). Printed as
quantiles of the two cosines and the shares above 0.5, with the hierarchy's share.

    python scripts/synth_false_positives.py runs/synthbench/runs/synthsaebench-4k-sparse/afa_energy-afa0 \\
        runs/synthbench/cache/synthsaebench-4k-sparse-eval --samples 3000
"""

from __future__ import annotations

import argparse
import json

import torch

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@torch.no_grad()
def false_positive_sources(
    kept: torch.Tensor,
    on: torch.Tensor,
    latent_cos: torch.Tensor,
    feature_cos: torch.Tensor,
    active: torch.Tensor,
    related: torch.Tensor,
) -> dict:
    """``kept``, ``on`` [n, h]: latents kept, and whether each one's matched feature is on;
    ``latent_cos`` [h, h]: decoder rows' cosines; ``feature_cos`` [h, F]: |cosine| of decoder
    rows with the true features; ``active`` [n, F]: true features on; ``related`` [n, h]: the
    matched feature's parent or a child is on. Per false positive: its largest decoder cosine
    with a true-positive latent of its sample, and its largest |cosine| with an active feature."""
    false_pos, true_pos = kept & ~on, kept & on
    rows, cols = false_pos.nonzero(as_tuple=True)
    to_true = torch.where(true_pos[rows], latent_cos[cols], -torch.inf).amax(-1).clamp_min(0)
    to_active = torch.where(active[rows], feature_cos[cols], 0).amax(-1)
    q = torch.tensor(QUANTILES)
    return {
        "true_pos": float(true_pos.sum(-1).float().mean()),
        "false_pos": float(false_pos.sum(-1).float().mean()),
        "duplicate_cos_quantiles": [round(v, 3) for v in to_true.quantile(q).tolist()],
        "active_feature_cos_quantiles": [round(v, 3) for v in to_active.quantile(q).tolist()],
        "share_duplicate_above_0.5": float((to_true > 0.5).float().mean()),
        "share_active_feature_above_0.5": float((to_active > 0.5).float().mean()),
        "share_hierarchy": float(related[rows, cols].float().mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE folder")
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--read-with", default=None, metavar="RULE",
                   help="read the dictionary with another rule (as `hf-topafa evaluate "
                        "--read-with`), e.g. risk_batch")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the sources, with the command, here")
    args = p.parse_args()
    torch.set_num_threads(1)
    from synth_latent_noise import relative_on  # the sibling script: parent or child on

    from hf_topafa import SparseAutoencoder
    from hf_topafa.evaluation.ground_truth import hierarchy_parents, matched_features, truth_for
    from hf_topafa.helpers import script_command, write_json
    from hf_topafa.sae.reading import read_with

    sae = SparseAutoencoder.from_pretrained(args.run).eval()
    if args.read_with:
        try:
            sae = read_with(sae, args.read_with)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    world, truth, _ = truth_for(args.cache, args.samples)
    codes = truth.rows(0, truth.num_samples)
    features = world.feature_dict.feature_vectors
    match = matched_features(sae.W_dec, features)
    with torch.no_grad():
        kept = sae(world.feature_dict(codes)).feature_acts > 0
        rows = torch.nn.functional.normalize(sae.W_dec.float(), dim=-1)
        latent_cos = (rows @ rows.T).fill_diagonal_(0)
        feature_cos = (rows @ torch.nn.functional.normalize(features.float(), dim=-1).T).abs()
    found = false_positive_sources(
        kept, codes[:, match] > 0, latent_cos, feature_cos, codes > 0,
        relative_on(codes, hierarchy_parents(world), match),
    )  # fmt: skip
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in found.items()}))
    if args.json:
        write_json(args.json, {"run": args.run, "cache": args.cache, "read_with": args.read_with,
                               "samples": truth.num_samples, **found,
                               "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
