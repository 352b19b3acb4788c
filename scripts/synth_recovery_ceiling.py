"""How many of the true features a width holds three decoders recover per synthetic world, given
the world's own most frequent features as the dictionary (``ground_truth.oracle_sae``), the
noise level from the truth (the energy of the features the width does not hold, per dimension),
and three counts per sample against what the width holds (``evaluation.sparse_recovery``):

- ``clearing``: the held features whose magnitude pays the universal price against that noise
  alone (no interference among the held ones: a ceiling);
- ``lasso``: the non-negative lasso at the universal level, all rows solved jointly;
- ``pursuit``: orthogonal matching pursuit, counted by risk inflation at the known level.

Written to ask whether the dense world's count misses are the world's or the readings'
(``results/synthbench``, "What the dense world hides").

    python scripts/synth_recovery_ceiling.py runs/synthbench_dense12m/cache/synthsaebench-4k-dense-eval \\
        --samples 5000 --json results/synthbench/recovery/dense.json
"""

from __future__ import annotations

import argparse
import math

import torch

from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import is_synthetic_cache, world_of_cache
from hf_topafa.evaluation.ground_truth import TruthSet, correlation, most_frequent, oracle_sae
from hf_topafa.evaluation.sparse_recovery import (
    clearing_price,
    nonnegative_lasso,
    pursuit_path,
    unheld_noise,
    universal_price,
)
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae import risk
from hf_topafa.sae.kfree import centered_input


def scored(kept: torch.Tensor, on: torch.Tensor, true_l0: torch.Tensor) -> dict:
    """Per-sample means of the kept rows (bool [N, rows]) split by whether their feature is
    active (``on``), and the kept count's correlation with the true count of held features."""
    count = kept.sum(-1).float()
    return {
        "l0": float(count.mean()),
        "ratio": float(count.mean() / true_l0.mean()),
        "true": float((kept & on).sum(-1).float().mean()),
        "false": float((kept & ~on).sum(-1).float().mean()),
        "corr": correlation(count, true_l0),
    }


@torch.no_grad()
def recovery(cache_path: str, width: int, samples: int, steps: int) -> dict:
    """The three counts on the first ``samples`` of a synthetic cache stored with its truth. The
    held features are the ``width`` most frequent over all of the cache's samples: chosen on
    the samples read alone, features that fired there by chance would be held and the width
    would seem to hold more."""
    cache = ActivationCache(cache_path)
    if not is_synthetic_cache(cache.manifest):
        raise ValueError("was not sampled from a synthetic world: no truth to read against")
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features)
    samples = min(samples, truth.num_samples)
    codes = truth.rows(0, samples)
    held = most_frequent(truth.feature_counts(), width)
    on = codes[:, held] > 0
    true_l0 = on.sum(-1).float()
    sae = oracle_sae(world, truth, width)
    x = cache.first_activations(samples)
    z = centered_input(sae, sae.normalize_input(x)[0])
    sigma2 = unheld_noise(codes, held, z.shape[-1])
    price = universal_price(width, sigma2)
    lasso = nonnegative_lasso(sae.W_dec, z, math.sqrt(price)) > 0
    rss, chosen = pursuit_path(sae.W_dec, z, steps)
    counts = risk.known_noise_counts(rss, width, sigma2)
    kept = torch.arange(steps).unsqueeze(0) < counts.unsqueeze(-1)
    clearing = clearing_price(codes, held, sigma2).float()
    return {
        "cache": cache_path,
        "world": cache.manifest["synthetic"]["world"],
        "width": width,
        "samples": samples,
        "held_over": truth.num_samples,
        "d": z.shape[-1],
        "true_l0": float((codes > 0).sum(-1).float().mean()),
        "width_holds": float(true_l0.mean()),
        "unheld_noise": sigma2,
        "price": price,
        "clearing": {
            "l0": float(clearing.mean()),
            "ratio": float(clearing.mean() / true_l0.mean()),
        },
        "lasso": scored(lasso, on, true_l0),
        "pursuit": {
            **scored(kept, on.gather(-1, chosen), true_l0),
            "steps": steps,
            "at_last_step": float((counts == steps).float().mean()),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="a synthetic activation cache stored with its truth")
    p.add_argument("--width", type=int, default=1024, help="the dictionary's width (default 1024)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--steps", type=int, default=64, help="pursuit steps (more than it keeps)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.width < 1 or args.samples < 2 or args.steps < 1:
        raise SystemExit("--width and --steps must be at least 1, --samples at least 2")
    torch.set_num_threads(1)
    try:
        found = recovery(args.cache, args.width, args.samples, args.steps)
    except ValueError as err:
        raise SystemExit(f"{args.cache}: {err}") from None
    for part in ("clearing", "lasso", "pursuit"):
        print(f"{found['world']} {part}: " + ", ".join(
            f"{key} {value:.4g}" for key, value in found[part].items() if value is not None))  # fmt: skip
    print(f"{found['world']}: width holds {found['width_holds']:.3f} per sample, unheld noise "
          f"{found['unheld_noise']:.4g} per dimension")  # fmt: skip
    if args.json:
        write_json(args.json, {**found, "command": script_command()})


if __name__ == "__main__":
    main()
