"""A trained SAE's dictionary read by other selection rules at inference, scored against the truth.

The weights stay as trained; only the rule that picks each sample's features changes (an
estimated threshold is dropped, so rules that need one start from their own estimate). This is
how the k-free rules were screened post hoc: e.g. the risk inflation criterion on the TopK k = 16
and afa_band dictionaries of the 4k world.

    python scripts/synth_reread.py runs/synthbench/runs/synthsaebench-4k/topk-k16 \\
        runs/synthbench/cache/synthsaebench-4k-eval risk_inflation noise_floor topk:8 afa_batch@1.75
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.ground_truth import TruthSet, score_against_truth

SHOWN = ("l0", "f1", "mcc", "precision", "recall", "l0_corr", "dead")


def reread(run: str, rule: str) -> SparseAutoencoder:
    """The SAE at ``run`` with its activation replaced by ``rule``: "name", "name:k", or
    "name@LEVEL" for a rule with an estimated threshold, fixed at LEVEL (``afa_batch@1.75``: one
    global level on decoder-scaled activations, in the SAE's input scale for ``none``)."""
    base = SparseAutoencoder.from_pretrained(run)
    rule, _, level = rule.partition("@")
    name, _, k = rule.partition(":")
    fields = base.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        fields.pop(key, None)
    fields.update(activation=name, k=int(k) if k else None)
    sae = SparseAutoencoder(SAEConfig(**fields))
    weights = {key: value for key, value in base.state_dict().items() if key != "threshold"}
    sae.load_state_dict(weights, strict=False)
    if level:
        if sae.rule.threshold != "estimated":
            raise SystemExit(f"{name} has no estimated threshold to fix at {level}")
        sae.threshold.fill_(float(level))
    return sae.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", help="a trained SAE folder")
    p.add_argument("cache", help="a synthetic cache written with its true codes")
    p.add_argument(
        "rules",
        nargs="+",
        help="rule names; name:k for rules with a k; name@LEVEL to fix an estimated threshold",
    )
    p.add_argument("--samples", type=int, default=20000)
    args = p.parse_args()
    torch.set_num_threads(1)
    cache = ActivationCache(args.cache)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=args.samples)
    for rule in args.rules:
        row = score_against_truth(reread(args.run, rule), world, truth)["row"]
        shown = {
            key: round(row[key], 3) if isinstance(row[key], float) else row[key] for key in SHOWN
        }
        print(json.dumps({"rule": rule, **shown}))


if __name__ == "__main__":
    main()
