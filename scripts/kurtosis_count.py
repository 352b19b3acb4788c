"""How many features per token trained dictionaries read in any activation cache, by the AFA and
the fourth moment of their decoder projections (``kfree.kurtosis_count``), beside each SAE's own
L0. No truth is needed: on SmolLM2 this is what the estimator says of a language model's data.

It counts the code's energy in units of one feature's, not features: on the synthetic worlds,
with the dictionary's rows the true features, it reads 1.31-1.42x what the width holds
(``ground_truth.kurtosis_reading_of_truth`` predicts it from the truth), and less on a
dictionary whose latents absorbed their parents; a dictionary that has not learned shows no
excess, and the count is then its cap, d / 2.

    hf-topafa harvest --holdout eval --max-tokens 4096 --output runs/smollm2-eval-cache
    python scripts/kurtosis_count.py runs/smollm2-eval-cache runs/smollm2-topk33 runs/smollm2-afa-energy

Each SAE's L0 and normalized MSE (per token ||x - x_hat||^2 / ||x||^2 in the input's space, the
mean over tokens) are printed beside it, and with ``--read`` the same for the SAE read by
``afa_kurtosis`` (its threshold dropped: the tokens' own kurtosis count spent across them).
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.sae import kfree


@torch.no_grad()
def l0_and_error(sae: SparseAutoencoder, x: torch.Tensor) -> dict:
    """The SAE's mean L0 on ``x`` and its normalized MSE in the input's space."""
    out = sae(x)
    error = (x - out.reconstruction).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-30)
    return {"l0": float((out.feature_acts != 0).sum(-1).float().mean()),
            "normalized_mse": float(error.mean())}  # fmt: skip


@torch.no_grad()
def read_count(sae: SparseAutoencoder, x: torch.Tensor) -> dict:
    """The dictionary's kurtosis count on ``x`` (in the SAE's normalized space), its L0 and
    normalized MSE."""
    x_n = sae.normalize_input(x)[0]
    projections = kfree.decoder_projections(sae, x_n)
    count = kfree.kurtosis_count(projections, kfree.centered_input(sae, x_n))
    return {"kurtosis_count": float(count), **l0_and_error(sae, x), "cap": sae.config.d_in / 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="an activation cache (hf-topafa harvest)")
    p.add_argument("runs", nargs="+", help="trained SAE folders")
    p.add_argument("--tokens", type=int, default=4096, help="how many of the cache's tokens")
    p.add_argument("--read", action="store_true", help="also read each SAE by afa_kurtosis")
    args = p.parse_args()
    torch.set_num_threads(1)
    cache = ActivationCache(args.cache)
    x = cache.first_activations(args.tokens)
    for run in args.runs:
        sae = SparseAutoencoder.from_pretrained(run).eval()
        row = {"run": run, "tokens": x.shape[0], **read_count(sae, x)}
        if args.read:
            from hf_topafa.sae.reading import read_with

            read = l0_and_error(read_with(sae, "afa_kurtosis"), x)
            row.update({f"kurtosis_read_{key}": value for key, value in read.items()})
        print(
            json.dumps({key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()})
        )


if __name__ == "__main__":
    main()
