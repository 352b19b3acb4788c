"""Where the k-free readers' prices settle on trained dictionaries, with no truth: any SAE
folder with any activation cache (a language model's harvest or a synthetic world's), on the
cache's first 1,024 tokens (the tokens a batch's price is found on), before any unfolding.
Each price is over the calibrated noise level sigma^2: the calibrated price, ``risk_refit``'s
level, ``risk_tail``'s price, whose ratio to 2 ln h says how much heavier than Gaussian the
residual's tail is, and the balance's price, fit and misfit with the switch's choice
(``balance.price_figures``). One JSON for all; the synthetic worlds' rows with their truth
beside them come from ``synth_calibration.py``.

    python scripts/reader_prices.py --json results/smollm2_agreement/prices-1536k.json \\
        runs/smollm2-agree-1536k/topk-k32-seed0 runs/smollm2-wt-eval ...
"""

from __future__ import annotations

import torch

from hf_topafa.data.harvest import ActivationCache
from hf_topafa.evaluation.on_truth import report_rows, run_cache_pairs_from_command_line
from hf_topafa.sae import balance, risk
from hf_topafa.sae.kfree import centered_input
from hf_topafa.sae.modeling_sae import SparseAutoencoder


@torch.no_grad()
def prices_of(run: str, cache: str) -> dict:
    """``balance.price_figures`` for one dictionary on its cache's first tokens."""
    sae = SparseAutoencoder.from_pretrained(run).eval()
    x = ActivationCache(cache).first_activations(risk.REFIT_LEVEL_TOKENS)
    pre = torch.relu(sae.pre_activations(x))
    z = centered_input(sae, sae.normalize_input(x)[0])
    return {"run": run, "cache": cache, "tokens": x.shape[0],
            **balance.price_figures(pre, sae.W_dec, z)}  # fmt: skip


LINE = (
    "{run}: calibrated price {price_over_level:.2f} sigma^2, risk_tail's {tail_price_over_level:.2f}"
    " sigma^2 = {tail_price_over_two_ln_h:.2f} x 2 ln h ({two_ln_h:.2f}); p {kept_share:.4f}"
    " ({kept_per_sample:.2f} per token), c {signal_to_noise:.1f}"
)


def main() -> None:
    pairs, args = run_cache_pairs_from_command_line(__doc__)
    report_rows([prices_of(run, cache) for run, cache in pairs], LINE.format_map, args.json)


if __name__ == "__main__":
    main()
