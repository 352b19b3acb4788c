"""Does afa_band's sparse route pay? One trained afa_band SAE, one batch of real activations, the
training step's forward and backward on the dense route and on the sparse route, interleaved.

    python scripts/bench_afa_band_route.py RUN_DIR ACTIVATIONS.safetensors [--topk TOPK_RUN_DIR]

RUN_DIR: a trained afa_band SAE (e.g. the comparison's ~/.cache/hf_topafa/reproduce_paper/runs/
L15_afa_band_afa0); ACTIVATIONS: the comparison's eval_activations.safetensors; --topk: a TopK
SAE of the same sizes (e.g. runs/L15_topk_k20), timed in the same rounds for the ratio.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_rule_step import step_ms  # the sibling script: one timed forward and backward
from safetensors import safe_open

from hf_topafa import SparseAutoencoder
from hf_topafa.sae import sparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("activations")
    p.add_argument("--topk", default=None, help="a TopK SAE to time beside it")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sae = SparseAutoencoder.from_pretrained(args.run_dir).train()
    with safe_open(args.activations, framework="pt") as fh:
        x = fh.get_tensor(f"L{args.layer}")[: args.batch]
    dead_mask = torch.zeros(sae.config.d_sae, dtype=torch.bool)
    dead_mask[::10] = True  # aux-k on, as in training
    topk = SparseAutoencoder.from_pretrained(args.topk).train() if args.topk else None
    limit = sparse.MAX_SPARSE_DENSITY
    times = {"dense": [], "sparse": [], "topk": []}
    for i in range(args.rounds + 2):
        for route in ("dense", "sparse", "topk"):
            if route == "topk" and topk is None:
                continue
            sparse.MAX_SPARSE_DENSITY = 0.0 if route == "dense" else limit
            ms = step_ms(topk if route == "topk" else sae, x, dead_mask)
            if i >= 2:  # two warm-up rounds
                times[route].append(ms)
    sparse.MAX_SPARSE_DENSITY = limit
    dense, fast = statistics.median(times["dense"]), statistics.median(times["sparse"])
    print(
        f"afa_band, d_sae {sae.config.d_sae}, batch {args.batch}, mean L0 "
        f"{sae._topafa_mean_k:.1f}, {args.threads} thread(s), median of {args.rounds} rounds:\n"
        f"  dense route {dense:.1f} ms, sparse route {fast:.1f} ms: sparse is "
        f"{dense / fast:.2f}x faster"
    )
    if topk is not None:
        ms = statistics.median(times["topk"])
        print(
            f"  TopK k = {topk.config.k}: {ms:.1f} ms; afa_band (sparse) / TopK = {fast / ms:.2f}"
        )


if __name__ == "__main__":
    main()
