"""Plots for SAE evaluation: the ZF plot (static and interactive), histograms, per-layer violins.

matplotlib and plotly are optional (the ``plot`` extra); they are imported only when a plot is
drawn, so the rest of the package works without them. Every ``save_*`` function writes
atomically (temp file, then rename) and returns the path it wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..helpers import atomic_path
from ..sae import afa

CLASS_EPS_H = 0.5  # the eps (h - 1) band whose over/within/under split colours the points
# zf_diagnostics gives both norms in the input's own scale (a standardizing SAE's multiplied back
# by each token's std), which the axes say: in the standardized space all tokens share one ||z||.
Z_LABEL = "||z||  (the SAE's input, in the input's own scale)"
F_LABEL = "||f~||  (decoder-scaled code, in the input's own scale)"
CLASS_STYLE = {  # class value -> (label, colour)
    afa.OVER: ("over-activated", "#d62728"),
    afa.WITHIN: ("within bounds", "#2ca02c"),
    afa.UNDER: ("under-activated", "#1f77b4"),
}
BAND_COLOURS = {0.25: "#555555", 0.5: "#888888", 1.0: "#bbbbbb"}
MAX_POINTS = 20_000  # points drawn on a scatter; beyond this a fixed random subset is drawn


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            'Plotting needs matplotlib. Install it with: pip install "hf-topafa[plot]"'
        ) from err
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _plotly_go():
    try:
        import plotly.graph_objects as go
    except ImportError as err:
        raise ImportError(
            'Interactive plots need plotly. Install it with: pip install "hf-topafa[plot]"'
        ) from err
    return go


def _as_tensor(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().reshape(-1).double().cpu()
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty: there are no tokens to plot")
    return tensor


def _zf_points(diagnostics: Mapping, eps_h: float = CLASS_EPS_H):
    """z_norm, f_norm and the class of each token, with the class computed if it is missing."""
    for key in ("z_norm", "f_norm"):
        if key not in diagnostics:
            raise KeyError(
                f"diagnostics has no {key!r}; pass the dict from hf_topafa.afa.zf_diagnostics"
            )
    z = _as_tensor(diagnostics["z_norm"], "z_norm")
    f = _as_tensor(diagnostics["f_norm"], "f_norm")
    if z.shape != f.shape:
        raise ValueError(f"z_norm has {z.numel()} tokens but f_norm has {f.numel()}")
    key = f"class_{eps_h}"
    classes = diagnostics.get(key)
    if classes is None:
        classes = afa.classify_tokens(z, f, eps_h)
    return z, f, torch.as_tensor(classes).reshape(-1).cpu()


def _subsample(n: int, max_points: int) -> torch.Tensor:
    if n <= max_points:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=gen)[:max_points].sort().values


def _band_curves(z: torch.Tensor):
    """x grid and (eps_h, lower, upper) for each band; upper is None where it is infinite."""
    finite = z[torch.isfinite(z)]
    top = float(finite.max()) if finite.numel() else 1.0
    grid = torch.linspace(0.0, max(top, 1e-12) * 1.05, 200, dtype=torch.float64)
    bands = []
    for eps_h in afa.EPS_H_BANDS:
        lower, upper = afa.zf_bounds(grid, eps_h)
        bands.append((eps_h, lower, None if math.isinf(float(upper[-1])) else upper))
    return grid, bands


def _savefig(fig, path: Path, plt) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def _summary_line(z: torch.Tensor, classes: torch.Tensor, eps_h: float) -> str:
    n = classes.numel()
    share = {v: float((classes == v).sum()) / n for v in CLASS_STYLE}
    return (
        f"{n} tokens; at eps(h-1)={eps_h}: over {share[afa.OVER]:.1%}, "
        f"within {share[afa.WITHIN]:.1%}, under {share[afa.UNDER]:.1%}"
    )


def zf_plot_figure(diagnostics: Mapping, title: str | None = None, eps_h: float = CLASS_EPS_H):
    """The ZF plot as a matplotlib Figure: ||f~|| against ||z||, with the eps(h-1) bands."""
    plt = _pyplot()
    z, f, classes = _zf_points(diagnostics, eps_h)
    keep = _subsample(z.numel(), MAX_POINTS)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    grid, bands = _band_curves(z)
    for band_eps, lower, upper in bands:
        colour = BAND_COLOURS.get(band_eps, "#999999")
        label = f"bounds eps(h-1)={band_eps:g}" + (" (upper = inf)" if upper is None else "")
        ax.plot(grid, lower, color=colour, linestyle="--", linewidth=1, label=label)
        if upper is not None:
            ax.plot(grid, upper, color=colour, linestyle="--", linewidth=1)
    ax.plot(grid, grid, color="black", linewidth=1, label="||f~|| = ||z||")
    for value, (name, colour) in CLASS_STYLE.items():
        mask = classes[keep] == value
        count = int((classes == value).sum())
        ax.scatter(
            z[keep][mask],
            f[keep][mask],
            s=4,
            alpha=0.5,
            color=colour,
            label=f"{name} at eps(h-1)={eps_h:g} ({count})",
            rasterized=True,
        )
    finite_f = f[torch.isfinite(f)]
    ymax = max(float(grid[-1]), float(finite_f.max()) * 1.05 if finite_f.numel() else 0.0)
    ax.set_xlim(0, float(grid[-1]))
    ax.set_ylim(0, ymax if ymax > 0 else 1.0)
    ax.set_xlabel(Z_LABEL)
    ax.set_ylabel(F_LABEL)
    ax.set_title(title or "ZF plot")
    ax.text(
        0.01, 0.99, _summary_line(z, classes, eps_h), transform=ax.transAxes,
        va="top", fontsize=8,
    )  # fmt: skip
    ax.legend(loc="lower right", fontsize=7, markerscale=3)
    ax.grid(alpha=0.3)
    return fig


def save_zf_plot(
    diagnostics: Mapping, path: str | os.PathLike, title: str | None = None,
    eps_h: float = CLASS_EPS_H,
) -> Path:  # fmt: skip
    """Write the ZF plot as an image (PNG unless the suffix says otherwise); returns the path.

    ``diagnostics`` is the dict from ``hf_topafa.afa.zf_diagnostics(sae, x)``. Points are coloured
    by their over/within/under class at ``eps_h`` (default 0.5), as the legend says.
    """
    plt = _pyplot()
    return _savefig(zf_plot_figure(diagnostics, title, eps_h), Path(path), plt)


def zf_plot_figure_plotly(
    diagnostics: Mapping, token_texts: Sequence[str] | None = None, title: str | None = None,
    eps_h: float = CLASS_EPS_H,
):  # fmt: skip
    """The ZF plot as an interactive plotly Figure, with each token's text and numbers on hover."""
    go = _plotly_go()
    z, f, classes = _zf_points(diagnostics, eps_h)
    n = z.numel()
    if token_texts is not None and len(token_texts) != n:
        raise ValueError(f"token_texts has {len(token_texts)} entries but there are {n} tokens")
    eps = diagnostics.get("eps_lbo")
    eps = _as_tensor(eps, "eps_lbo") if eps is not None else None
    k = diagnostics.get("k")
    k = _as_tensor(k, "k") if k is not None else None
    keep = _subsample(n, MAX_POINTS)
    fig = go.Figure()
    grid, bands = _band_curves(z)
    for band_eps, lower, upper in bands:
        colour = BAND_COLOURS.get(band_eps, "#999999")
        name = f"bounds eps(h-1)={band_eps:g}"
        fig.add_trace(
            go.Scatter(x=grid.tolist(), y=lower.tolist(), mode="lines", name=name,
                       legendgroup=name, line={"color": colour, "dash": "dash", "width": 1})
        )  # fmt: skip
        if upper is not None:
            fig.add_trace(
                go.Scatter(x=grid.tolist(), y=upper.tolist(), mode="lines", name=name,
                           legendgroup=name, showlegend=False,
                           line={"color": colour, "dash": "dash", "width": 1})
            )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=grid.tolist(), y=grid.tolist(), mode="lines", name="||f~|| = ||z||",
                   line={"color": "black", "width": 1})
    )  # fmt: skip
    for value, (label, colour) in CLASS_STYLE.items():
        idx = keep[classes[keep] == value]
        hover = []
        for i in idx.tolist():
            parts = []
            if token_texts is not None:
                parts.append(f"token: {token_texts[i]!r}")
            parts.append(f"||z|| = {z[i]:.4g}<br>||f~|| = {f[i]:.4g}")
            if eps is not None:
                parts.append(f"eps_LBO = {eps[i]:.3g}")
            if k is not None:
                parts.append(f"k = {k[i]:.0f}")
            hover.append("<br>".join(parts))
        fig.add_trace(
            go.Scattergl(
                x=z[idx].tolist(), y=f[idx].tolist(), mode="markers",
                name=f"{label} at eps(h-1)={eps_h:g} ({int((classes == value).sum())})",
                marker={"color": colour, "size": 4, "opacity": 0.6},
                text=hover, hoverinfo="text",
            )
        )  # fmt: skip
    fig.update_layout(
        title=(title or "ZF plot") + f"<br><sup>{_summary_line(z, classes, eps_h)}</sup>",
        xaxis_title=Z_LABEL,
        yaxis_title=F_LABEL,
        template="plotly_white",
    )
    return fig


