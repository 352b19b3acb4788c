"""Turn a TextAnalysis into what the page shows: shaded text (HTML) and display tables."""

from __future__ import annotations

import html
import math

import pandas as pd

from hf_topafa.evaluation.text_analysis import TextAnalysis, summarize, token_rows
from hf_topafa.sae import afa

SHADE_COLOURS = {"eps_lbo": (214, 39, 40), "k": (31, 119, 180)}
SHADE_LABELS = {"eps_lbo": "εLBO (log scale)", "k": "k (features chosen)"}
TABLE_COLUMNS = ["#", "token", "‖z‖", "‖f̃‖", "εLBO", "status", "k", "rec. error", "top features"]


# The plotting library writes ASCII; the page writes the paper's notation.
PLOT_NOTATION = (("eps(h-1)", "ε(h−1)"), ("||f~||", "‖f̃‖"), ("||z||", "‖z‖"), ("eps_LBO", "εLBO"))
MARKER_SIZE = 7
# Widths of TABLE_COLUMNS in pixels (percentages crush a phone-width table; pixels scroll):
# the top-features list gets the room it needs.
TABLE_WIDTHS = ["48px", "90px", "84px", "84px", "92px", "150px", "56px", "84px", "360px"]


def notation(text):
    """A plot label in the page's notation (non-strings pass through)."""
    if not isinstance(text, str):
        return text
    for ascii_form, symbol in PLOT_NOTATION:
        text = text.replace(ascii_form, symbol)
    return text


def polish_zf_figure(fig):
    """The page's notation in the ZF plot, markers large enough to see, axes fitted to the
    points (not from 0, which leaves the cloud in a corner)."""
    xs, ys = [], []
    for trace in fig.data:
        trace.name = notation(trace.name)
        if trace.text is not None and not isinstance(trace.text, str):
            trace.text = [notation(t) for t in trace.text]
        if trace.mode == "markers":
            trace.marker.size = MARKER_SIZE
            xs += [v for v in trace.x or () if math.isfinite(v)]
            ys += [v for v in trace.y or () if math.isfinite(v)]
    layout = fig.layout
    layout.title.text = notation(layout.title.text)
    layout.xaxis.title.text = notation(layout.xaxis.title.text)
    layout.yaxis.title.text = notation(layout.yaxis.title.text)
    for axis, values in ((layout.xaxis, xs), (layout.yaxis, ys)):
        if values:
            lo, hi = min(values), max(values)
            pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
            axis.range = [lo - pad, hi + pad]
    return fig


