"""Plots: written, non-empty, readable images; interactive HTML carries the token text."""

from __future__ import annotations

import builtins

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.evaluation import plots
from hf_topafa.sae import afa

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def diagnostics():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=256, activation="topk", k=8))
    x = torch.randn(300, 32)
    return afa.zf_diagnostics(sae, x)


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_save_zf_plot_writes_png(tmp_path, diagnostics):
    path = plots.save_zf_plot(diagnostics, tmp_path / "sub" / "zf.png", title="test")
    assert path == tmp_path / "sub" / "zf.png"
    assert _is_png(path)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_zf_figure_legend_names_class_band(diagnostics):
    fig = plots.zf_plot_figure(diagnostics, eps_h=0.25)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("over-activated at eps(h-1)=0.25" in label for label in labels)
    assert any("eps(h-1)=1 (upper = inf)" in label for label in labels)
    counts = sum(
        int(label.rsplit("(", 1)[1].rstrip(")"))
        for label in labels
        if "activated" in label or "within" in label
    )
    assert counts == diagnostics["z_norm"].numel()


def test_zf_plot_computes_missing_classes(tmp_path, diagnostics):
    minimal = {"z_norm": diagnostics["z_norm"], "f_norm": diagnostics["f_norm"]}
    assert _is_png(plots.save_zf_plot(minimal, tmp_path / "zf.png"))


def test_plotly_figure_hover_has_token_text(tmp_path, diagnostics):
    n = diagnostics["z_norm"].numel()
    texts = [f"tok{i}" for i in range(n)]
    fig = plots.zf_plot_figure_plotly(diagnostics, token_texts=texts, title="t")
    hovers = [h for trace in fig.data if trace.mode == "markers" for h in trace.text]
    assert len(hovers) == n
    assert any("token: 'tok7'" in h for h in hovers)
    assert all("eps_LBO" in h for h in hovers)
    path = plots.save_zf_plot_html(diagnostics, tmp_path / "zf.html", token_texts=texts)
    html = path.read_text()
    assert "tok7" in html and "<html>" in html


def test_plotly_rejects_wrong_number_of_texts(diagnostics):
    with pytest.raises(ValueError, match="token_texts has 2 entries"):
        plots.zf_plot_figure_plotly(diagnostics, token_texts=["a", "b"])


def test_bad_diagnostics_are_rejected(tmp_path):
    with pytest.raises(KeyError, match="f_norm"):
        plots.save_zf_plot({"z_norm": torch.ones(3)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no tokens"):
        plots.save_zf_plot({"z_norm": torch.ones(0), "f_norm": torch.ones(0)}, tmp_path / "x.png")


def test_histograms(tmp_path, diagnostics):
    eps = torch.cat([diagnostics["eps_lbo"], torch.tensor([float("inf")])])
    p1 = plots.save_histogram(eps, tmp_path / "eps.png", xlabel="eps_LBO", log_x=True)
    p2 = plots.save_histogram(diagnostics["k"], tmp_path / "k.png", xlabel="k", integer=True)
    assert _is_png(p1) and _is_png(p2)


def test_half_violins_and_l0_plot(tmp_path):
    gen = torch.Generator().manual_seed(0)
    per_sae = {
        f"layer {i}": {"normalized_mse": torch.rand(200, generator=gen) * (i + 1),
                       "eps_lbo": torch.rand(200, generator=gen)}
        for i in range(3)
    }  # fmt: skip
    assert _is_png(plots.save_half_violins(per_sae, tmp_path / "v.png", title="per layer"))
    rows = [
        {"activation": a, "l0": l0, "normalized_mse": 1 / l0}
        for a in ("topk", "topafa")
        for l0 in (8, 16, 32)
    ]
    assert _is_png(plots.save_l0_mse_plot(rows, tmp_path / "l0.png"))
    with pytest.raises(ValueError, match="empty"):
        plots.save_half_violins({}, tmp_path / "v2.png")


def test_missing_matplotlib_gives_install_hint(monkeypatch, diagnostics, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "hf-topafa\[plot\]"'):
        plots.save_zf_plot(diagnostics, tmp_path / "zf.png")


def test_zf_plots_say_which_space_they_show(diagnostics):
    fig = plots.zf_plot_figure(diagnostics)
    for label in (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()):
        assert "input's own scale" in label
    layout = plots.zf_plot_figure_plotly(diagnostics).layout
    for label in (layout.xaxis.title.text, layout.yaxis.title.text):
        assert "input's own scale" in label
