"""What a count from the AFA's energy reads on a trained dictionary, checked against the truth.

The AFA says ||x - b_dec||^2 is about the true code's energy, so the code's count is that energy
over one feature's. ``afa_energy`` measures one feature's energy on the activations that clear
their token's centred noise level (``kfree.confident_energy``). This script shows, per
dictionary, how well each way of measuring it reads the true magnitudes of the matched
features it detects: the encoder's decoder-scaled value, or the projection of x - b_dec onto
the latent's unit decoder row (``afa_energy``'s). Then the counts each gives from the input's
energy, the count from the reconstruction's energy, and what the width cannot hold. Last, what
the samples that hold no true feature do to the measure (``empty_token_detections``): on the
sparse world a quarter of the samples are empty, and each passes its own noise level many times.

    python scripts/synth_energy.py runs/synthbench/runs/synthsaebench-4k/topk-k16 \\
        runs/synthbench/cache/synthsaebench-4k-eval --samples 5000
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa.evaluation.ground_truth import (
    correlation,
    matched_features,
    most_frequent,
    truth_for,
)
from hf_topafa.sae.kfree import (
    centered_input,
    confident_detections,
    confident_energy,
    decoder_projections,
    decoder_scaled_preactivations,
)


@torch.no_grad()
def energy_readings(
    raw: torch.Tensor,
    projections: torch.Tensor,
    magnitude: torch.Tensor,
    input_energy: torch.Tensor,
    reconstruction_energy: torch.Tensor,
) -> dict:
    """``raw`` [N, h]: decoder-scaled encoder products before the ReLU; ``projections`` [N, h]:
    x - b_dec onto each unit decoder row; ``magnitude`` [N, h]: the true magnitude of each
    latent's matched feature (0 where it is off); ``input_energy``, ``reconstruction_energy``
    [N]: ||x - b_dec||^2 and ||x_hat - b_dec||^2. Medians of the two measures over the true
    magnitude on detected true features; the energies they give; the mean counts."""
    detected = confident_detections(raw)
    on = magnitude > 0
    hit = detected & on
    by_encoder = raw[detected].pow(2).median()
    by_projection = confident_energy(raw, projections)
    return {
        "detected_true": float(hit.sum(-1).float().mean()),
        "detected_false": float((detected & ~on).sum(-1).float().mean()),
        "encoder_over_magnitude": float((raw[hit] / magnitude[hit]).median()),
        "projection_over_magnitude": float((projections[hit] / magnitude[hit]).median()),
        "energy_by_encoder": float(by_encoder),
        "energy_by_projection": float(by_projection),
        "count_input_by_encoder": float((input_energy / by_encoder).mean()),
        "count_input_by_projection": float((input_energy / by_projection).mean()),
        "count_reconstruction_by_encoder": float((reconstruction_energy / by_encoder).mean()),
    }


def empty_token_detections(
    raw: torch.Tensor, projections: torch.Tensor, empty: torch.Tensor, input_energy: torch.Tensor
) -> dict:
    """What samples with no true feature (``empty`` [N], bool) add to ``confident_energy``: the
    detections each makes against its own noise level (its values are the encoder's bias and
    interference only, so its level is relative to nothing), and one feature's energy and the
    count read without them (the median over the other samples' detections; it needs the truth
    to know which samples are empty, so it is a diagnosis, not a rule)."""
    energy = confident_energy(raw[~empty], projections[~empty])  # a token's level is its own
    return {
        "empty_fraction": float(empty.float().mean()),
        "detections_per_empty_sample": float(
            confident_detections(raw[empty]).sum(-1).float().mean()
        )
        if bool(empty.any())
        else 0.0,
        "energy_by_projection_without_empty": float(energy),
        "count_input_by_projection_without_empty": float((input_energy / energy).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE folder (inputs not standardized)")
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument("--samples", type=int, default=5000)
    args = p.parse_args()
    torch.set_num_threads(1)
    from hf_topafa import SparseAutoencoder

    sae = SparseAutoencoder.from_pretrained(args.run).eval()
    if sae.config.input_normalization != "none":
        raise SystemExit("give an SAE trained with input_normalization none")
    world, truth, _ = truth_for(args.cache, args.samples)
    codes = truth.rows(0, truth.num_samples)
    x = world.feature_dict(codes)
    match = matched_features(sae.W_dec, world.feature_dict.feature_vectors)
    held = most_frequent((codes > 0).sum(0), sae.config.d_sae)
    with torch.no_grad():
        raw = decoder_scaled_preactivations(sae, x)
        projections = decoder_projections(sae, x)
        z = centered_input(sae, x)
        recon = sae(x).reconstruction - sae.b_dec
    found = energy_readings(
        raw, projections, codes[:, match], z.pow(2).sum(-1), recon.pow(2).sum(-1)
    )
    empty = (codes > 0).sum(-1) == 0
    found |= empty_token_detections(raw, projections, empty, z.pow(2).sum(-1))
    width_count = (codes[:, held] > 0).sum(-1).float()
    recon_count = recon.pow(2).sum(-1) / found["energy_by_encoder"]
    energy = codes.pow(2).sum(-1)
    truth_facts = {
        "true_l0": float((codes > 0).sum(-1).float().mean()),
        "true_l0_width": float(width_count.mean()),
        "true_energy_per_feature": float(codes[codes > 0].pow(2).mean()),
        "energy_outside_width": float(1 - codes[:, held].pow(2).sum() / energy.sum()),
        "residual_fraction": float((z - recon).pow(2).sum() / z.pow(2).sum()),
        "reconstruction_count_corr": correlation(recon_count, width_count),
    }  # fmt: skip
    print(json.dumps({key: round(value, 4) for key, value in (found | truth_facts).items()}))


if __name__ == "__main__":
    main()