def visible(token: str) -> str:
    """Make spaces and newlines in a token visible in a table cell."""
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def fmt(value: float) -> str:
    """Four significant digits; 'inf' and 'nan' spelled out."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def token_table(analysis: TextAnalysis, eps_h: float) -> pd.DataFrame:
    """The per-token table: one row per position, over/within/under at the chosen band."""
    rows = []
    for row in token_rows(analysis):
        note = f" (left out: {row['excluded']})" if row["excluded"] else ""
        rows.append(
            [
                row["position"],
                visible(row["token"]),
                round(row["z_norm"], 4),
                round(row["f_norm"], 4),
                fmt(row["eps_lbo"]),
                row[f"status_{eps_h}"] + note,
                row["k"],
                round(row["rel_error"], 4),
                row["top_features"],
            ]
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def summary_rows(summary: dict[str, float]) -> list[tuple[str, str]]:
    """(label, formatted value) for the summary figures."""
    rows = [
        ("tokens analysed", f"{summary['tokens']:.0f}"),
        ("εLBO 1st quartile", fmt(summary["eps_lbo_q1"])),
        ("εLBO median", fmt(summary["eps_lbo_median"])),
        ("εLBO 3rd quartile", fmt(summary["eps_lbo_q3"])),
    ]
    for eps_h in afa.EPS_H_BANDS:
        rows.append(
            (f"over-activated at ε(h−1)={eps_h:g}", f"{summary[f'share_over_{eps_h}']:.1%}")
        )
        rows.append(
            (f"under-activated at ε(h−1)={eps_h:g}", f"{summary[f'share_under_{eps_h}']:.1%}")
        )
    rows += [
        ("mean L0", fmt(summary["mean_l0"])),
        ("mean k", fmt(summary["mean_k"])),
        ("reconstruction error (normalized MSE)", fmt(summary["normalized_mse"])),
        ("mean ‖z‖", fmt(summary["mean_z_norm"])),
        ("mean ‖f̃‖", fmt(summary["mean_f_norm"])),
    ]
    return rows


def summary_table(analyses: dict[str, TextAnalysis]) -> pd.DataFrame:
    """Summary figures, one column per SAE."""
    columns = {name: summary_rows(summarize(a)) for name, a in analyses.items()}
    labels = [label for label, _ in next(iter(columns.values()))]
    data = {"figure": labels}
    for name, rows in columns.items():
        data[name] = [value for _, value in rows]
    return pd.DataFrame(data)


def _levels(analysis: TextAnalysis, by: str) -> list[float | None]:
    """Shade level in [0, 1] per position (None = left out); eps_LBO on a log scale."""
    values = analysis.diagnostics["eps_lbo" if by == "eps_lbo" else "k"].double().tolist()
    kept = [not why for why in analysis.excluded]
    if by == "eps_lbo":
        values = [math.log10(v) if 0 < v < math.inf else v for v in values]
    finite = [v for v, keep in zip(values, kept, strict=True) if keep and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    levels: list[float | None] = []
    for v, keep in zip(values, kept, strict=True):
        if not keep:
            levels.append(None)
        elif not math.isfinite(v):
            levels.append(1.0 if v > 0 else 0.0)
        else:
            levels.append((v - lo) / (hi - lo) if hi > lo else 0.5)
    return levels


def shaded_text(analysis: TextAnalysis, by: str = "eps_lbo") -> str:
    """The analysed text as HTML, each token's background shaded by eps_LBO or by k."""
    if by not in SHADE_COLOURS:
        raise ValueError(f"shade by must be one of {', '.join(SHADE_COLOURS)}; got {by!r}")
    r, g, b = SHADE_COLOURS[by]
    levels = _levels(analysis, by)
    eps = analysis.diagnostics["eps_lbo"].tolist()
    ks = analysis.diagnostics["k"].tolist()
    pieces, cursor = [], 0
    for i, token in enumerate(analysis.tokens):
        span = analysis.spans[i] if analysis.spans else None
        if span is not None and span[1] > span[0]:
            start, end = span
            if start > cursor:
                pieces.append(html.escape(analysis.text[cursor:start]))
            piece, cursor = analysis.text[start:end], max(cursor, end)
        elif span is not None:
            continue  # a special token with no characters in the text
        else:
            piece = token
        tip = f"#{i} {token!r}: εLBO={fmt(eps[i])}, k={ks[i]:.0f}"
        if levels[i] is None:
            style = "border-bottom:1px dotted #999;color:#777"
            tip += f" (left out: {analysis.excluded[i]})"
        else:
            alpha = 0.06 + 0.8 * levels[i]
            style = f"background:rgba({r},{g},{b},{alpha:.3f});border-radius:3px"
        pieces.append(
            f'<span class="tok" data-pos="{i}" title="{html.escape(tip)}" '
            f'style="{style}">{html.escape(piece)}</span>'
        )
    if analysis.spans and cursor < len(analysis.text) and not analysis.truncated:
        pieces.append(html.escape(analysis.text[cursor:]))
    legend = (
        f"Shaded by {SHADE_LABELS[by]}: light = low, dark = high. Dotted grey: left out of the "
        "analysis (first position, special tokens). Hover a token for its numbers."
    )
    return (
        '<div id="shaded-text" style="white-space:pre-wrap;line-height:1.9;font-size:15px">'
        + "".join(pieces)
        + f'</div><p style="font-size:12px;color:#666">{html.escape(legend)}</p>'
    )