def save_zf_plot_html(
    diagnostics: Mapping, path: str | os.PathLike, token_texts: Sequence[str] | None = None,
    title: str | None = None, eps_h: float = CLASS_EPS_H,
) -> Path:  # fmt: skip
    """Write the interactive ZF plot as a self-contained HTML file (plotly.js inlined)."""
    fig = zf_plot_figure_plotly(diagnostics, token_texts, title, eps_h)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return path


def save_histogram(
    values, path: str | os.PathLike, *, xlabel: str, title: str | None = None,
    bins: int = 50, log_x: bool = False, integer: bool = False,
) -> Path:  # fmt: skip
    """A histogram of per-token values (eps_LBO, k). Non-finite values are counted in the title."""
    plt = _pyplot()
    data = _as_tensor(values, xlabel)
    finite = data[torch.isfinite(data)]
    dropped = data.numel() - finite.numel()
    if log_x:
        dropped += int((finite <= 0).sum())
        finite = finite[finite > 0]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if finite.numel():
        if integer:
            lo, hi = int(finite.min()), int(finite.max())
            edges = torch.arange(lo, hi + 2, max(1, (hi - lo + 1) // bins)).double() - 0.5
        elif log_x:
            lo, hi = math.log10(float(finite.min())), math.log10(float(finite.max()))
            edges = torch.logspace(lo, hi + 1e-9, bins + 1, dtype=torch.float64)
        else:
            edges = bins
        ax.hist(finite.numpy(), bins=edges if isinstance(edges, int) else edges.numpy())
        median = float(finite.median())
        ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.4g}")
        ax.legend(fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("tokens")
    note = f"{finite.numel()} tokens" + (
        f", {dropped} non-finite/non-positive omitted" if dropped else ""
    )
    ax.set_title((title + "\n" if title else "") + note, fontsize=10)
    ax.grid(alpha=0.3)
    return _savefig(fig, Path(path), plt)


def save_half_violins(
    per_sae: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
    *, metrics: Sequence[str] = ("normalized_mse", "eps_lbo"), title: str | None = None,
) -> Path:  # fmt: skip
    """The paper's per-layer figure: one half-violin per SAE for each per-token metric.

    ``per_sae`` maps a label (e.g. "layer 12") to per-token arrays keyed by metric name. For each
    metric the SAE with the lowest median is marked best and the highest worst.
    """
    plt = _pyplot()
    if not per_sae:
        raise ValueError("per_sae is empty: give at least one SAE's per-token metrics")
    labels = list(per_sae)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.4, 1.2 * len(labels)), 3.4 * len(metrics)),
                             squeeze=False)  # fmt: skip
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        series = []
        for label in labels:
            if metric not in per_sae[label]:
                raise KeyError(f"SAE {label!r} has no per-token {metric!r}")
            data = _as_tensor(per_sae[label][metric], metric)
            data = data[torch.isfinite(data) & (data > 0)]
            if data.numel() == 0:
                raise ValueError(f"SAE {label!r} has no finite positive {metric!r} values")
            series.append(data.log10().numpy())
        positions = list(range(len(labels)))
        parts = ax.violinplot(series, positions=positions, showextrema=False, widths=0.8)
        for body in parts["bodies"]:  # keep the left half: the paper's half-violin
            verts = body.get_paths()[0].vertices
            centre = verts[:, 0].mean()
            verts[:, 0] = verts[:, 0].clip(max=centre)
            body.set_alpha(0.6)
        medians = [float(torch.as_tensor(s).median()) for s in series]
        ax.scatter(positions, medians, color="black", s=12, zorder=3, label="median")
        best, worst = medians.index(min(medians)), medians.index(max(medians))
        ax.scatter([best], [medians[best]], marker="*", s=160, color="#2ca02c", zorder=4,
                   label=f"best: {labels[best]}")  # fmt: skip
        ax.scatter([worst], [medians[worst]], marker="X", s=100, color="#d62728", zorder=4,
                   label=f"worst: {labels[worst]}")  # fmt: skip
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"log10 {metric}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _savefig(fig, Path(path), plt)


