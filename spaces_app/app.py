"""hf-topafa Space: look at one text through a top-AFA (or any) SAE, token by token.

Run locally from the repository root with ``python spaces_app/app.py`` (``--help`` for options).
The default SAE is ``$HF_TOPAFA_SAE``, else ``runs/smollm2-topafa`` (what the README's main job
writes). Its base model, layer and hook point come from the SAE's config.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # render.py; on a Space also the hf_topafa/ uploaded next to us
if importlib.util.find_spec("hf_topafa") is None:  # a source checkout without pip install
    sys.path.insert(1, str(HERE.parent))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import features_tab  # noqa: E402
import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import render  # noqa: E402

from hf_topafa.evaluation import plots  # noqa: E402
from hf_topafa.evaluation import text_analysis as sae_inspect  # noqa: E402
from hf_topafa.sae import afa  # noqa: E402

log = logging.getLogger("hf_topafa.space")

DEFAULT_RUN = "runs/smollm2-topafa"
TRAIN_HINT = (
    "Make it with the README's main job: `hf-topafa train` (run from the repository root; it "
    f"writes `{DEFAULT_RUN}`). Or set the environment variable `HF_TOPAFA_SAE` to another run "
    "folder or Hub id, or type one in the SAE box."
)
BANDS = [f"{eps_h:g}" for eps_h in afa.EPS_H_BANDS]
DEFAULT_BAND = f"{plots.CLASS_EPS_H:g}"
SHADES = [("εLBO", "eps_lbo"), ("k", "k")]
EXAMPLES = [
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders split activations "
    "into features.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Paris is the capital of France, Berlin is the capital of Germany, and Rome is the capital of",
]
CSV_DIR = Path(tempfile.gettempdir()) / "hf_topafa_space"
CSV_MAX_AGE_S = 3600


def default_sae() -> str:
    """$HF_TOPAFA_SAE, else default_sae.txt next to this file (`hf-topafa space --sae` writes it),
    else runs/smollm2-topafa under the working folder or the repository."""
    env = os.environ.get("HF_TOPAFA_SAE", "").strip()
    if env:
        return env
    published = HERE / "default_sae.txt"
    if published.is_file() and published.read_text(encoding="utf-8").strip():
        return published.read_text(encoding="utf-8").strip()
    for base in (Path.cwd(), HERE.parent):
        if (base / DEFAULT_RUN).is_dir():
            return str(base / DEFAULT_RUN)
    return DEFAULT_RUN


def missing_default_message(source: str) -> str | None:
    """The how-to-make-it message when the default run folder is asked for and is not ready."""
    folder = Path(source.strip())
    if not folder.as_posix().endswith(DEFAULT_RUN):
        return None
    if not folder.exists():
        return f"The default SAE `{DEFAULT_RUN}` does not exist yet. {TRAIN_HINT}"
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return (
            f"The default SAE `{DEFAULT_RUN}` is not finished: it lacks config.json or "
            f"model.safetensors (is training still running?). {TRAIN_HINT}"
        )
    return None


def describe(source: str, sae) -> str:
    cfg = sae.config
    return (
        f"`{source}`: {cfg.activation} SAE, d_sae={cfg.d_sae}, reading `{cfg.hook_point}` of "
        f"layer {cfg.layer} of `{cfg.base_model}`"
    )


def short_name(source: str, sae) -> str:
    name = Path(source).name if Path(source).exists() else source
    return f"{name} ({sae.config.activation})"


class UserError(Exception):
    """A problem with what the visitor entered: shown as it is, without a traceback."""


def run_analysis(source: str, text: str, max_tokens: int):
    """Load (cached) and analyse; every expected failure becomes a UserError with a clear text."""
    source = (source or "").strip()
    missing = missing_default_message(source) if source else None
    if missing:
        raise UserError(missing)
    try:
        sae = sae_inspect.load_sae(source)
        model, tokenizer = sae_inspect.language_model_for(sae)
        analysis = sae_inspect.analyze_text(
            sae, text or "", max_tokens=max_tokens, model=model, tokenizer=tokenizer
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError, ConnectionError) as err:
        raise UserError(str(err)) from err
    return sae, analysis


def truncation_note(analysis) -> str:
    if not analysis.truncated:
        return ""
    return (
        f"\n\n**Note:** the text has {analysis.n_text_tokens} tokens: it was **truncated** to the first "
        f"{analysis.max_tokens} (the token limit)."
    )


def weights_note(sae, label: str = "") -> str:
    """The page's copy of the log's warning: the SAE runs on other weights than it learned on."""
    message = sae_inspect.other_weights_note(sae)
    if not message:
        return ""
    who = f"SAE {label}: " if label else ""
    return f"\n\n**Warning:** {who}{message[0].upper()}{message[1:]}."


def write_csv(rows: list[dict], stem: str) -> str:
    """Per-token CSV in a fresh folder (old ones are pruned); Gradio serves it for download."""
    CSV_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    # Concurrent requests prune at the same time: any folder may vanish under our feet.
    for folder in list(CSV_DIR.iterdir()):
        try:
            if now - folder.stat().st_mtime > CSV_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "sae"
    return str(sae_inspect.write_csv(rows, CSV_DIR / uuid.uuid4().hex / f"{safe}_tokens.csv"))


def zf_figure(analysis, title: str, eps_h: float):
    kept = analysis.kept.tolist()
    texts = [t for t, keep in zip(analysis.tokens, kept, strict=True) if keep]
    diagnostics = sae_inspect.kept_diagnostics(analysis)
    fig = plots.zf_plot_figure_plotly(diagnostics, token_texts=texts, title=title, eps_h=eps_h)
    return render.polish_zf_figure(fig)


def error_markdown(err: Exception) -> str:
    if isinstance(err, UserError):
        return f"**Could not analyse:** {err}"
    log.exception("unexpected error in the Space")
    return (
        f"**Something went wrong** ({type(err).__name__}: {err}). The input may be unusual; "
        "try another text or SAE."
    )


def make_handlers(max_tokens: int):
    def analyze(source: str, text: str, band: str, shade: str):
        """One SAE on one text: ZF plot, summary, shaded text, per-token table, CSV."""
        try:
            eps_h = float(band or DEFAULT_BAND)
            sae, analysis = run_analysis(source, text, max_tokens)
            name = short_name(source.strip(), sae)
            status = (
                f"Analysed {len(analysis.token_ids)} tokens with {describe(source.strip(), sae)}."
                " The first position and special tokens are left out of the plot and summary "
                "(as in training)." + truncation_note(analysis) + weights_note(sae)
            )
            rows = sae_inspect.token_rows(analysis)
            return (
                status,
                zf_figure(analysis, f"ZF plot: {name}", eps_h),
                render.summary_table({name: analysis}),
                render.shaded_text(analysis, shade or "eps_lbo"),
                render.token_table(analysis, eps_h),
                write_csv(rows, name),
            )
        except Exception as err:
            return error_markdown(err), None, pd.DataFrame(), "", pd.DataFrame(), None

    def compare(source_a: str, source_b: str, text: str, band: str):
        """Two SAEs on the same text, side by side."""
        try:
            eps_h = float(band or DEFAULT_BAND)
            names, descriptions, analyses, notes = [], [], [], []
            for label, source in (("A", source_a), ("B", source_b)):
                source = (source or "").strip()
                if not source:
                    raise UserError(f"SAE {label} is empty: enter a run folder or a Hub id")
                try:
                    sae, analysis = run_analysis(source, text, max_tokens)
                except UserError as err:
                    raise UserError(f"SAE {label}: {err}") from err
                notes.append(weights_note(sae, label))
                names.append(f"{label}: {short_name(source, sae)}")
                descriptions.append(f"{label} = {describe(source, sae)}")
                analyses.append(analysis)
            status = "Compared: " + "; ".join(descriptions) + truncation_note(analyses[0])
            status += "".join(notes)
            rows = [
                {"sae": name, **row}
                for name, analysis in zip(names, analyses, strict=True)
                for row in sae_inspect.token_rows(analysis)
            ]
            plot_a, plot_b = (
                zf_figure(analysis, f"ZF plot, {name}", eps_h)
                for name, analysis in zip(names, analyses, strict=True)
            )
            summary = render.summary_table(dict(zip(names, analyses, strict=True)))
            return status, plot_a, plot_b, summary, write_csv(rows, "comparison")
        except Exception as err:
            return error_markdown(err), None, None, pd.DataFrame(), None

    return analyze, compare


INTRO = """# hf-topafa: an SAE's view of your text
For every token, the sparse autoencoder's code f̃ (feature activations scaled by decoder norms)
should have about the same norm as its input z — the *approximate feature activation* of
Lee et al. (arXiv 2503.24277). The ZF plot shows ‖f̃‖ against ‖z‖ with the ε(h−1) bands, both in
the input's own scale (an SAE that standardizes its input is multiplied back by each token's std);
tokens above a band are **over-activated**, below it **under-activated**. εLBO is the smallest
quasi-orthogonality ε that explains the token; top-AFA picks k, the number of features, per token.
"""


def build_demo(sae_default: str | None = None, max_tokens: int = sae_inspect.MAX_TOKENS):
    """The Blocks app (not launched)."""
    sae_default = sae_default or default_sae()
    analyze, compare = make_handlers(max_tokens)
    with gr.Blocks(title="hf-topafa SAE explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        missing = missing_default_message(sae_default)
        if missing:
            gr.Markdown(f"**Note:** {missing}", elem_id="missing-default")
        with gr.Tab("Analyze"):
            with gr.Row():
                sae_box = gr.Textbox(
                    value=sae_default, label="SAE (local run folder or Hub id)", scale=3,
                    min_width=300,  # on a phone the radios wrap below instead of squeezing it
                    elem_id="sae-box",
                )  # fmt: skip
                band = gr.Radio(BANDS, value=DEFAULT_BAND, label="colour by band ε(h−1)")
                shade = gr.Radio(SHADES, value="eps_lbo", label="shade text by")
            text = gr.Textbox(
                lines=4,
                label=f"Text (up to {max_tokens} tokens; longer texts are truncated)",
                placeholder="Type or paste text, or click an example below",
                elem_id="input-text",
            )
            gr.Examples(EXAMPLES, inputs=[text])
            button = gr.Button("Analyze", variant="primary", elem_id="analyze-button")
            status = gr.Markdown(elem_id="analyze-status")
            with gr.Row():
                plot = gr.Plot(label="ZF plot", elem_id="zf-plot", scale=3, min_width=340)
                summary = gr.Dataframe(
                    value=pd.DataFrame(columns=["figure", "SAE"]),  # headers before a run
                    label="Summary", elem_id="summary-table", scale=2, max_height=720,
                )  # fmt: skip
            shaded = gr.HTML(label="Text shaded per token", elem_id="shaded-html")
            table = gr.Dataframe(
                value=pd.DataFrame(columns=render.TABLE_COLUMNS),
                label="Per-token results", elem_id="token-table", wrap=True,
                column_widths=render.TABLE_WIDTHS,
            )  # fmt: skip
            csv_file = gr.File(label="Per-token results (CSV)", elem_id="csv-file")
            outputs = [status, plot, summary, shaded, table, csv_file]
            inputs = [sae_box, text, band, shade]
            button.click(analyze, inputs, outputs, api_name="analyze")
            text.submit(analyze, inputs, outputs, api_visibility="private")
        with gr.Tab("Compare two SAEs"):
            with gr.Row():
                sae_a = gr.Textbox(value=sae_default, label="SAE A (e.g. top-AFA)")
                sae_b = gr.Textbox(label="SAE B (e.g. TopK)", placeholder="runs/smollm2-topk")
                band_c = gr.Radio(BANDS, value=DEFAULT_BAND, label="colour by band ε(h−1)")
            text_c = gr.Textbox(lines=3, label="Text", placeholder="Same text for both SAEs")
            gr.Examples(EXAMPLES, inputs=[text_c])
            button_c = gr.Button("Compare", variant="primary", elem_id="compare-button")
            status_c = gr.Markdown(elem_id="compare-status")
            with gr.Row():
                plot_a = gr.Plot(label="SAE A")
                plot_b = gr.Plot(label="SAE B")
            summary_c = gr.Dataframe(
                value=pd.DataFrame(columns=["figure", "SAE A", "SAE B"]),
                label="Summary, side by side", elem_id="compare-summary", max_height=720,
            )  # fmt: skip
            csv_c = gr.File(label="Per-token results of both (CSV)")
            button_c.click(
                compare,
                [sae_a, sae_b, text_c, band_c],
                [status_c, plot_a, plot_b, summary_c, csv_c],
                api_name="compare",
            )
        features_tab.build(sae_default, open_from=table, sae_from=sae_box)
    # Every request goes through the queue; two run at once on a small CPU box, the rest wait.
    demo.queue(default_concurrency_limit=2, max_size=256)
    return demo


THEME_FONTS = {  # system fonts only: the page must not fetch web fonts
    "font": ["ui-sans-serif", "system-ui", "sans-serif"],
    "font_mono": ["ui-monospace", "monospace"],
}


def warm_up(source: str) -> None:
    """Load the default SAE and its base model before the first visitor (errors shown later)."""
    try:
        sae = sae_inspect.load_sae(source)
        sae_inspect.language_model_for(sae)
    except Exception as err:  # the page explains it when someone presses Analyze
        log.warning("default SAE %s not loaded: %s", source, err)


def launch(demo, host: str | None = None, port: int | None = None, block: bool = True, quiet=False):
    """Launch on host:port; returns the local URL."""
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        share=False,
        show_error=False,
        quiet=quiet,
        ssr_mode=False,
        theme=gr.themes.Default(**THEME_FONTS),
    )
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default=None, help="default SAE (run folder or Hub id)")
    parser.add_argument("--host", default=None, help="address to listen on (Gradio's default)")
    parser.add_argument("--port", type=int, default=None, help="port (Gradio's default 7860)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=int(os.environ.get("HF_TOPAFA_MAX_TOKENS", sae_inspect.MAX_TOKENS)),
        help="longer texts are truncated to this many tokens",
    )
    args = parser.parse_args(argv)
    if args.max_tokens < 2:
        parser.error(f"--max-tokens must be at least 2; got {args.max_tokens}")
    logging.basicConfig(level=logging.INFO)
    source = args.sae or default_sae()
    warm_up(source)
    launch(build_demo(source, args.max_tokens), args.host, args.port, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
