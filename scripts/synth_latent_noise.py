"""Per-latent noise thresholds, read post hoc on a trained dictionary against the truth.

A latent's decoder-scaled pre-activation (before the ReLU) is interference when its matched true
feature is off and signal when it is on. Where the interference is Gaussian, its location and
scale can be read from the lower half of the latent's own values (signal sits above): mu = the
median, sigma = (median - lower quartile) / 0.6745. The latent's level is then where its values
stop being mostly noise: windows of 0.25 sigma from 0.5 sigma up, and the level is the upper edge
of the highest window in which the expected Gaussian noise count (n Phi-differences) exceeds half
of what is observed there (a local false discovery rate of 1/2, the Bayes crossing for equal
costs). No k, no level chosen with the truth. The ``latent_noise`` rule applies the same reading
while training (``hf_topafa.sae.kfree``, whose helpers this script uses).

A second truth-free reading drops the Gaussian and assumes only that the interference is
symmetric about the median: the noise expected in a window above the median is what is observed
in the same window mirrored below it (the oracle's windows, with the labels replaced by the
mirror). It needs no shape, so it is the reading to try where a latent's values are a spike with
tails (a sparse world), not a Gaussian.

Beside them, the same crossing with the truth's labels (the oracle per-latent level: the most a
per-latent threshold can do on this dictionary) and the fit's checks: the estimated sigma against
the labelled interference's standard deviation, and the interference's tail above 3 sigma against
the Gaussian's 0.00135. Per reading, the share of its false positives (kept where the matched
feature is off) in samples where that feature's parent or one of its children is active: noise
that comes from the hierarchy rather than from unrelated features, which no symmetric or
Gaussian model of interference expects.

The first line printed checks the noise floor's model the same way, across a sample's latents
instead of across a latent's samples (``token_noise_check``; ``--per-sample-only`` stops there).

    python scripts/synth_latent_noise.py runs/synthbench/runs/synthsaebench-4k/topk-k16 \\
        runs/synthbench/cache/synthsaebench-4k-eval
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.evaluation.ground_truth import (
    hierarchy_parents,
    matched_features,
    relative_on,
    score_against_truth,
)
from hf_topafa.sae.kfree import (
    SIGMA_EDGES,
    centred_noise_level,
    crossing_level,
    decoder_scaled_preactivations,
    gaussian_fit,
    gaussian_window_counts,
    noise_floor_level,
    token_centre_spread,
    token_noise_sigma,
    window_counts,
)

# the oracle's and mirror's windows: absolute, log-spaced (about 26% apart), so that a latent
# whose values are not Gaussian (a spike and long tails: its sigma is tiny) is still cut where
# its labels (or its mirror) say
LEVEL_WINDOWS = torch.cat([torch.logspace(-2, 1.3, 34), torch.tensor([float("inf")])])
SHOWN = ("l0", "f1", "mcc", "precision", "recall", "l0_corr")


@torch.no_grad()
def latent_levels(raw: torch.Tensor, on: torch.Tensor) -> dict:
    """Per-latent levels (decoder-scaled, input scale): the Gaussian and mirror readings (truth-
    free) and the oracle (``on``: the truth's labels); and the Gaussian fit's checks."""
    median, sigma = gaussian_fit(raw)
    z = (raw - median) / sigma
    centred = raw - median
    observed = window_counts(centred, LEVEL_WINDOWS)
    gaussian = gaussian_window_counts(raw.shape[0], SIGMA_EDGES)
    mirrored = window_counts(-centred, LEVEL_WINDOWS)  # the same windows, below the median
    labelled = window_counts(torch.where(on, -torch.inf, centred), LEVEL_WINDOWS)
    off = (~on).float()
    noise_var = (raw.pow(2) * off).sum(0) / off.sum(0) - ((raw * off).sum(0) / off.sum(0)).pow(2)
    tail = ((z > 3) & ~on).float().sum(0) / off.sum(0)
    return {
        "free": crossing_level(window_counts(z, SIGMA_EDGES), gaussian, SIGMA_EDGES) * sigma
        + median,
        "mirror": crossing_level(observed, mirrored, LEVEL_WINDOWS) + median,
        "oracle": crossing_level(observed, labelled, LEVEL_WINDOWS) + median,
        "sigma_over_noise_sd": float((sigma / noise_var.clamp_min(1e-12).sqrt()).median()),
        "noise_tail_above_3_sigma": float(tail.median()),
    }


@torch.no_grad()
def token_noise_check(raw: torch.Tensor, on: torch.Tensor) -> dict:
    """The noise floor's model, checked per sample against the labels: it takes the interference
    across a sample's latents as zero-centred Gaussian, reads its scale from the sample's positive
    values, and keeps what clears the level that allows about one false positive per sample.
    Medians over samples of the scale it reads and of the interference's mean, both over the
    interference's standard deviation; means of the false positives at its level, of what the
    model allows there, and of the true positives against the matched features on. Then the
    same for the model done right where it can be (``centred_``): centre and spread read from
    all of a sample's values (median and MAD), the level allowing half a false positive."""
    scaled = raw.clamp_min(0)
    off = (~on).double()
    n_off = off.sum(-1)
    mean = (raw * off).sum(-1) / n_off
    sd = ((raw.double().pow(2) * off).sum(-1) / n_off - mean.pow(2)).clamp_min(1e-12).sqrt()
    kept = scaled > noise_floor_level(scaled).unsqueeze(-1)
    allowed = n_off * 0.5 / (scaled > 0).sum(-1).clamp_min(1)
    # the same model with its centre and spread read robustly from all of the sample's values
    # (median, median absolute deviation): the level allows half a false positive per sample
    _, spread = token_centre_spread(raw)
    centred = raw > centred_noise_level(raw)
    return {
        "sample_sigma_over_noise_sd": float((token_noise_sigma(scaled) / sd).nanmedian()),
        "sample_noise_mean_over_sd": float((mean / sd).median()),
        "sample_false_pos": float((kept & ~on).sum(-1).float().mean()),
        "sample_false_pos_allowed": float(allowed.mean()),
        "sample_true_pos": float((kept & on).sum(-1).float().mean()),
        "sample_matched_on": float(on.sum(-1).float().mean()),
        "centred_spread_over_noise_sd": float((spread.squeeze(-1) / sd).median()),
        "centred_false_pos": float((centred & ~on).sum(-1).float().mean()),
        "centred_false_pos_allowed": float((n_off * 0.5 / raw.shape[-1]).mean()),
        "centred_true_pos": float((centred & on).sum(-1).float().mean()),
    }


def read_at_levels(run: str, levels: torch.Tensor):
    """The SAE at ``run`` read as a JumpReLU whose thresholds are ``levels`` (decoder-scaled)."""
    from hf_topafa.sae.reading import read_with

    sae = read_with(SparseAutoencoder.from_pretrained(run), "jumprelu")
    with torch.no_grad():
        sae.threshold.copy_(levels / torch.linalg.vector_norm(sae.W_dec, dim=-1))
    return sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE folder (inputs not standardized)")
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument(
        "--per-sample-only", action="store_true", help="only the noise floor's per-sample check"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    from hf_topafa.evaluation.ground_truth import truth_for

    sae = SparseAutoencoder.from_pretrained(args.run).eval()
    if sae.config.input_normalization != "none":
        raise SystemExit("give an SAE trained with input_normalization none")
    world, truth, _ = truth_for(args.cache, args.samples)
    codes = truth.rows(0, truth.num_samples)
    match = matched_features(sae.W_dec, world.feature_dict.feature_vectors)
    on = codes[:, match] > 0
    with torch.no_grad():  # the SAE was checked above to take its input unstandardized
        raw = decoder_scaled_preactivations(sae, world.feature_dict(codes))
    print(json.dumps({key: round(value, 4) for key, value in token_noise_check(raw, on).items()}))
    if args.per_sample_only:
        return
    found = latent_levels(raw, on)
    related = relative_on(codes, hierarchy_parents(world), match)
    print(json.dumps({key: round(found[key], 5) for key in
                      ("sigma_over_noise_sd", "noise_tail_above_3_sigma")}
                     | {"off_with_relative": round(float(related[~on].float().mean()), 4)}))  # fmt: skip
    for reading in ("free", "mirror", "oracle"):
        row = score_against_truth(read_at_levels(args.run, found[reading]), world, truth)["row"]
        shown = {key: round(row[key], 3) if isinstance(row[key], float) else row[key]
                 for key in SHOWN}  # fmt: skip
        false_pos = (raw > found[reading]) & ~on
        shown["false_pos_with_relative"] = round(float(related[false_pos].float().mean()), 3)
        print(json.dumps({"reading": f"per-latent {reading}", **shown}))


if __name__ == "__main__":
    main()