def save_l0_mse_plot(
    rows: Sequence[Mapping], path: str | os.PathLike, *, title: str | None = None,
    group_key: str = "activation", x_key: str = "l0", y_key: str = "normalized_mse",
) -> Path:  # fmt: skip
    """L0 against normalized MSE, log-log, one line per activation (the paper's trade-off plot)."""
    plt = _pyplot()
    if not rows:
        raise ValueError("no rows to plot")
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        groups.setdefault(str(row[group_key]), []).append((float(row[x_key]), float(row[y_key])))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, points in sorted(groups.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L0 (mean active features per token)")
    ax.set_ylabel("normalized MSE  (mean ||x - x^||^2 / ||x||^2)")
    ax.set_title(title or "Sparsity vs reconstruction")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _savefig(fig, Path(path), plt)


def save_ground_truth_plot(per_sample: Mapping, path: str | os.PathLike, title: str) -> Path:
    """Three panels against a synthetic world's truth, per sample: the AFA ‖x − bias‖ and the
    SAE's ‖f̃‖ (input scale, without b_dec) against ‖f_true‖ (the ZF plot against the truth),
    and the SAE's per-sample L0 against the true L0. ``per_sample``: the dict of
    ``ground_truth.per_sample_truth``."""
    plt = _pyplot()
    true_norm = _as_tensor(per_sample["true_norm"], "true_norm")
    keep = _subsample(len(true_norm), 4000)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    panels = (("z_norm", "‖x − bias‖ (the AFA)"), ("f_norm", "SAE ‖f̃‖ (input scale)"))
    top = float(true_norm.max()) if len(true_norm) else 1.0
    for ax, (key, label) in zip(axes[:2], panels, strict=True):
        ax.scatter(true_norm[keep], _as_tensor(per_sample[key], key)[keep], s=3, alpha=0.4)
        ax.plot([0, top], [0, top], "k--", lw=1, label="equal")
        ax.set(xlabel="‖f_true‖ (true code norm)", ylabel=label)
        ax.legend(loc="upper left", fontsize=8)
    true_l0 = _as_tensor(per_sample["true_l0"], "true_l0")
    jitter = torch.rand(len(keep)) * 0.6 - 0.3
    axes[2].scatter(
        true_l0[keep] + jitter, _as_tensor(per_sample["l0"], "l0")[keep], s=3, alpha=0.4
    )
    hi = float(true_l0.max()) if len(true_l0) else 1.0
    axes[2].plot([0, hi], [0, hi], "k--", lw=1, label="SAE L0 = true L0")
    axes[2].set(xlabel="true per-sample L0", ylabel="SAE per-sample L0")
    axes[2].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _savefig(fig, Path(path), plt)


def save_agreement_plot(
    rows: Sequence[Mapping], chance: float, chosen: int, path: str | os.PathLike
) -> Path:
    """Seed agreement against k (``hf-topafa choose-k``): each k's matched |cos| between its
    seeds, two fresh starts' level for chance, the chosen k starred."""
    plt = _pyplot()
    ks = [row["k"] for row in rows]
    agree = [row["agreement"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(ks, agree, marker="o", color="#1f77b4", label="seeds agree (matched |cos|)")
    ax.axhline(chance, color="#888888", linestyle="--", label=f"two fresh starts ({chance:.3f})")
    best = ks.index(chosen)
    ax.scatter([chosen], [agree[best]], marker="*", s=220, color="#2ca02c", zorder=3,
               label=f"chosen: k = {chosen}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("matched |cos| between seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _savefig(fig, Path(path), plt)
