"""Why top-AFA overshoots the true L0: its code against the truth, sample by sample.

For a trained SAE and a synthetic world's stored truth set, prints (medians over samples):
- the AFA itself: ‖x − bias‖ / ‖f_true‖, and the SAE's ‖f̃‖ / ‖x − b_dec‖ (what top-AFA matches);
- where the SAE's energy sits: the share of ‖f̃‖² in its 16 (and true-L0) largest activations,
  against the same share for the true code;
- the largest activation, the SAE's against the truth's, and the number kept against the number
  of positive pre-activations (a cut that keeps nearly all of them is a ReLU);
- how many of each code's largest activations it takes to reach half of ‖z‖²: spreading shows
  as a count far above the truth's.

    python scripts/topafa_diagnosis.py runs/synthbench/runs/synthsaebench-4k/topafa-afa1-32 \\
        runs/synthbench/cache/synthsaebench-4k-eval
"""

from __future__ import annotations

import argparse

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.ground_truth import TruthSet


def cumulative_reach(energy: torch.Tensor, target_sq: torch.Tensor) -> torch.Tensor:
    """Per row, how many of the largest entries of ``energy`` it takes to reach ``target_sq``."""
    cum = energy.sort(-1, descending=True).values.cumsum(-1)
    reached = cum >= target_sq.unsqueeze(-1)
    return torch.where(reached.any(-1), reached.float().argmax(-1) + 1, energy.shape[-1])


def top_share(energy: torch.Tensor, n: int) -> torch.Tensor:
    """The share of each row's total carried by its ``n`` largest entries."""
    return energy.topk(n, dim=-1).values.sum(-1) / energy.sum(-1).clamp_min(1e-12)


@torch.no_grad()
def diagnose(run: str, cache: str, samples: int) -> dict[str, float]:
    sae = SparseAutoencoder.from_pretrained(run).eval()
    manifest = ActivationCache(cache).manifest
    world = world_of_cache(manifest)
    truth = TruthSet.from_cache(ActivationCache(cache), world.cfg.num_features, limit=samples)
    codes = truth.rows(0, truth.num_samples)
    keep = (codes != 0).sum(-1) > 0
    codes, x = codes[keep], world.feature_dict(codes[keep])
    out = sae(x)
    x_n, _, std = sae.normalize_input(x)
    scale = sae.input_scale(std).reshape(-1, 1)
    energy = (out.feature_acts * torch.linalg.vector_norm(sae.W_dec, dim=-1) * scale).pow(2)
    true_energy = codes.pow(2)
    z_sq = (x_n - sae.b_dec).pow(2).sum(-1) * scale.reshape(-1).pow(2)
    true_z_sq = (x - world.feature_dict.bias).pow(2).sum(-1)
    true_l0 = (codes != 0).sum(-1)
    positive = (sae.pre_activations(x) > 0).sum(-1).float()
    median = lambda t: float(t.float().median())  # noqa: E731
    return {
        "AFA: ||x - bias|| / ||f_true||": median(
            (x - world.feature_dict.bias).norm(dim=-1) / codes.norm(dim=-1)
        ),
        "SAE: ||f~|| / ||x - b_dec|| (what top-AFA matches)": median(energy.sum(-1).sqrt() / z_sq.sqrt()),
        "true L0": median(true_l0),
        "SAE L0": median(out.l0),
        "positive pre-activations": median(positive),
        "SAE L0 / positive pre-activations": median(out.l0 / positive.clamp_min(1)),
        "truth: energy share of its 16 largest": median(top_share(true_energy, 16)),
        "SAE: energy share of its 16 largest": median(top_share(energy, 16)),
        "largest activation, truth": median(codes.abs().max(-1).values),
        "largest activation, SAE (decoder-scaled, input scale)": median(energy.max(-1).values.sqrt()),
        "count reaching half of ||z||^2, truth": median(cumulative_reach(true_energy, 0.5 * true_z_sq)),
        "count reaching half of ||z||^2, SAE": median(cumulative_reach(energy, 0.5 * z_sq)),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE folder")
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument("--samples", type=int, default=10000)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name, value in diagnose(args.run, args.cache, args.samples).items():
        print(f"{name:58s} {value:10.3f}")


if __name__ == "__main__":
    main()
