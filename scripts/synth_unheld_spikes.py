"""Do a reader's false latents sit where the features the width does not hold fire?

A dictionary of width h holds at most the h most frequent true features; the others (unheld)
still fire and leave their energy in the input. Where few of them fire per sample, that energy
is a few large spikes in a few directions, not the white noise at the pooled level sigma^2 that
the risk price 2 ln h sigma^2 assumes. On one TopK dictionary of a world, on its first scored
samples, this prints for TopK's own code, ``risk_floor`` and ``risk_refit`` (read as procedure D
reads, before unfolding absorbed ancestors):

- the false latents per sample (kept, but the matched feature is off) in the samples where
  0, 1, 2 or 3+ unheld features fire, and their correlation with that count; of the readers'
  false latents, those whose feature's parent or child in the hierarchy is on (a relative's
  firing read by the wrong latent, not an unheld feature's);
- in the samples where no unheld feature fires, the correlation of ``risk_refit``'s extra
  false latents with the energy the held firings' matched latents miss (a^2 (1 - cos^2) per
  firing, cos the latent's |cosine| with its feature): least squares may fit an imperfect
  atom's miss with other latents; and there, ``risk_refit``'s false latents whose matched
  feature the width holds or not, and the amplitudes of those only it keeps against its
  true ones';
- the truth's unheld firings per sample and per dimension;
- a truth-free estimate of the same: the per-sample residual energy E of TopK's own code gives
  lambda = mean(E)^2 / var(E), the firings per sample a sum of equal spikes would give (the
  same statistic of the unheld features' own energy is printed beside it, the estimate's
  premise checked on the truth).

    python scripts/synth_unheld_spikes.py runs/synthbench_mix/runs/synthsaebench-4k-mix/topk-k6 \\
        runs/synthbench_mix/cache/synthsaebench-4k-mix-eval --json results/synthbench/spikes/mix-8m-topk-k6.json
"""

from __future__ import annotations

import torch

from hf_topafa.evaluation.ground_truth import correlation, hierarchy_parents, relative_on
from hf_topafa.evaluation.on_truth import dictionary_on_truth_from_command_line
from hf_topafa.helpers import script_command, write_json
from hf_topafa.sae.reading import read_with

READERS = ("risk_floor", "risk_refit")
GROUPS = ((0, 0), (1, 1), (2, 2), (3, None))  # unheld firings per sample: 0, 1, 2, 3+


def spike_count(energy: torch.Tensor) -> float:
    """mean(E)^2 / var(E): how many equal spikes per sample a sum of spikes with this spread
    of per-sample energies would hold (a Poisson count of them: mean^2 / var = their rate)."""
    energy = energy.double()
    return float(energy.mean() ** 2 / energy.var().clamp_min(1e-30))


def by_unheld_firings(false_by: dict, unheld: torch.Tensor) -> dict:
    """Per group of samples by their unheld firings (``GROUPS``): its share of the samples and
    each count of ``false_by`` [n] averaged over it."""
    groups = {}
    for low, high in GROUPS:
        rows = (unheld >= low) & (unheld <= (high if high is not None else unheld.max()))
        groups[f"{low}" if high == low else f"{low}+"] = {
            "share": float(rows.float().mean()),
            "false_per_sample": {
                rule: float(f[rows].mean()) if rows.any() else None for rule, f in false_by.items()
            },
        }
    return groups


def no_unheld_firing(codes_by: dict, on, clean, feature_held) -> dict:
    """In the ``clean`` samples (no unheld feature fires): ``risk_refit``'s false latents per
    sample whose matched feature the width holds (``feature_held`` [latents]) or not, and the
    median amplitude of those only it keeps against its true latents'."""
    refit, floor = codes_by["risk_refit"], codes_by["risk_floor"]
    refit_false = (refit != 0) & ~on & clean.unsqueeze(-1)
    refit_only = refit_false & (floor == 0)
    refit_true = (refit != 0) & on & clean.unsqueeze(-1)
    samples = max(int(clean.sum()), 1)
    return {
        "share": float(clean.float().mean()),
        "refit_false_feature_held": float((refit_false & feature_held).sum()) / samples,
        "refit_false_feature_unheld": float((refit_false & ~feature_held).sum()) / samples,
        "refit_only_false_amplitude_median": (
            float(refit[refit_only].median()) if refit_only.any() else None
        ),
        "refit_true_amplitude_median": float(refit[refit_true].median())
        if refit_true.any()
        else None,
    }


