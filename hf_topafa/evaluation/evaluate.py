"""Evaluate SAEs on held-out text: reconstruction, sparsity, downstream loss and AFA diagnostics.

Data. Text is packed into windows of ``context_length`` tokens exactly as harvesting does
(``hf_topafa.harvest``); by default only the held-out windows (``holdout="eval"``: every 10th
window) are read, the ones a run trained with ``holdout="train"`` never saw. The evaluated
positions are the harvested ones: the first position of each window (an attention sink with a
huge norm) and BOS/EOS/pad positions are excluded, at most ``max_tokens`` of them are kept.

Definitions (all in the SAE's input space, i.e. the original activations; for an SAE with
``input_normalization="layer_norm"`` the same numbers are also given in its normalized space
under ``reconstruction_normalized_space``):

- ``normalized_mse``: the paper's per-token ||x - x_hat||^2 / ||x||^2, averaged over tokens;
- ``fvu``: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, the
  mean taken over the evaluated tokens; ``explained_variance`` = 1 - fvu;
- ``cosine_similarity``: mean over tokens of cos(x, x_hat);
- dead features fire on none of the evaluated tokens, dense ones on more than ``dense_threshold``
  of them;
- downstream: the language model runs on the whole windows three ways -- clean, with the SAE's
  reconstruction spliced in at its hook point, and with the activation zeroed (zero ablation).
  Only the evaluated positions are replaced (the excluded ones keep their clean activation, since
  the SAE never saw them), and the next-token cross-entropy and the KL divergence
  KL(p_clean || p_spliced) are averaged over the predictions made *at* evaluated positions that
  have a next token inside the window. ``loss_recovered`` = (CE_zero - CE_sae) / (CE_zero -
  CE_clean): 1 is as good as the clean model, 0 as bad as zero ablation;
- AFA: z is the SAE's (normalized) input, f~ its activations scaled by decoder-row norms with
  ||b_dec|| appended, h = d_sae + 1 (see ``hf_topafa.afa``); tokens are over/within/under the
  bounds for each eps (h - 1) in ``afa.EPS_H_BANDS``. The ZF plot draws ||z|| and ||f~|| in the
  input's own scale (a standardizing SAE's multiplied back by each token's std, see
  ``afa.zf_diagnostics``); eps_LBO and the classes are the same in either scale.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..data import lm
from ..data.harvest import HarvestConfig, Harvester, batched, dataset_name
from ..data.synthetic_cache import synthetic_world_hint
from ..interop import sae_loading
from ..sae import afa, reading
from ..sae.configuration_sae import SAEConfig
from ..sae.modeling_sae import SparseAutoencoder
from ..sae.rules import get_rule
from ..sources import looks_local
from .eval_config import (  # noqa: F401 - re-exported: the config and its CLI live there
    EvalConfig,
    EvalOutputs,
    build_parser,
)
from .eval_report import (  # noqa: F401 - re-exported: reports were defined here
    QUANTILES,
    EvalDetails,
    format_report,
    histogram,
    loss_recovered,
    print_report,
    quantiles,
    to_json,
    write_json,
    write_multi_plots,
    write_plots,
)
from .recon_stats import ReconStats
from .unfolded_l0 import UnfoldedL0

CONTEXT_CHARS = 40  # characters of preceding text shown with a token on the interactive ZF plot


# --------------------------------------------------------------------------------------------
# Loading


def load_sae(
    sae_or_path, device: str = "cpu", read_with: str | None = None
) -> tuple[SparseAutoencoder, str]:
    """An SAE on ``device`` in eval mode, with a label for reports: a model object as it is, or
    any name :func:`hf_topafa.sae_loading.load_sae` takes (folder, Hub id, FORMAT:SOURCE).
    ``read_with``: its dictionary read by that rule instead of its own (``sae.reading``)."""
    if isinstance(sae_or_path, SparseAutoencoder):
        cfg = sae_or_path.config
        label = f"{cfg.activation} L{cfg.layer}" if cfg.layer is not None else cfg.activation
        sae = sae_or_path.to(device).eval()
    else:
        name = os.fspath(sae_or_path).strip()
        label = Path(name).name if looks_local(name) else name
        sae = sae_loading.load_sae(name).to(device).eval()
    if read_with is None:
        return sae, label
    return reading.read_with(sae, read_with), f"{label} read by {read_with}"


# --------------------------------------------------------------------------------------------
# Streaming statistics of one SAE


class _SAEStats:
    """Everything measured about one SAE, accumulated batch by batch."""

    def __init__(self, sae: SparseAutoencoder, label: str, site: tuple[int, str], unfold=False):
        self.sae, self.label, self.site = sae, label, site
        self.unfolded = UnfoldedL0(sae) if unfold else None
        self.recon = ReconStats()
        self.recon_normalized = ReconStats() if sae.config.input_normalization != "none" else None
        self.fires = torch.zeros(sae.config.d_sae, dtype=torch.long)
        self.per_token: dict[str, list[torch.Tensor]] = {}
        self.ce_sum = 0.0
        self.kl_sum = 0.0

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self.per_token.setdefault(name, []).append(value.detach().float().cpu())

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Measure the SAE on activations x [N, d_in]; returns its reconstruction."""
        sae = self.sae
        out = sae(x)
        x_hat = out.reconstruction
        self.recon.update(x, x_hat)
        z, _, _ = sae.normalize_input(x)
        if self.recon_normalized is not None:
            self.recon_normalized.update(z, sae.decode_normalized(out.feature_acts))
        self.fires += (out.feature_acts != 0).sum(0).cpu()
        for name, value in afa.zf_diagnostics(sae, x, out).items():  # l0, k, z_norm, eps_lbo, ...
            self._keep(name, value)
        if self.unfolded is not None:  # the absorbed ancestors counted as features of their own
            self.unfolded.update(out.feature_acts)
        return x_hat

    def finish(
        self, dense_threshold: float, downstream: dict | None, texts
    ) -> tuple[dict, EvalDetails]:
        cfg: SAEConfig = self.sae.config
        per = {name: torch.cat(parts) for name, parts in self.per_token.items()}
        n = self.recon.n
        freq = self.fires.double() / n
        sparsity = {
            "l0_mean": float(per["l0"].mean()),
            "l0_quantiles": quantiles(per["l0"]),
            "dead_features": int((self.fires == 0).sum()),
            "dead_fraction": float((self.fires == 0).double().mean()),
            "dense_features": int((freq > dense_threshold).sum()),
            "dense_threshold": dense_threshold,
        }
        if self.unfolded is not None:
            sparsity.update(self.unfolded.sparsity())
        if get_rule(cfg.activation).adaptive_k:
            sparsity["k_mean"] = float(per["k"].mean())
            sparsity["k_quantiles"] = quantiles(per["k"])
            sparsity["k_histogram"] = histogram(per["k"])
        h = cfg.d_sae + 1
        eps = per["eps_lbo"]
        afa_metrics = {
            "h": h,
            "eps_lbo_quartiles": quantiles(eps, (0.25, 0.5, 0.75)),
            "eps_lbo_times_h_minus_1_quartiles": quantiles(eps * (h - 1), (0.25, 0.5, 0.75)),
            "eps_lbo_infinite_tokens": int(torch.isinf(eps).sum()),
            "bands": {},
            "decoder": afa.decoder_quasi_orthogonality(self.sae.W_dec),
            "mean_f_over_z": float((per["f_norm"] / per["z_norm"].clamp_min(1e-30)).mean()),
        }
        for eps_h in afa.EPS_H_BANDS:
            classes = per[f"class_{eps_h}"]
            afa_metrics["bands"][str(eps_h)] = {
                "over": float((classes == afa.OVER).double().mean()),
                "within": float((classes == afa.WITHIN).double().mean()),
                "under": float((classes == afa.UNDER).double().mean()),
            }
        afa_metrics["decoder"]["max_abs_cos_times_h_minus_1"] = afa_metrics["decoder"][
            "max_abs_cos"
        ] * (h - 1)
        metrics = {
            "label": self.label,
            "sae": {
                "activation": cfg.activation,
                "d_in": cfg.d_in,
                "d_sae": cfg.d_sae,
                "k": cfg.k,
                "afa_coef": cfg.afa_coef,
                "input_normalization": cfg.input_normalization,
                "base_model": cfg.base_model,
                "trained_layer": cfg.layer,
                "trained_hook_point": cfg.hook_point,
            },
            "layer": self.site[0],
            "hook_point": self.site[1],
            "num_tokens": n,
            "reconstruction": {"space": "input (original activations)", **self.recon.result()},
        }
        if self.recon_normalized is not None:
            metrics["reconstruction_normalized_space"] = {
                "space": f"SAE-normalized ({cfg.input_normalization})",
                **self.recon_normalized.result(),
            }
        metrics["sparsity"] = sparsity
        if downstream is not None:
            count = downstream["num_predictions"]
            ce_sae = self.ce_sum / count
            metrics["downstream"] = {
                "ce_clean": downstream["ce_clean"],
                "ce_sae": ce_sae,
                "ce_zero_ablation": downstream["ce_zero"],
                "loss_recovered": loss_recovered(
                    downstream["ce_clean"], ce_sae, downstream["ce_zero"]
                ),
                "ce_increase": ce_sae - downstream["ce_clean"],
                "kl_div": self.kl_sum / count,
                "num_predictions": count,
            }
        metrics["afa"] = afa_metrics
        details = EvalDetails(
            label=self.label,
            normalized_mse=torch.cat(self.recon.nmse),
            cosine=torch.cat(self.recon.cos),
            l0=per["l0"],
            k=per.get("k") if get_rule(cfg.activation).adaptive_k else None,
            z_norm=per["z_norm"],
            f_norm=per["f_norm"],
            eps_lbo=eps,
            classes={k: v for k, v in per.items() if k.startswith("class_")},
            token_texts=texts,
        )
        return metrics, details


