"""Measuring a trained SAE and looking inside it.

- ``evaluate``: reconstruction, sparsity, downstream and AFA diagnostics; ``eval_report``: their
  summaries, table and JSON; ``eval_config``: the torch-free configuration and checks
- ``plots``: ZF plots, histograms, half violins, seed agreement over k
- ``features``: the feature browser's tables; ``features_config``: its torch-free options
- ``steering``: adding a feature's direction to a language model while it generates
- ``text_analysis``: per-text analysis (the Space's tab)
- ``ground_truth``: scoring against a synthetic world's known features (SAELens's evaluator plus
  the AFA and per-sample-L0 checks); ``sparse_recovery``: what a decoder can recover at all on
  a perfect dictionary (the universal price, the lasso, orthogonal pursuit); ``on_truth``: a
  trained dictionary beside a world's stored truth, as the diagnosis scripts read it
- ``agreement``: how far two dictionaries agree (seeds, no truth); ``unfolded_l0``: per-token
  L0 with absorbed ancestors counted; ``recon_stats``: reconstruction error batch by batch

Names load on first use, so that the torch-free configurations import no torch.
"""

from ..helpers import lazy_exports

__all__ = ["EvalConfig", "analyze_text", "evaluate_sae", "load_sae", "save_zf_plot", "steer"]
__all__ += ["score_against_truth", "TruthSet"]

__getattr__ = lazy_exports(
    __name__,
    eval_config=["EvalConfig"],
    text_analysis=["analyze_text"],
    evaluate=["evaluate_sae", "load_sae"],
    plots=["save_zf_plot"],
    steering=["steer"],
    ground_truth=["score_against_truth", "TruthSet"],
)
