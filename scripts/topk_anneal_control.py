"""The control for afa_band's leading explanation: TopK whose k is annealed from the band budget of
a fresh SAE (about 62 at layer 15) down to afa_band's trained L0, on the comparison's data.

If annealing alone explains afa_band's margin over TopK, this TopK lands where afa_band does.
The schedule is linear over the first ``--anneal-fraction`` of the steps, then k stays at
``--k-end`` (the saved SAE's k). The comparison's cached activations are read from --work
(scripts/reproduce_paper.py harvests them); one JSON line per run is appended to --out.

    python scripts/topk_anneal_control.py --k-start 62 --k-end 20 --anneal-fraction 0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from low_l0_screen import load_layer  # scripts/ is on the path when a script runs

from hf_topafa import SparseAutoencoder
from hf_topafa.data import lm
from hf_topafa.evaluation import evaluate as ev
from hf_topafa.training import train as training


def anneal_k(k_start: int, k_end: int, steps: int) -> None:
    """Make the trainer's step set the SAE's k first: linear from k_start to k_end over ``steps``."""
    original, done = training.train_step, [0]

    def step(model, sae, *args, **kwargs):
        frac = min(1.0, done[0] / max(1, steps))
        sae.config.k = round(k_start + (k_end - k_start) * frac)
        done[0] += 1
        return original(model, sae, *args, **kwargs)

    training.train_step = step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--k-start", type=int, default=62)
    p.add_argument("--k-end", type=int, default=20)
    p.add_argument("--anneal-fraction", type=float, default=0.5)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=1_048_576)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--downstream-tokens", type=int, default=2048)
    p.add_argument(
        "--dataset",
        default="../shared/data/wikitext-2-raw-test.txt",
        help="text of the downstream (loss recovered) evaluation, as the comparison's",
    )
    p.add_argument("--work", default=str(lm.cache_root() / "reproduce_paper"))
    p.add_argument("--out", default="results/low_l0/topk_anneal_control.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = load_layer(work / "train_activations.safetensors", args.layer)
    held_out = load_layer(work / "eval_activations.safetensors", args.layer)
    steps = args.tokens // args.batch_size
    anneal_k(args.k_start, args.k_end, int(args.anneal_fraction * steps))
    name = f"L{args.layer}_topk_k{args.k_start}to{args.k_end}_f{args.anneal_fraction}_s{args.seed}"
    config = training.TrainConfig.from_flat(
        layer=args.layer, activation="topk", k=args.k_end, afa_coef=0.0, expansion_factor=4,
        max_tokens=steps * args.batch_size, batch_size=args.batch_size, seed=args.seed,
        output=str(work / "runs" / name), overwrite=True, eval_tokens=1024,
        checkpoint_every=0, log_with="none", progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    run = training.train(config, data=data, eval_data=held_out)
    seconds = time.perf_counter() - start
    sae = SparseAutoencoder.from_pretrained(run).eval()
    metrics, _ = ev.evaluate_activations(sae, held_out)
    cfg = ev.EvalConfig(
        dataset=args.dataset, context_length=128,
        max_tokens=args.downstream_tokens, holdout="eval", batch_windows=2,
    )  # fmt: skip
    ((downstream, _),) = ev.evaluate_saes([sae], cfg, token_texts=False)
    row = {
        "run": name, "k_saved": sae.config.k, "schedule": vars(args),
        "l0": round(metrics["sparsity"]["l0_mean"], 2),
        "normalized_mse": round(metrics["reconstruction"]["normalized_mse"], 4),
        "dead": metrics["sparsity"]["dead_features"],
        "loss_recovered": round(downstream["downstream"]["loss_recovered"], 4),
        "train_seconds": round(seconds, 1),
    }  # fmt: skip
    print(json.dumps(row))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
