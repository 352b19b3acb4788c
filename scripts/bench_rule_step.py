"""Time trained SAEs' training steps side by side: forward and backward on one batch of an
activation cache, every SAE (and, for a rule with a sparse route, both routes) timed in
interleaved rounds so that a busy machine slows them alike. Prints each one's median and its
ratio to the first.

    python scripts/bench_rule_step.py CACHE RUN[:RULE] [RUN[:RULE] ...] [--batch 1024]

RUN[:RULE]: a trained SAE folder, read as RULE when given (its weights under another rule: e.g.
a TopK dictionary as latent_noise, whose levels the warm-up steps estimate). Measured for the
latent_noise sparse route, at 768 -> 4,096 on the 16k world:

    python scripts/bench_rule_step.py runs/synthbench16k/cache/synthsaebench-16k-eval \\
        runs/synthbench16k/runs/synthsaebench-16k/topk-k25 \\
        runs/synthbench16k/runs/synthsaebench-16k/topk-k25:latent_noise
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def load(spec: str):
    """The SAE of ``RUN[:RULE]``, in training mode."""
    from hf_topafa import SAEConfig, SparseAutoencoder

    run, _, rule = spec.partition(":")
    sae = SparseAutoencoder.from_pretrained(run)
    if rule:
        fields = {**sae.config.to_dict(), "activation": rule, "k": None}
        config = SAEConfig(**{k: v for k, v in fields.items() if k in SAEConfig().to_dict()})
        weights = {k: v for k, v in sae.state_dict().items() if k != "threshold"}
        sae = SparseAutoencoder(config)
        sae.load_state_dict(weights, strict=False)
    return sae.train()


def step_ms(sae, x, dead_mask) -> float:
    sae.zero_grad(set_to_none=True)
    start = time.perf_counter()
    sae(x, dead_mask=dead_mask).loss.backward()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="an activation cache (its first batch is used)")
    p.add_argument("runs", nargs="+", help="RUN or RUN:RULE")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from hf_topafa.data.harvest import ActivationCache
    from hf_topafa.sae import sparse

    x = next(iter(ActivationCache(args.cache).iter_with_tokens())).acts[: args.batch].float()
    variants = []  # (label, sae, sparse-density limit)
    for spec in args.runs:
        sae = load(spec)
        name = f"{spec.rsplit('/', 1)[-1]} ({sae.config.activation})"
        routes = [("", sparse.MAX_SPARSE_DENSITY)]
        if sae.rule.sparse_path:
            routes = [(", sparse route", 1.0), (", dense route", 0.0)]
        variants += [(name + route, sae, limit) for route, limit in routes]
    default = sparse.MAX_SPARSE_DENSITY
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    l0 = {}
    for i in range(args.rounds + 3):  # three warm-up rounds (latent_noise's levels are set)
        for label, sae, limit in variants:
            dead = torch.zeros(sae.config.d_sae, dtype=torch.bool)
            dead[::10] = True  # aux-k on, as in training
            sparse.MAX_SPARSE_DENSITY = limit
            ms = step_ms(sae, x, dead)
            if i >= 3:
                times[label].append(ms)
            with torch.no_grad():
                l0[label] = float((sae.encode(x) != 0).sum(-1).float().mean())
    sparse.MAX_SPARSE_DENSITY = default
    first = statistics.median(times[variants[0][0]])
    print(f"batch {x.shape[0]} x {x.shape[1]}, {args.threads} thread(s), median of "
          f"{args.rounds} rounds (forward + backward):")  # fmt: skip
    for label, ms in times.items():
        median = statistics.median(ms)
        print(f"  {label}: {median:.1f} ms, L0 {l0[label]:.1f}, {median / first:.2f}x the first")


if __name__ == "__main__":
    main()
