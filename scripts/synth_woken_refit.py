"""Can the encoder's own count tell `risk_refit`'s true gains from its false latents?

`risk_refit` keeps more true latents than `risk_floor` where the encoder understates
amplitudes (flat-d256, dense) and more false ones where the world is sparse (mix, sparse). If
the false ones were latents the encoder never reaches, limiting least squares to the latents
the encoder's ranking already counts would keep the gains and drop the false ones. On one TopK
dictionary, on its first scored samples, before unfolding, this prints for `risk_floor`,
`risk_refit` and that limited re-fit (each token's candidates cut to its first k ranked, k
`risk_pooled`'s count; the level its own fixed point): the count over what the width holds,
true and false latents per sample; and `risk_refit`'s kept latents that lie beyond the pooled
count, true and false per sample.

    python scripts/synth_woken_refit.py runs/synthbench_mix/runs/synthsaebench-4k-mix/topk-k6 \\
        runs/synthbench_mix/cache/synthsaebench-4k-mix-eval --json results/synthbench/calibrated/woken/mix-8m-topk-k6.json
"""

from __future__ import annotations

import math

import torch

from hf_topafa.evaluation.on_truth import dictionary_on_truth_from_command_line
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae import risk
from hf_topafa.sae.reading import read_with


def scores(kept: torch.Tensor, on: torch.Tensor, held_count: torch.Tensor) -> dict:
    """The count over what the width holds, and true and false latents per sample."""
    return {
        "ratio": float(kept.sum(-1).float().mean() / held_count.float().mean()),
        "true_per_sample": float((kept & on).sum(-1).float().mean()),
        "false_per_sample": float((kept & ~on).sum(-1).float().mean()),
    }


@torch.no_grad()
def main() -> None:
    read, args = dictionary_on_truth_from_command_line(__doc__)
    sae, x, on = read.sae, read.x, read.on
    held_count = read.firings()
    z = read.centered()
    pre = read.activations()
    norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    counted, ranked, _ = risk.risk_inflation_counts(pre, norms, sae.W_dec, z, pooled=True)
    kept_by = {rule: read_with(sae, rule).eval()(x).feature_acts != 0
               for rule in ("risk_floor", "risk_refit")}  # fmt: skip
    found = {rule: scores(kept, on, held_count) for rule, kept in kept_by.items()}
    level = risk.refit_level(pre, sae.W_dec, z, first=counted)
    price = 2 * math.log(pre.shape[-1]) * level
    woken = risk.refit_kept(pre, sae.W_dec, z, price, first=counted)[0] != 0
    found["refit_within_pooled_count"] = scores(woken, on, held_count)
    position = torch.arange(ranked.shape[-1]).expand_as(ranked)
    beyond = torch.ones_like(pre, dtype=torch.bool).scatter(  # ranked past the token's count
        -1, ranked, position >= counted.unsqueeze(-1)
    )
    refit = kept_by["risk_refit"]
    result = {
        "run": args.run,
        "cache": args.cache,
        "world": read.world_name,
        "samples": len(x),
        "command": script_command(),
        "pooled_count_per_sample": float(counted.float().mean()),
        "held_per_sample": float(held_count.float().mean()),
        "readers": found,
        "refit_beyond_pooled_count": {
            "true_per_sample": float((refit & beyond & on).sum(-1).float().mean()),
            "false_per_sample": float((refit & beyond & ~on).sum(-1).float().mean()),
        },
    }
    if args.json:
        write_json(args.json, result)
    print_reading(result)


def print_reading(result: dict) -> None:
    """Each reader's line, then ``risk_refit``'s latents past the pooled count."""
    for rule, got in result["readers"].items():
        print(f"{rule:<26} {got['ratio']:.3f}× held, true {got['true_per_sample']:.2f}, "
              f"false {got['false_per_sample']:.2f} per sample")  # fmt: skip
    past = result["refit_beyond_pooled_count"]
    print(f"risk_refit's latents beyond the pooled count ({result['pooled_count_per_sample']:.2f}"
          f" per sample): true {past['true_per_sample']:.2f}, false "
          f"{past['false_per_sample']:.2f} per sample")  # fmt: skip


if __name__ == "__main__":
    main()
