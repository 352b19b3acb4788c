"""Why ``risk_pooled`` / ``risk_floor`` keep what they keep on a dictionary: the pooled noise
level, the price each kept latent pays alone, and the decoder-scaled contributions it is
compared with, per run, on the first samples of an activation cache.

The level is pooled over the samples read, as the rule does at inference when it holds no
estimate of its own. Written to explain why the dense synthetic world's count collapses on
dictionaries trained at a larger k (``results/synthbench``, "The agreed k still matters").

    python scripts/risk_level.py runs/synthbench_dense12m/runs/synthsaebench-4k-dense/topk-k16 \\
        runs/synthbench_dense12m/runs/synthsaebench-4k-dense/topk-k48 \\
        --cache runs/synthbench_dense12m/cache/synthsaebench-4k-dense-eval --samples 4096
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae import risk
from hf_topafa.sae.kfree import centered_input


@torch.no_grad()
def risk_level(sae, x: torch.Tensor) -> dict:
    """The pooled level over ``x``'s samples, the floor's price, the kept counts without and with
    the floor, and the median squared decoder-scaled contribution of each sample's 1st, 5th and
    10th largest latent."""
    sae.eval()
    z, _, _ = sae.normalize_input(x)
    pre = sae.pre_activations(x)
    centered = centered_input(sae, z)
    _, kept, level = risk.risk_pooled(pre, sae.W_dec, centered)
    _, floor_kept, _ = risk.risk_pooled(pre, sae.W_dec, centered, floor=True)
    scaled = (pre * torch.linalg.vector_norm(sae.W_dec, dim=-1)).sort(-1, descending=True).values
    return {
        "samples": len(x),
        "pooled_noise": float(level),
        "price": 2 * math.log(pre.shape[-1]) * float(level),
        "kept_pooled": float(kept.float().mean()),
        "kept_floor": float(floor_kept.float().mean()),
        "positive_pre": float((pre > 0).sum(-1).float().mean()),
        "contribution_sq_median": {
            str(rank + 1): float(scaled[:, rank].pow(2).median()) for rank in (0, 4, 9)
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="trained SAE folders")
    p.add_argument("--cache", required=True, help="an activation cache of their layer or world")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = ActivationCache(args.cache).first_activations(args.samples)
    found = {}
    for run in args.runs:
        found[run] = risk_level(SparseAutoencoder.from_pretrained(run), x)
        print(json.dumps({"run": run, **found[run]}))
    if args.json:
        write_json(args.json, {"cache": args.cache, "runs": found, "command": script_command()})


if __name__ == "__main__":
    main()
