"""What an evaluation reports: summary statistics (quantiles, histograms, loss recovered) of
the per-token values it measured, plots, a plain-text table and a JSON file of its metrics.

The measuring is in ``hf_topafa.evaluate`` (which re-exports these names); this module only
renders what it measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import helpers
from ..sae import afa
from ..sae.rules import get_rule

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    """(CE_zero - CE_sae) / (CE_zero - CE_clean); NaN when zero ablation costs nothing."""
    gap = ce_zero - ce_clean
    return (ce_zero - ce_sae) / gap if gap != 0 else math.nan


def quantiles(values: torch.Tensor, qs: Sequence[float] = QUANTILES) -> dict[str, float]:
    """Named quantiles ("q05", "q50", ...) as :func:`hf_topafa.afa.quantiles` defines them
    (linear interpolation, +inf tolerated), so evaluate and the Space agree on every token set."""
    return {f"q{round(p * 100):02d}": v for p, v in zip(qs, afa.quantiles(values, qs), strict=True)}


def histogram(values: torch.Tensor, bins: int = 20) -> dict[str, list]:
    """Integer-friendly histogram: bin edges and counts over the finite values."""
    data = values.reshape(-1).double()
    data = data[torch.isfinite(data)]
    if data.numel() == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return {"edges": [lo, hi], "counts": [int(data.numel())]}
    counts = torch.histc(data, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


@dataclass
class EvalDetails:
    """Per-token values behind the metrics, for plots (not part of the JSON)."""

    label: str
    normalized_mse: torch.Tensor
    cosine: torch.Tensor
    l0: torch.Tensor
    k: torch.Tensor | None
    z_norm: torch.Tensor
    f_norm: torch.Tensor
    eps_lbo: torch.Tensor
    classes: dict[str, torch.Tensor] = field(default_factory=dict)
    token_texts: list[str] | None = None

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The dict shape ``hf_topafa.afa.zf_diagnostics`` returns, for hf_topafa.plots."""
        out = {"z_norm": self.z_norm, "f_norm": self.f_norm, "eps_lbo": self.eps_lbo}
        out["l0"] = self.l0
        out["k"] = self.k if self.k is not None else self.l0
        out.update(self.classes)
        return out


def write_plots(metrics: dict, details: EvalDetails, out_dir: str | os.PathLike) -> list[Path]:
    """ZF plot (PNG and HTML with token text), eps_LBO histogram and, for top-AFA, k histogram."""
    from . import plots

    out = Path(out_dir)
    title = f"{details.label} (layer {metrics['layer']}, {metrics['hook_point']})"
    diag = details.diagnostics()
    paths = [
        plots.save_zf_plot(diag, out / "zf_plot.png", title=title),
        plots.save_zf_plot_html(
            diag, out / "zf_plot.html", token_texts=details.token_texts, title=title
        ),
    ]
    histograms = [(details.eps_lbo, "eps_lbo_hist.png", "eps_LBO (log scale)", {"log_x": True})]
    if details.k is not None:
        histograms.append(
            (details.k, "k_hist.png", "k (features kept per token)", {"integer": True})
        )
    for values, name, xlabel, options in histograms:
        paths.append(
            plots.save_histogram(values, out / name, xlabel=xlabel, title=title, **options)
        )
    return paths


def write_multi_plots(results: Sequence[tuple[dict, EvalDetails]], out_dir) -> list[Path]:
    """Per-SAE plots in sub-folders, plus the half-violin figure across SAEs (e.g. layers)."""
    from . import plots

    out = Path(out_dir)
    paths: list[Path] = []
    names: dict[str, int] = {}
    per_sae = {}
    for metrics, details in results:
        prefix = f"L{metrics['layer']}_"
        label = details.label
        name = _safe_name(label if label.startswith(prefix) else prefix + label)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        paths += write_plots(metrics, details, out / name)
        per_sae[name] = {"normalized_mse": details.normalized_mse, "eps_lbo": details.eps_lbo}
    if len(results) > 1:
        paths.append(
            plots.save_half_violins(
                per_sae,
                out / "per_sae_violins.png",
                title="Per-token normalized MSE and eps_LBO (lower is better)",
            )  # fmt: skip
        )
    return paths


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_") or "sae"


