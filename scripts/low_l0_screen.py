"""Screen k-free rules for the low-L0 question at a small budget, beside TopK at the same budget.

Reads the comparison's cached layer activations (scripts/reproduce_paper.py harvests them into
its --work folder), trains each variant with hf_topafa.train on the same tokens and evaluates it
on held-out tokens; one JSON line per variant is appended to ``--out`` (resumable: a variant
already in the file is skipped). The rules that survive the screen run at full scale through
scripts/reproduce_paper.py.

    python scripts/low_l0_screen.py --variants topk:32 afa_universal:0 afa_band:0 --tokens 131072
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from hf_topafa import SparseAutoencoder
from hf_topafa.data import lm
from hf_topafa.evaluation import evaluate as ev
from hf_topafa.training.train import TrainConfig, train


def load_layer(path: Path, layer: int) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor(f"L{layer}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", required=True, help="RULE:VALUE, VALUE = k or afa_coef")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=131072)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(lm.cache_root() / "reproduce_paper"))
    p.add_argument("--out", default="results/low_l0/screen.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    data = load_layer(work / "train_activations.safetensors", args.layer)
    held_out = load_layer(work / "eval_activations.safetensors", args.layer)[: args.eval_tokens]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        done = {json.loads(line)["variant"] for line in out.read_text().splitlines() if line}
    for variant in args.variants:
        tag = f"{variant}@{args.tokens}/s{args.seed}"
        if tag in done:
            print(f"skip {tag}")
            continue
        rule, _, value = variant.partition(":")
        fields = {"activation": rule}
        if rule in ("topk", "batchtopk"):
            fields.update(k=int(value), afa_coef=0.0)
        else:
            fields.update(afa_coef=float(eval(value, {}, {})))  # e.g. 1/32
        run_dir = work / "screen" / tag.replace("/", "_").replace(":", "_").replace("@", "_")
        config = TrainConfig.from_flat(
            layer=args.layer, expansion_factor=args.expansion, max_tokens=args.tokens,
            batch_size=args.batch_size, seed=args.seed, output=str(run_dir), overwrite=True,
            checkpoint_every=0, log_with="none", progress=False, eval_tokens=1024, **fields,
        )  # fmt: skip
        t = time.perf_counter()
        train(config, data=data, eval_data=held_out)
        seconds = time.perf_counter() - t
        sae = SparseAutoencoder.from_pretrained(run_dir).eval()
        metrics, details = ev.evaluate_activations(sae, held_out)
        row = {
            "variant": tag,
            "l0": round(metrics["sparsity"]["l0_mean"], 2),
            "l0_p5_p95": [
                round(float(q), 1) for q in details.l0.float().quantile(torch.tensor([0.05, 0.95]))
            ],  # fmt: skip
            "normalized_mse": round(metrics["reconstruction"]["normalized_mse"], 4),
            "fvu": round(metrics["reconstruction"]["fvu"], 4),
            "dead": metrics["sparsity"]["dead_features"],
            "train_seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
