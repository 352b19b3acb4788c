"""Does a latent that comes back from another seed match a true feature better than one that does not?

Seed agreement judges a whole dictionary (``evaluation.agreement``; on the synthetic worlds the
k whose seeds agreed most had the best MCC). A reader could go further and trust only the
latents that the other seed also found. This checks, latent by latent, whether that would keep
the true ones: each latent of the first dictionary gets its matched |cos| in the second seed's
dictionary and its matched |cos| with the world's true features (both one-to-one, Hungarian, as
SAELens's MCC), and the script prints their correlation and the truth match of the latents above
and below 0.7 with the other seed.

    python scripts/synth_latent_agreement.py runs/synthbench/cache/synthsaebench-4k-eval \\
        --pair runs/synthbench/runs/synthsaebench-4k/topk-k16 runs/synthbench_seeds/runs/synthsaebench-4k/topk-k16 \\
        --json results/synthbench/seeds/latent-agreement-4k.json
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import is_synthetic_cache, world_of_cache
from hf_topafa.evaluation.agreement import matched_cosines
from hf_topafa.helpers import script_command, write_json

SHARED = 0.7  # choose-k's "latents matched above 0.7"


def per_latent(first: str, second: str, features: torch.Tensor) -> dict:
    a, b = (SparseAutoencoder.from_pretrained(path).W_dec.detach() for path in (first, second))
    _, with_seed = matched_cosines(a, b)
    _, with_truth = matched_cosines(a, features)
    shared = with_seed > SHARED
    return {"first": first, "second": second, "latents": len(a), "shared": int(shared.sum()),
            "correlation": float(torch.corrcoef(torch.stack([with_seed, with_truth]))[0, 1]),
            "truth_if_shared": float(with_truth[shared].mean()) if shared.any() else None,
            "truth_if_not": float(with_truth[~shared].mean()) if (~shared).any() else None,
            "truth_mcc": float(with_truth.mean())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="a synthetic cache (names the world)")
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("FIRST", "SECOND"),
                   help="two run folders trained alike from different seeds; repeat per setting")  # fmt: skip
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    manifest = ActivationCache(args.cache).manifest
    if not is_synthetic_cache(manifest):
        raise SystemExit(f"{args.cache} was not sampled from a synthetic world: no truth to check")
    features = world_of_cache(manifest).feature_dict.feature_vectors
    rows = []
    for first, second in args.pair:
        rows.append(per_latent(first, second, features))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in rows[-1].items()}), flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, {"cache": args.cache, "shared_above": SHARED, "rows": rows,
                               "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
