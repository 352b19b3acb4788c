"""Should seed agreement leave dead latents out?

`hf-topafa agreement` and `choose-k` match every latent of one seed's decoder to the other's,
dead ones included, so at a small k, where many latents never fire, the mean matched |cos| is
pulled toward chance. This measures the alternative side by side: for each pair of SAEs trained
alike from two seeds, the agreement over all latents, over the latents that fire on held-out
activations only (live rows matched to live rows), and, where the cache is a synthetic world's,
each dictionary's MCC with the true features both ways. If dropping dead latents made the
agreement a better guide, its best k would be the truth's best k on the synthetic worlds.

    python scripts/agreement_live_latents.py runs/synthbench/cache/synthsaebench-4k-eval \\
        --pair runs/synthbench/runs/synthsaebench-4k/topk-k8 runs/synthbench_seeds/runs/synthsaebench-4k/topk-k8 \\
        --pair ... --json results/synthbench/seeds/live-latents-4k.json
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.evaluation.agreement import dictionary_agreement
from hf_topafa.helpers import script_command, write_json


@torch.no_grad()
def live_latents(sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Which latents fire at least once on ``x``."""
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool)
    for chunk in x.split(batch_size):
        fired |= (sae(chunk).feature_acts != 0).any(0)
    return fired


def true_features(cache: ActivationCache) -> torch.Tensor | None:
    """The world's feature vectors when the cache was sampled from a synthetic world."""
    from hf_topafa.data.synthetic_cache import is_synthetic_cache, world_of_cache

    if not is_synthetic_cache(cache.manifest):
        return None
    return world_of_cache(cache.manifest).feature_dict.feature_vectors


def measure_pair(first: str, second: str, x: torch.Tensor, features: torch.Tensor | None) -> dict:
    saes = [SparseAutoencoder.from_pretrained(path) for path in (first, second)]
    live = [live_latents(sae, x) for sae in saes]
    W = [sae.W_dec.detach() for sae in saes]
    row = {"first": first, "second": second, "live": [int(m.sum()) for m in live],
           "d_sae": saes[0].config.d_sae,
           "agreement_all": dictionary_agreement(W[0], W[1])["mcc"],
           "agreement_live": dictionary_agreement(W[0][live[0]], W[1][live[1]])["mcc"]}  # fmt: skip
    if features is not None:
        row["truth_mcc_all"] = [dictionary_agreement(w, features)["mcc"] for w in W]
        row["truth_mcc_live"] = [dictionary_agreement(w[m], features)["mcc"]
                                 for w, m in zip(W, live, strict=True)]  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="held-out activations (an evaluation cache)")
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("FIRST", "SECOND"),
                   help="two run folders trained alike from different seeds; repeat per setting")  # fmt: skip
    p.add_argument("--samples", type=int, default=16384, help="held-out activations to read")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    try:
        cache = ActivationCache(args.cache)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"{args.cache}: {exc}") from None
    x = cache.first_activations(args.samples).float()
    features = true_features(cache)
    rows = []
    for first, second in args.pair:
        rows.append(measure_pair(first, second, x, features))
        print(json.dumps({k: [round(v, 3) for v in val] if isinstance(val, list) and k != "live"
                          else round(val, 3) if isinstance(val, float) else val
                          for k, val in rows[-1].items()}), flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, {"cache": args.cache, "samples": len(x), "rows": rows,
                               "command": script_command()})  # fmt: skip


if __name__ == "__main__":
    main()