# --------------------------------------------------------------------------------------------
# The evaluation loop


def _next_token_logprobs(model, ids: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """log p(. | prefix) at the predicting positions ``pred`` [B, T-1], as [n, vocab] float32."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return torch.log_softmax(logits[pred].float(), dim=-1)


def _replace_at(keep: torch.Tensor, values: torch.Tensor | None):
    """Splice function: the activation with the kept positions replaced (zeros when None)."""

    def fn(a: torch.Tensor) -> torch.Tensor:
        a = a.clone()
        a[keep.to(a.device)] = 0 if values is None else values.to(a.device, a.dtype)
        return a

    return fn


def _token_texts(tokenizer, ids: torch.Tensor, keep: torch.Tensor) -> list[str]:
    """For each kept position: a little preceding text, then the token in [[ ]]."""
    texts = []
    for row, col in keep.nonzero().tolist():
        before = tokenizer.decode(ids[row, max(0, col - 12) : col].tolist())[-CONTEXT_CHARS:]
        token = tokenizer.decode(ids[row, col : col + 1].tolist())
        texts.append(f"{before}[[{token}]]")
    return texts


def _site_of(sae: SparseAutoencoder, cfg: EvalConfig) -> tuple[int, str]:
    layer = cfg.layer if cfg.layer is not None else sae.config.layer
    hook = cfg.hook_point if cfg.hook_point is not None else sae.config.hook_point
    if layer is None:
        raise ValueError(
            "the SAE's config records no layer; pass layer= (--layer) to evaluate it"
            + synthetic_world_hint(sae.config.base_model)
        )
    if hook is None:
        raise ValueError(
            "the SAE's config records no hook_point; pass hook_point= (--hook-point), one of "
            + ", ".join(lm.HOOK_POINTS)
        )
    return int(layer), hook


def _context_length(loaded, cfg: EvalConfig) -> int:
    """The window length: given, else the SAEs' own; warn when held-out windows cannot line up."""
    recorded = {sae.config.context_length for sae, _ in loaded} - {None}
    if cfg.context_length is None:
        if len(recorded) > 1:
            raise ValueError(
                f"the SAEs were trained with different context lengths ({sorted(recorded)}); "
                "pass one context_length (--context-length) or evaluate them separately"
            )
        return recorded.pop() if recorded else 256
    if cfg.holdout == "eval" and recorded - {cfg.context_length}:
        warnings.warn(
            f"context_length={cfg.context_length} differs from the SAEs' training context "
            f"({sorted(recorded)}): the held-out windows then overlap text the SAE trained on",
            stacklevel=3,
        )
    return cfg.context_length


def _prepare(saes: Sequence, cfg: EvalConfig):
    """Load the SAEs and the one language model they read; check that they fit it.

    Returns (loaded SAEs with labels, their (layer, hook point) sites, the harvester, the model's
    name, the context length)."""
    if not saes:
        raise ValueError("no SAE to evaluate")
    loaded = [load_sae(s, cfg.device, cfg.read_with) for s in saes]
    models = {cfg.model} if cfg.model is not None else {s.config.base_model for s, _ in loaded}
    models = {lm.DEFAULT_MODEL if lm.is_embedded(m) else m for m in models}
    if len(models) > 1:
        raise ValueError(
            f"the SAEs come from different language models ({', '.join(map(str, models))}); "
            "evaluate them separately or pass one model="
        )
    model_name = models.pop()
    sites = [_site_of(sae, cfg) for sae, _ in loaded]
    context_length = _context_length(loaded, cfg)
    harvest_cfg = HarvestConfig(
        model=model_name,
        gguf_file=cfg.gguf_file,
        layer=sites[0][0],
        hook_point=sites[0][1],
        dataset=cfg.dataset,
        dataset_config=cfg.dataset_config,
        text_column=cfg.text_column,
        split=cfg.split,
        context_length=context_length,
        batch_windows=cfg.batch_windows,
        holdout=cfg.holdout,
        holdout_every=cfg.holdout_every,
        device=cfg.device,
    )
    harvester = Harvester(harvest_cfg)
    model = harvester.model
    used_weights = lm.weights_description(model_name, cfg.gguf_file)
    for (sae, label), (layer, hook) in zip(loaded, sites, strict=True):
        lm.warn_if_other_weights(sae.config, used_weights, f"evaluating {label!r}")
        lm.validate_hook(model, layer, hook)
        if sae.config.d_in != harvester.d_in:
            raise ValueError(
                f"SAE {label!r} has d_in={sae.config.d_in} but {model_name} has hidden size "
                f"{harvester.d_in}: it was trained on another model (its config says "
                f"base_model={sae.config.base_model!r})"
            )
    return loaded, sites, harvester, model_name, context_length


def _no_tokens_error(cfg: EvalConfig, context_length: int) -> ValueError:
    where = ""
    if cfg.holdout != "none":
        where = (
            f" among the held-out windows (holdout={cfg.holdout!r}: every "
            f"{cfg.holdout_every}th window)"
        )
    return ValueError(
        f"the dataset {dataset_name(cfg.dataset)!r} gave no tokens to evaluate: no complete "
        f"window of {context_length} tokens{where}; use more text, a smaller context_length, "
        "or holdout='none'"
    )


def evaluate_saes(
    saes: Sequence,
    config: EvalConfig | None = None,
    *,
    token_texts: bool = True,
    unfold: bool = False,
) -> list[tuple[dict, EvalDetails]]:
    """Evaluate several SAEs of one language model in a single pass over the text.

    The clean forward and the zero ablation of each (layer, hook point) are shared, so adding an
    SAE costs one spliced forward per batch. Returns (metrics, details) per SAE, in order. With
    ``unfold`` the sparsity also counts each SAE's absorbed ancestors as features of their own
    (``absorption.unfolded_by_levels``).
    """
    from tqdm.auto import tqdm

    cfg = config or EvalConfig()
    loaded, sites, harvester, model_name, context_length = _prepare(saes, cfg)
    model, tokenizer = harvester.model, harvester.tokenizer
    stats = [_SAEStats(sae, label, site, unfold)
             for (sae, label), site in zip(loaded, sites, strict=True)]  # fmt: skip
    unique_sites = sorted(set(sites))
    zero_ce = dict.fromkeys(unique_sites, 0.0)
    ce_clean, n_pred, n_tokens, n_windows = 0.0, 0, 0, 0
    texts: list[str] = []
    bar = tqdm(total=cfg.max_tokens, unit="tok", desc="evaluate", disable=not cfg.progress)
    with bar, torch.no_grad():  # the bar is closed before any error line is printed
        for batch in batched(harvester.windows(), cfg.batch_windows):
            ids = torch.stack(batch).to(harvester.device)
            keep = harvester.keep_mask(ids)
            rows, cols = keep.nonzero(as_tuple=True)
            room = cfg.max_tokens - n_tokens
            if len(rows) > room:  # stop at exactly max_tokens, in reading order
                keep[rows[room:], cols[room:]] = False
            kept = int(keep.sum())
            if kept == 0:
                continue
            n_windows += len(ids)
            captured: dict[tuple[int, str], torch.Tensor] = {}
            if cfg.compute_downstream:
                pred = keep[:, :-1]
                targets = ids[:, 1:][pred]
                with contextlib.ExitStack() as stack:
                    for site in unique_sites:

                        def grab(a, site=site, store=captured):
                            store[site] = a
                            return a

                        stack.enter_context(lm.splice(model, *site, grab))
                    logp_clean = _next_token_logprobs(model, ids, pred)
                ce_clean += float(-logp_clean.gather(1, targets[:, None]).sum())
                n_pred += len(targets)
                for site in unique_sites:
                    with lm.splice(model, *site, _replace_at(keep, None)):
                        logp = _next_token_logprobs(model, ids, pred)
                    zero_ce[site] += float(-logp.gather(1, targets[:, None]).sum())
            else:
                for site in unique_sites:
                    captured[site] = lm.truncated_forward(model, ids, *site)
            for st in stats:
                x = captured[st.site][keep].float()
                x_hat = st.update(x)
                if cfg.compute_downstream:
                    with lm.splice(model, *st.site, _replace_at(keep, x_hat)):
                        logp = _next_token_logprobs(model, ids, pred)
                    st.ce_sum += float(-logp.gather(1, targets[:, None]).sum())
                    kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
                    st.kl_sum += float(kl.sum())
            if token_texts:
                texts.extend(_token_texts(tokenizer, ids.cpu(), keep.cpu()))
            n_tokens += kept
            bar.update(kept)
            if n_tokens >= cfg.max_tokens:
                break
    if n_tokens == 0:
        raise _no_tokens_error(cfg, context_length)
    downstream = None
    data = {
        "model": model_name,
        "dataset": dataset_name(cfg.dataset),
        "dataset_config": cfg.dataset_config,
        "split": cfg.split,
        "holdout": cfg.holdout,
        "holdout_every": cfg.holdout_every if cfg.holdout != "none" else None,
        "context_length": context_length,
        "num_windows": n_windows,
        "num_tokens": n_tokens,
        "excluded_positions": "first of each window; BOS/EOS/pad tokens",
    }
    results = []
    for st in stats:
        if cfg.compute_downstream:
            downstream = {
                "ce_clean": ce_clean / n_pred,
                "ce_zero": zero_ce[st.site] / n_pred,
                "num_predictions": n_pred,
            }
        metrics, details = st.finish(
            cfg.dense_threshold, downstream, texts if token_texts else None
        )
        metrics["data"] = data
        results.append((metrics, details))
    return results


def evaluate_activations(
    sae_or_path,
    activations,
    *,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    device: str = "cpu",
    read_with: str | None = None,
    unfold: bool = False,
) -> tuple[dict, EvalDetails]:
    """Reconstruction, sparsity and AFA metrics on activations already harvested (no LM needed).

    ``activations`` is a tensor [N, d_in] or an iterable of such chunks (e.g. the ``acts`` of
    ``ActivationCache.iter_with_tokens()``); there is no downstream section. ``read_with`` and
    ``unfold`` are ``hf-topafa evaluate``'s options of those names.
    """
    sae, label = load_sae(sae_or_path, device, read_with)
    stats = _SAEStats(sae, label, (sae.config.layer, sae.config.hook_point), unfold)
    chunks = [activations] if isinstance(activations, torch.Tensor) else activations
    for chunk in chunks:
        if chunk.ndim != 2 or chunk.shape[-1] != sae.config.d_in:
            raise ValueError(
                f"activations must have shape [N, {sae.config.d_in}] (the SAE's d_in); "
                f"got {tuple(chunk.shape)}"
            )
        for start in range(0, len(chunk), batch_size):
            stats.update(chunk[start : start + batch_size].to(device).float())
    if stats.recon.n == 0:
        raise ValueError("no activations given: there are no tokens to evaluate")
    return stats.finish(dense_threshold, None, None)


def evaluate_sae(
    sae_or_path,
    *,
    dataset: str | None = None,
    max_tokens: int = 4096,
    model: str | None = None,
    layer: int | None = None,
    hook_point: str | None = None,
    batch_windows: int = 4,
    context_length: int | None = None,
    compute_downstream: bool = True,
    plots_dir: str | os.PathLike | None = None,
    **config,
) -> dict:
    """Evaluate one SAE (object, folder or Hub id); returns JSON-serializable metrics.

    Extra keyword arguments are EvalConfig fields. With ``plots_dir`` the plots are written there
    and their paths listed under ``metrics["plots"]``.
    """
    cfg = EvalConfig(
        dataset=dataset,
        max_tokens=max_tokens,
        model=model,
        layer=layer,
        hook_point=hook_point,
        batch_windows=batch_windows,
        context_length=context_length,
        compute_downstream=compute_downstream,
        **config,
    )
    [(metrics, details)] = evaluate_saes([sae_or_path], cfg, token_texts=plots_dir is not None)
    if plots_dir is not None:
        metrics["plots"] = [str(p) for p in write_plots(metrics, details, plots_dir)]
    return metrics


# --------------------------------------------------------------------------------------------
# Command line


def run_command(cfg: EvalConfig, outputs: EvalOutputs) -> int:
    """``hf-topafa evaluate`` once its arguments are checked: measure, print, write."""
    if outputs.synthetic is not None:
        from . import ground_truth

        loaded = [load_sae(s, cfg.device, cfg.read_with) for s in outputs.saes]
        return ground_truth.run_command(cfg, outputs, loaded)
    results = evaluate_saes(
        outputs.saes, cfg, token_texts=outputs.plots is not None, unfold=outputs.unfold
    )
    for i, (metrics, _) in enumerate(results):
        if i:
            print()
        print_report(metrics)
    if outputs.plots is not None:
        if len(results) == 1:
            paths = write_plots(*results[0], outputs.plots)
        else:
            paths = write_multi_plots(results, outputs.plots)
        print(f"\nwrote {len(paths)} plots to {outputs.plots}")
    if outputs.json is not None:
        metrics = [m for m, _ in results]
        payload = metrics[0] if len(metrics) == 1 else {"results": metrics}
        payload = {**payload, "config": asdict(cfg)}
        print(f"wrote {write_json(payload, outputs.json)}")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``hf-topafa evaluate ...`` from Python: the command line's checks, errors and exit status."""
    from ..cli.cli import main

    return main(["evaluate", *(sys.argv[1:] if argv is None else argv)])