@torch.no_grad()
def main() -> None:
    read, args = dictionary_on_truth_from_command_line(__doc__)
    base, codes, held, on, x = read.sae, read.codes, read.held, read.on, read.x
    unheld = read.firings(held=False)  # [n]
    z = read.centered()
    d = z.shape[-1]
    codes_by = {"topk": base(x).feature_acts}
    for rule in READERS:
        codes_by[rule] = read_with(base, rule).eval()(x).feature_acts
    false_by = {rule: ((acts != 0) & ~on).sum(-1).float() for rule, acts in codes_by.items()}
    false_by["refit_surplus"] = false_by["risk_refit"] - false_by["risk_floor"]
    related = relative_on(codes, hierarchy_parents(read.world), read.match.clamp_min(0))
    related &= read.match >= 0
    for rule in READERS:  # false latents whose feature's parent or child is on: a relative's
        false_by[f"{rule}_relative"] = ((codes_by[rule] != 0) & ~on & related).sum(-1).float()
    # the energy of the held features' firings that their matched latents' directions miss
    feature_cosine = torch.zeros(codes.shape[-1])
    feature_cosine[read.match[read.match >= 0]] = read.cosine[read.match >= 0].float()
    missed = (codes[:, held].pow(2) * (1 - feature_cosine[held].pow(2))).sum(-1)
    clean = unheld == 0
    feature_held = held[read.match.clamp_min(0)] & (read.match >= 0)
    no_unheld = no_unheld_firing(codes_by, on, clean, feature_held)
    groups = by_unheld_firings(false_by, unheld)
    residual = (z - codes_by["topk"] @ base.W_dec).pow(2).sum(-1)
    unheld_energy = codes[:, ~held].pow(2).sum(-1)
    result = {
        "run": args.run,
        "cache": args.cache,
        "world": read.world_name,
        "samples": len(codes),
        "command": script_command(),
        "d": d,
        "unheld_per_sample": float(unheld.float().mean()),
        "unheld_per_dimension": float(unheld.float().mean()) / d,
        "kept_per_sample": {r: float((a != 0).sum(-1).float().mean()) for r, a in codes_by.items()},
        "false_per_sample": {rule: float(f.mean()) for rule, f in false_by.items()},
        "false_corr_with_unheld": {rule: correlation(f, unheld) for rule, f in false_by.items()},
        "by_unheld_firings": groups,
        "missed_energy_per_sample": float(missed.mean()),
        "no_unheld_firing": no_unheld,
        "refit_surplus_corr_with_missed_energy_no_unheld": (
            correlation(false_by["refit_surplus"][clean], missed[clean])
            if clean.sum() > 2
            else None
        ),
        "spikes_truth_free": {
            "per_sample": spike_count(residual),
            "per_dimension": spike_count(residual) / d,
        },
        "spikes_of_unheld_energy": {
            "per_sample": spike_count(unheld_energy),
            "per_dimension": spike_count(unheld_energy) / d,
        },
    }
    print(f"unheld firings {result['unheld_per_sample']:.2f} per sample "
          f"({result['unheld_per_dimension']:.4f} per dimension); truth-free spikes from TopK's "
          f"residual {result['spikes_truth_free']['per_dimension']:.4f} per dimension (from the "
          f"unheld energy itself {result['spikes_of_unheld_energy']['per_dimension']:.4f})")  # fmt: skip
    for name, group in groups.items():
        counts = "  ".join(f"{r} {v:.2f}" for r, v in group["false_per_sample"].items()
                           if v is not None)  # fmt: skip
        print(f"  {name:>2} unheld ({group['share']:.0%} of samples): false per sample {counts}")
    corr = "  ".join(f"{r} {v:.2f}" for r, v in result["false_corr_with_unheld"].items()
                     if v is not None)  # fmt: skip
    print(f"  false count's correlation with the unheld count: {corr}")
    print(f"  missed energy {result['missed_energy_per_sample']:.2f} per sample; with no unheld "
          f"firing, its correlation with risk_refit's extra false latents "
          f"{result['refit_surplus_corr_with_missed_energy_no_unheld']}")  # fmt: skip
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