def to_json(value):
    """Metrics with non-finite floats written as strings ("inf", "nan") so the JSON is valid."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(data, path: str | os.PathLike) -> Path:
    """Metrics as JSON (non-finite floats as strings), written atomically."""
    return helpers.write_json(path, to_json(data))


UNFOLDED_ROWS = (
    ("", "L0 unfolded by levels", "{atoms_by_levels} ancestor atoms"),
    ("_stars", "  without stars' atoms", "{atoms_by_levels_stars} ancestor atoms"),
    ("_exclusive", "  without nested groups",
     "{atoms_by_levels_exclusive} ancestor atoms; nesting read on {nested_tokens} tokens"),
    ("_exclusive_hubs", "  and with hubs",
     "{hubs_by_levels_exclusive} atoms silent where their parent's own row fires"),
    ("_exclusive_hubs_folded", "  or hubs folded",
     "{hubs_by_levels_exclusive_folded} parents' own rows folded into their atoms"),
    ("_exclusive_hubs_folded_doubles", "  and without doubles",
     "{doubles_by_levels_exclusive} atoms left out as doubles of another latent"),
    ("_exclusive_hubs_folded_lone", "  or folded, lone triangles",
     "{atoms_by_levels_exclusive_hubs_folded_lone} atoms; rows meeting only in threes grouped"),
)  # fmt: skip
"""The report's rows for ``evaluate --unfold``'s readings (``unfolded_l0``): the sparsity
fields' suffix, the row's label and what it adds after the L0's spread."""


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_report(metrics: dict) -> str:
    """A readable plain-text table of one SAE's metrics."""
    rows: list[tuple[str, str]] = []
    sae, rec, spa = metrics["sae"], metrics["reconstruction"], metrics["sparsity"]
    data = metrics.get("data", {})
    rows.append(("SAE", f"{metrics['label']}: {sae['activation']}, d_in {sae['d_in']}, "
                 f"d_sae {sae['d_sae']}" + (f", k {sae['k']}" if sae["k"] else "")))  # fmt: skip
    rows.append(
        ("site", f"layer {metrics['layer']} {metrics['hook_point']} of {data.get('model')}")
    )
    rows.append(("tokens", f"{metrics['num_tokens']} from {data.get('dataset')} "
                 f"(holdout {data.get('holdout')})"))  # fmt: skip
    rows.append(("-- reconstruction", rec["space"]))
    rows.append(("normalized MSE", f"{_fmt(rec['normalized_mse'])}  (mean ||x-x^||^2/||x||^2)"))
    rows.append(
        ("FVU", f"{_fmt(rec['fvu'])}  (explained variance {_fmt(rec['explained_variance'])})")
    )
    rows.append(("cosine similarity", _fmt(rec["cosine_similarity"])))
    if "reconstruction_normalized_space" in metrics:
        rn = metrics["reconstruction_normalized_space"]
        rows.append(("  normalized space", f"nMSE {_fmt(rn['normalized_mse'])}, "
                     f"FVU {_fmt(rn['fvu'])}, cos {_fmt(rn['cosine_similarity'])}"))  # fmt: skip
    rows.append(("-- sparsity", ""))
    q = spa["l0_quantiles"]
    rows.append(("L0", f"mean {_fmt(spa['l0_mean'])}  (median {_fmt(q['q50'])}, "
                 f"5-95% {_fmt(q['q05'])}-{_fmt(q['q95'])})"))  # fmt: skip
    for suffix, label, tail in UNFOLDED_ROWS:  # a report holds those read when it was written
        key = f"l0_unfolded_by_levels{suffix}"
        if f"{key}_mean" in spa:
            uq = spa[f"{key}_quantiles"]
            rows.append((label, f"mean {_fmt(spa[f'{key}_mean'])}  (5-95% {_fmt(uq['q05'])}-"
                         f"{_fmt(uq['q95'])}; {tail.format(**spa)})"))  # fmt: skip
    if "k_quantiles" in spa:
        kq = spa["k_quantiles"]
        rule = get_rule(sae["activation"]).display_name
        rows.append((f"{rule} k", f"mean {_fmt(spa['k_mean'])}  quartiles {_fmt(kq['q25'])} / "
                     f"{_fmt(kq['q50'])} / {_fmt(kq['q75'])}"))  # fmt: skip
    rows.append(("dead / dense", f"{spa['dead_features']} / {spa['dense_features']} "
                 f"(dense: fires on > {spa['dense_threshold']:.0%} of tokens)"))  # fmt: skip
    if "downstream" in metrics:
        d = metrics["downstream"]
        rows.append(("-- downstream", f"{d['num_predictions']} next-token predictions"))
        rows.append(("CE clean / SAE / zero", f"{_fmt(d['ce_clean'])} / {_fmt(d['ce_sae'])} / "
                     f"{_fmt(d['ce_zero_ablation'])}"))  # fmt: skip
        rows.append(("loss recovered", _fmt(d["loss_recovered"])))
        rows.append(("KL(clean || SAE)", _fmt(d["kl_div"])))
    a = metrics["afa"]
    eq = a["eps_lbo_quartiles"]
    rows.append(("-- AFA", f"h = {a['h']}"))
    rows.append(("eps_LBO quartiles", f"{_fmt(eq['q25'])} / {_fmt(eq['q50'])} / {_fmt(eq['q75'])}"))
    for eps_h, shares in a["bands"].items():
        rows.append((f"eps(h-1)={eps_h}", f"over {shares['over']:.1%}, within "
                     f"{shares['within']:.1%}, under {shares['under']:.1%}"))  # fmt: skip
    dec = a["decoder"]
    rows.append(
        ("decoder |cos|", f"max {_fmt(dec['max_abs_cos'])}, mean {_fmt(dec['mean_abs_cos'])}")
    )
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def print_report(metrics: dict) -> None:
    """Print the table of ``format_report``."""
    print(format_report(metrics))
