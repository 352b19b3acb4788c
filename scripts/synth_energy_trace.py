"""How an SAE's reading of one feature's energy moves while it trains, step by step.

``afa_energy`` keeps k = ||x - b_dec||^2 / E features per token, E the energy one confidently
detected feature carries, read from the dictionary being trained (``kfree_rules.batch_energy``).
On the 4k world it settles near the truth's count; on the sparse world it runs away (L0 233).
This trains an SAE with the trainer's step and schedule on an activation cache and prints, every
``--every`` steps: the rule's running E (afa_energy only), the batch's own reading of it, how
many activations per token clear their centred noise level, the median squared projection of
the kept latents, the kurtosis count (``kfree.kurtosis_count``), the training L0, the input's
energy, and the normalized error. For any rule:
it shows what E a dictionary of that age would give.

    python scripts/synth_energy_trace.py runs/synthbench/cache/synthsaebench-4k-sparse-train \\
        --activation afa_energy --matryoshka-levels 4 --steps 900
"""

from __future__ import annotations

import argparse

import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.sae import kfree
from hf_topafa.sae.kfree_rules import batch_energy
from hf_topafa.training.train import (
    TrainConfig,
    build_optimizer,
    init_decoder_bias,
    train_step,
)


def fano_energy(x: torch.Tensor, bias: torch.Tensor) -> float:
    """var / mean of ||x - bias||^2 over the rows: one feature's energy if the counts were
    Poisson and the magnitudes equal, from the data alone (an over-estimate when the counts are
    over-dispersed, as a hierarchy makes them)."""
    energy = (x - bias).pow(2).sum(-1)
    return float(energy.var() / energy.mean())


@torch.no_grad()
def reading(sae, x: torch.Tensor, out) -> dict:
    x, _, _ = sae.normalize_input(x)  # the SAE's own space, where its rule reads
    raw = kfree.decoder_scaled_preactivations(sae, x)
    projections = kfree.decoder_projections(sae, x)
    z = kfree.centered_input(sae, x)
    kept = out.feature_acts != 0
    return {
        "energy": float(sae.threshold[0]) if sae.config.activation == "afa_energy" else None,
        "batch_energy": float(batch_energy(sae, raw, x)),
        "above_level": float(kfree.confident_detections(raw).sum(-1).float().mean()),
        "kept_projection_sq": float(projections[kept].pow(2).median()),
        "kurtosis_count": float(kfree.kurtosis_count(projections, z)),
        "l0": float(kept.sum(-1).float().mean()),
        "input_energy": float(z.pow(2).sum(-1).median()),
        "nmse": float(out.mse_loss),
    }


def trace(x_all: torch.Tensor, config: TrainConfig, every: int, energy_start=None) -> list[dict]:
    """Train on ``x_all`` (cycled, batches of the config's size) for ``config.steps`` steps and
    read the SAE every ``every`` steps and at the end. ``energy_start``: afa_energy's E before the
    first step (a number, or "fano" for ``fano_energy`` of the first batch), not the first
    batch's own reading."""
    from accelerate import Accelerator

    torch.manual_seed(config.optim.seed)
    batch = config.optim.batch_size
    sae = SparseAutoencoder(SAEConfig.from_settings(  # as the trainer builds it
        config.sae, d_in=x_all.shape[1], dead_tokens_threshold=config.resolved_dead_threshold()
    )).train()  # fmt: skip
    accelerator = Accelerator(cpu=True)
    if config.optim.decoder_bias_init == "mean":  # as the trainer starts b_dec
        init_decoder_bias(sae, x_all[:batch], accelerator)
    if energy_start is not None:
        with torch.no_grad():
            first, _, _ = sae.normalize_input(x_all[:batch])
            start = fano_energy(first, sae.b_dec) if energy_start == "fano" else energy_start
            sae.threshold.fill_(float(start))
    optimizer, scheduler = build_optimizer(sae, config)
    model, optimizer = accelerator.prepare(sae, optimizer)
    since_fired = torch.zeros(sae.config.d_sae, dtype=torch.long)  # the trainer's dead count
    threshold = sae.config.dead_tokens_threshold
    rows = []
    for step in range(config.steps):
        first = (step * batch) % (len(x_all) - batch + 1)
        x = x_all[first : first + batch]
        dead = since_fired >= threshold
        out = train_step(model, sae, optimizer, scheduler, x, dead, config, accelerator)
        since_fired += batch
        since_fired.masked_fill_((out.feature_acts.detach() != 0).any(0), 0)
        if step % every == 0 or step == config.steps - 1:
            rows.append({"step": step, **reading(sae, x, out)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="an activation cache (hf-topafa harvest --synthetic ...)")
    p.add_argument("--activation", default="afa_energy")
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--matryoshka-levels", type=int, default=0)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=60)
    p.add_argument("--energy-start", default=None,
                   help='afa_energy\'s E before the first step: a number or "fano"')  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig.from_flat(
        activation=args.activation, k=args.k, afa_coef=0.0, d_sae=args.d_sae,
        matryoshka_levels=args.matryoshka_levels, max_tokens=args.steps * 1024,
        batch_size=1024, lr=3e-4, seed=0, input_normalization="none",
    )  # synth_bench.py's settings  # fmt: skip
    cache = ActivationCache(args.cache)
    x_all = cache.first_activations(args.steps * config.optim.batch_size)  # one pass
    start = args.energy_start
    start = None if start is None else start if start == "fano" else float(start)
    found = trace(x_all, config, args.every, start)
    for r in found:
        print(
            "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        )
    if args.json:
        from hf_topafa.helpers import write_json

        write_json(args.json, {"args": vars(args), "rows": found}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
