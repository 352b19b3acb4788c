"""Where ``risk_refit`` and ``risk_floor`` part: the latents one keeps and the other drops.

``risk_floor`` prices each latent by the encoder's own activation; ``risk_refit`` re-fits each
token's candidates by least squares first. On one TopK dictionary of a world, on its first
scored samples, this prints for both readings (and TopK's own code, and ``risk_refit`` at the
truth's noise level: the energy per dimension of the features the width does not hold) the
kept latents per sample whose one-to-one matched feature is on (true) or off (false). Of the
latents ``risk_refit`` keeps, split by whether ``risk_floor`` keeps them too and whether they
are true:

- how many per sample;
- the feature's true amplitude and the encoder's decoder-scaled activation (true ones), against
  the price ``risk_floor`` set (sqrt(2 ln h sigma^2) at its pooled level on these samples);
- the encoder's activation over the re-fit amplitude;
- for false ones, the largest |cosine| of the latent's decoder row with a feature on in that
  sample, and whether that feature is among those the width holds: a false latent explaining
  a real firing (a relative, or a feature the width does not hold) sits near it; one fitting
  what no single feature explains does not.

    python scripts/synth_refit_diagnosis.py runs/synthbench_mix/runs/synthsaebench-4k-mix/topk-k6 \\
        runs/synthbench_mix/cache/synthsaebench-4k-mix-eval --json results/synthbench/refit/mix-8m-topk-k6.json
"""

from __future__ import annotations

import json
import math

import torch

from hf_topafa.evaluation.on_truth import dictionary_on_truth_from_command_line
from hf_topafa.evaluation.sparse_recovery import unheld_noise
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae import risk
from hf_topafa.sae.reading import read_with

QUANTILES = (0.1, 0.5, 0.9)
COSINE_PAIRS = 5000  # false (token, latent) pairs whose nearest firing feature is looked up


def quantiles(values: torch.Tensor) -> list[float] | None:
    if values.numel() == 0:
        return None
    return [round(v, 3) for v in values.float().quantile(torch.tensor(QUANTILES)).tolist()]


@torch.no_grad()
def main() -> None:
    read, args = dictionary_on_truth_from_command_line(__doc__)
    base, codes, held, match, on, x = read.sae, read.codes, read.held, read.match, read.on, read.x
    n, features = len(codes), read.world.feature_dict.feature_vectors
    pre = base.pre_activations(x)
    norms = torch.linalg.vector_norm(base.W_dec, dim=-1)
    z = read.centered()
    price = math.sqrt(2 * math.log(pre.shape[-1]) * risk.pooled_level(pre, base.W_dec, z))
    codes_by = {"topk": base(x).feature_acts}
    unheld = unheld_noise(codes, held, z.shape[-1])
    for rule in ("risk_floor", "risk_refit", f"risk_refit@{unheld:.6g}"):
        codes_by[rule] = read_with(base, rule).eval()(x).feature_acts
    held_l0 = float(read.firings().float().mean())
    result = {"run": args.run, "cache": args.cache, "samples": n, "command": script_command(),
              "floor_price": price, "unheld_noise": unheld, "held_l0": held_l0,
              "readings": {}, "refit_kept": {}}  # fmt: skip
    for rule, acts in codes_by.items():
        kept = acts != 0
        result["readings"][rule] = {"kept": float(kept.sum()) / n,
                                    "true": float((kept & on).sum()) / n,
                                    "false": float((kept & ~on).sum()) / n}  # fmt: skip
    refit, floor = codes_by["risk_refit"] != 0, codes_by["risk_floor"] != 0
    amplitude = codes[:, match.clamp_min(0)]
    cosines = (torch.nn.functional.normalize(base.W_dec, dim=-1) @ features.T).abs()  # [h, F]
    for floor_name, by_floor in (("floor keeps too", floor), ("floor drops", ~floor)):
        for truth_name, by_truth in (("true", on), ("false", ~on)):
            pairs = refit & by_floor & by_truth
            group = {"per_sample": float(pairs.sum()) / n,
                     "encoder_over_refit": quantiles(pre[pairs] / codes_by["risk_refit"][pairs]),
                     "encoder_scaled": quantiles((pre * norms)[pairs])}  # fmt: skip
            if truth_name == "true":
                group["true_amplitude"] = quantiles(amplitude[pairs])
            else:
                rows, cols = pairs.nonzero(as_tuple=True)
                rows, cols = rows[:COSINE_PAIRS], cols[:COSINE_PAIRS]
                near = torch.where(codes[rows] > 0, cosines[cols], torch.zeros(()))
                best, which = near.max(-1)
                group["nearest_firing_cosine"] = quantiles(best)
                group["nearest_firing_held"] = (
                    float(held[which].float().mean()) if len(which) else None
                )
            result["refit_kept"][f"{floor_name}, {truth_name}"] = group
    print(f"held L0 {result['held_l0']:.2f}; risk_floor's price on a decoder-scaled activation "
          f"{price:.3f}")  # fmt: skip
    for rule, r in result["readings"].items():
        print(f"  {rule:<20} keeps {r['kept']:6.2f} per sample: {r['true']:.2f} true, "
              f"{r['false']:.2f} false")  # fmt: skip
    for name, g in result["refit_kept"].items():
        print(f"risk_refit keeps, {name}: {json.dumps(g)}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
