"""The model card of an SAE: Hub metadata, what it is, how it was trained, its metrics, usage.

The template is ``hf_topafa/data/model_card.md``: it lives inside the package so that an
installed copy renders the same card as a source checkout (``model_cards/`` holds an example).
Uploading is in ``hf_topafa.hub``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from pathlib import Path

import yaml

from ..helpers import is_number, read_json
from ..sae.configuration_sae import SAEConfig
from ..sae.rules import get_rule
from ..training.train_config import flat_training_config
from .convert_saelens import SAELENS_REGISTERED

TEMPLATE_PATH = Path(__file__).parents[1] / "data" / "model_card.md"
FEATURE_TABLE_ROWS = 5
CARD_TAGS = ["sparse-autoencoder", "interpretability", "hf-topafa", "safetensors"]
LICENSE = "apache-2.0"
MAX_METRIC_ROWS = 150

HOOK_TEXT = {
    "resid_pre": "residual stream entering block {layer}",
    "resid_post": "residual stream leaving block {layer}",
    "mlp_out": "MLP output of block {layer}",
    "attn_out": "attention output of block {layer}",
}


# --------------------------------------------------------------------------------------------
# Reading a run folder


def read_training_config(run_dir: Path) -> dict:
    """The run's training config as a dict: training_config.json, else .yaml, else {}."""
    if (run_dir / "training_config.json").is_file():
        return read_json(run_dir / "training_config.json")
    path = run_dir / "training_config.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping, found {type(data).__name__}")
        return data
    return {}


def public_training_config(training: dict) -> dict:
    """The training settings fit for a public repo: no token-like strings, no local paths."""

    def private(key: str, value) -> bool:
        if not isinstance(value, str):
            return False
        return "token" in key.lower() or os.path.isabs(os.path.expanduser(value))

    def public(mapping: dict) -> dict:
        return {
            k: public(v) if isinstance(v, dict) else v
            for k, v in mapping.items()
            if k != "output" and not private(k, v)
        }

    return public(training)  # flat, or by section (the run's output sits in "run")


def _config_from_dir(run_dir: Path) -> SAEConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not an SAE folder: config.json is missing "
            "(a run folder holds config.json and model.safetensors, as written by save_pretrained)"
        )
    raw = read_json(path)
    if raw.get("model_type") != SAEConfig.model_type:
        raise ValueError(
            f"{path} has model_type={raw.get('model_type')!r}; an hf-topafa SAE has "
            f"model_type={SAEConfig.model_type!r}"
        )
    return SAEConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"})


# --------------------------------------------------------------------------------------------
# The model card


def _config_fields(config: SAEConfig) -> dict:
    """The SAE's own settings (what its __init__ takes), without transformers' bookkeeping."""
    names = [
        p for p in inspect.signature(SAEConfig.__init__).parameters if p not in ("self", "kwargs")
    ]
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def _cell(value) -> str | None:
    """A metric as table text; None for what does not fit a cell (paths, long lists)."""
    if isinstance(value, list):
        if 0 < len(value) <= 5 and all(is_number(v) or v is None for v in value):
            return " / ".join("n/a" if v is None else _format_value(v) for v in value)
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return _format_value(value)
    return None


def _format_value(value) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if is_number(value) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Table rows (dotted key, text) of a nested metrics dict."""
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif (text := _cell(value)) is not None:
            rows.append((name, text))
    return rows


def _table(rows: list[tuple[str, str]]) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in rows[:MAX_METRIC_ROWS]]
    if len(rows) > MAX_METRIC_ROWS:
        lines += ["", f"{len(rows) - MAX_METRIC_ROWS} more entries are in `metrics.json`."]
    return lines


def _metrics_section(metrics: dict | None) -> str:
    """Top-level figures in a table; nested blocks (full evaluation) folded away below it."""
    metrics = metrics or {}
    headline = [(k, t) for k, v in metrics.items() if not isinstance(v, dict) and (t := _cell(v))]
    nested = _flatten({k: v for k, v in metrics.items() if isinstance(v, dict)})
    if not headline and not nested:
        return "No evaluation metrics were recorded for this SAE (no `metrics.json` in its run)."
    lines = ["From the run's `metrics.json` (held-out tokens; lists are quartiles or quantiles):"]
    if headline:
        lines += [""] + _table(headline)
    if nested:
        lines += ["", "<details>", "<summary>All evaluation figures</summary>", ""]
        lines += _table(nested) + ["", "</details>"]
    return "\n".join(lines)


def _training_summary(config: SAEConfig, training: dict, metrics: dict) -> str:
    """Tokens actually trained on (metrics.json), else the budget (training_config.json)."""
    tokens = metrics.get("tokens_trained")
    budget = flat_training_config(training).get("max_tokens")
    data = f" of `{config.dataset}`" if config.dataset else ""
    if is_number(tokens) and tokens > 0:
        text = f"Trained on **{int(tokens):,} tokens**{data}"
        if is_number(metrics.get("steps")):
            text += f" in {int(metrics['steps']):,} steps"
        if is_number(metrics.get("wall_time_s")):
            text += f" ({metrics['wall_time_s']:.0f} s wall time)"
        text += "."
    elif is_number(budget) and budget > 0:
        text = f"Training budget: **{int(budget):,} tokens**{data}."
    else:
        text = "The number of training tokens was not recorded."
    losses = ["reconstruction MSE"]
    if config.afa_coef:
        losses.append(f"AFA norm matching (weight {config.afa_coef:g})")
    if config.aux_coef:
        losses.append(
            f"aux-k for dead features (k_aux = {config.aux_k}, weight {config.aux_coef:g})"
        )
    rule = get_rule(config.activation)
    if rule.penalty is not None:
        losses.append(f"{rule.penalty_name} (weight {getattr(config, rule.penalty_coef):g})")
    width = f"{config.d_sae:,} features on {config.d_in}-dimensional inputs"
    return f"{text} It holds {width}.\nLoss: {'; '.join(losses)}."


def _usage_code(config: SAEConfig, repo_id: str) -> str:
    lines = [
        "import torch",
        "from hf_topafa import SparseAutoencoder, afa",
        "from hf_topafa.data.lm import load_language_model, truncated_forward",
        "",
        f'sae = SparseAutoencoder.from_pretrained("{repo_id}")',
    ]
    if config.base_model and config.layer is not None and config.hook_point:
        lines += [
            f'lm, tokenizer = load_language_model("{config.base_model}")',
            'ids = tokenizer("The cat sat on the mat because it was warm.", return_tensors="pt")',
            "with torch.no_grad():",
            f"    acts = truncated_forward(lm, ids.input_ids, layer={config.layer}, "
            f'hook_point="{config.hook_point}")',
            "    zf = afa.zf_diagnostics(sae, acts[0])",
            "tokens = tokenizer.convert_ids_to_tokens(ids.input_ids[0])",
        ]
    else:  # provenance unknown: show the analysis on activations the user brings
        lines += [
            f"acts = torch.randn(12, {config.d_in})  # replace with your model's activations",
            "with torch.no_grad():",
            "    zf = afa.zf_diagnostics(sae, acts)",
            "tokens = [str(i) for i in range(len(acts))]",
        ]
    lines += [
        'for token, z, f, eps in zip(tokens, zf["z_norm"], zf["f_norm"], zf["eps_lbo"]):',
        '    print(f"{token!r:>14}  ||z||={z:8.3f}  ||f~||={f:8.3f}  eps_LBO={eps:.3g}")',
        "",
        "from hf_topafa.evaluation.plots import save_zf_plot  # needs the plot extra",
        'save_zf_plot(zf, "zf_plot_sentence.png")',
    ]
    return "\n".join(lines)


def _remote_code_section(repo_id: str) -> str:
    code = (
        "import torch\n"
        "from transformers import AutoModel\n\n"
        f'sae = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)\n'
        "out = sae(torch.randn(4, sae.config.d_in))\n"
        "print(out.l0, out.reconstruction.shape)"
    )
    return (
        "Without installing hf-topafa, the copy of its model code in this repo loads the SAE "
        "(read it first: `trust_remote_code` runs it):\n\n```python\n" + code + "\n```\n"
    )


def _saelens_section(repo_id: str, activation: str) -> str:
    lines = []
    if activation in SAELENS_REGISTERED:
        lines.append(
            f"import hf_topafa.integrations.saelens  # registers {activation} with SAELens"
        )
    lines += [
        "from huggingface_hub import snapshot_download",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.load_from_disk(snapshot_download("{repo_id}"))',
    ]
    return (
        "\nThe repo also holds the SAE in SAELens's format (`cfg.json`, "
        "`sae_weights.safetensors`), with the same encode and reconstruction"
        + (' (`pip install "hf-topafa[saelens]"`)' if activation in SAELENS_REGISTERED else "")
        + ":\n\n```python\n"
        + "\n".join(lines)
        + "\n```\n"
    )


def _md_token(text: str) -> str:
    """A token as inline code in a table cell: visible spaces, no cell breaks."""
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", "\\n") + "`"


def _features_section(run_dir: Path, repo_id: str) -> str:
    """Summary of features.parquet (written by ``hf-topafa features``), when the run has it."""
    path = run_dir / "features.parquet"
    if not path.is_file():
        return ""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["feature", "density", "max_activation", "top_logits"])
    meta = json.loads((table.schema.metadata or {}).get(b"hf_topafa", b"{}"))
    rows = table.to_pylist()
    dead = sum(1 for r in rows if not r["density"])
    densities = sorted(r["density"] or 0.0 for r in rows)
    median = densities[len(densities) // 2] if densities else 0.0
    tokens = meta.get("num_tokens")
    read = f" over {tokens:,} tokens" if isinstance(tokens, int) else ""
    dataset = f" of `{meta['dataset']}`" if meta.get("dataset") else ""
    lines = [
        "## Features",
        "",
        f"`hf-topafa features` read the SAE's {len(rows):,} features{read}{dataset}: "
        f"{dead:,} never fired, the median density (share of tokens where a feature fires) is "
        f"{median:.3g}. [features.parquet](features.parquet) has each feature's density, "
        "activation statistics and histogram, the εLBO and over/under shares of the tokens "
        "where it fires, and the tokens its decoder direction promotes and suppresses "
        "through the unembedding"
        + (
            "; [examples.parquet](examples.parquet) its top examples with their windows."
            if (run_dir / "examples.parquet").is_file()
            else "."
        ),
        "",
        f"The {FEATURE_TABLE_ROWS} densest features:",
        "",
        "| feature | density | max activation | top logits |",
        "|---:|---:|---:|---|",
    ]
    densest = sorted(rows, key=lambda r: (-(r["density"] or 0.0), r["feature"]))
    for r in densest[:FEATURE_TABLE_ROWS]:
        top = " ".join(_md_token(t) for t in (r["top_logits"] or [])[:5])
        lines.append(
            f"| {r['feature']} | {r['density'] or 0:.3g} | {r['max_activation'] or 0:.3g} | {top} |"
        )
    code = (
        "import datasets\n"
        "from huggingface_hub import hf_hub_download\n\n"
        f'path = hf_hub_download("{repo_id}", "features.parquet")\n'
        'features = datasets.load_dataset("parquet", data_files=path, split="train")'
    )
    lines += ["", "```python", code, "```", "", ""]
    return "\n".join(lines)


def _fill(template: str, values: dict[str, str]) -> str:
    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"model card template uses {{{{ {name} }}}}, which hub.py does not fill")
        return values[name]

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lookup, template)


def render_model_card(
    source,
    metrics: dict | None = None,
    *,
    repo_id: str | None = None,
    training: dict | None = None,
    remote_code: bool = False,
    saelens: bool = False,
) -> str:
    """The README.md for an SAE: Hub metadata, what it is, how it was trained, metrics, usage.
    ``saelens``: the repo also holds the SAELens folder; the card says how SAELens loads it.

    ``source`` is a run folder (its config.json, metrics.json, training_config.* and ZF plot are
    read), a SparseAutoencoder or an SAEConfig. Explicit ``metrics``/``training`` win over files.
    """
    run_dir = None
    if isinstance(source, SAEConfig):
        config = source
    elif isinstance(getattr(source, "config", None), SAEConfig):
        config = source.config
    elif isinstance(source, str | os.PathLike):
        run_dir = Path(source)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist (or is not a folder)")
        config = _config_from_dir(run_dir)
        if metrics is None and (run_dir / "metrics.json").is_file():
            metrics = read_json(run_dir / "metrics.json")
        if training is None:
            training = read_training_config(run_dir)
    else:
        raise TypeError(
            "render_model_card expects a run folder path, a SparseAutoencoder or an SAEConfig; "
            f"got {type(source).__name__}"
        )
    metrics, training = metrics or {}, training or {}
    repo_id = repo_id or "<user>/<repo>"
    activation = config.activation
    rule = get_rule(activation)

    metadata = {"library_name": "hf-topafa", "license": LICENSE}
    metadata["tags"] = CARD_TAGS[:2] + [rule.card_tag] + CARD_TAGS[2:]
    if config.base_model:
        metadata["base_model"] = config.base_model
    if config.dataset:
        metadata["datasets"] = [config.dataset]

    hook = HOOK_TEXT.get(config.hook_point or "", "activations at {hook} of block {layer}")
    if config.layer is None and config.hook_point is None:
        hook_description = "activations"
    else:
        hook_description = hook.format(layer=config.layer, hook=config.hook_point)
    base_model = config.base_model
    base_link = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a model"
    title_parts = [f"{rule.display_name} SAE"]
    if base_model:
        title_parts.append(f"for {base_model.split('/')[-1]}")
    if config.layer is not None:
        title_parts.append(f"layer {config.layer}")
    if config.hook_point:
        title_parts.append(config.hook_point)

    rows = [
        ("Base model", f"`{base_model}`" if base_model else "not recorded"),
        ("Layer", str(config.layer) if config.layer is not None else "not recorded"),
        ("Hook point", f"`{config.hook_point}`" if config.hook_point else "not recorded"),
        ("Input width (d_in)", f"{config.d_in:,}"),
        ("Features (d_sae)", f"{config.d_sae:,} ({config.d_sae / config.d_in:g}x)"),
        ("Activation", f"`{activation}`" + (f", k = {config.k}" if config.k else "")),
        ("Input normalization", f"`{config.input_normalization}`"),
        (
            "Objective",
            f"`{config.loss_convention}` (lambda_AFA = {config.afa_coef:g}); encoder bias "
            f"{'trained' if config.encoder_bias else 'none'}; init `{config.init}`",
        ),
        ("Training dataset", f"`{config.dataset}`" if config.dataset else "not recorded"),
    ]
    weights = getattr(config, "base_model_weights", None)
    if weights:  # the exact file read: other weights of the same model give other activations
        rows.insert(1, ("Base-model weights", f"`{weights}`"))
    if config.context_length:
        rows.append(("Context length", f"{config.context_length:,} tokens"))

    full_config = {"sae": _config_fields(config)}
    if training:
        full_config["training"] = public_training_config(training)

    if run_dir is not None and (run_dir / "zf_plot.png").is_file():
        plot = "![ZF plot: ||z|| against ||f~|| per token](zf_plot.png)"
    else:
        plot = "No ZF plot image was produced for this run; the usage code below computes its data."
    plot += (
        "\n\nEach point is a token: its input norm ||z|| against the norm of its decoder-scaled "
        "feature vector ||f~||. Tokens above the AFA band are over-activated, tokens below it "
        "under-activated."
    )
    if run_dir is not None and (run_dir / "zf_plot.html").is_file():
        plot += " An interactive version is in [zf_plot.html](zf_plot.html)."

    values = {
        "metadata": yaml.safe_dump(metadata, sort_keys=False).strip(),
        "title": " ".join(title_parts),
        "hook_description": hook_description,
        "base_model_link": base_link,
        "activation_description": " ".join(
            filter(None, (rule.card_text.format(k=config.k), rule.ground_truth))
        ),
        "sae_table": "\n".join(f"| {name} | {value} |" for name, value in rows),
        "training_summary": _training_summary(config, training, metrics),
        "config_json": json.dumps(full_config, indent=2, default=str),
        "metrics_section": _metrics_section(metrics),
        "zf_plot_section": plot,
        "usage_intro": "Load the SAE and run the ZF analysis on one sentence:",
        "usage_code": _usage_code(config, repo_id),
        "remote_code_section": (_remote_code_section(repo_id) if remote_code else "")
        + (_saelens_section(repo_id, activation) if saelens else ""),
        "features_section": _features_section(run_dir, repo_id) if run_dir is not None else "",
    }
    return scrub_token(_fill(TEMPLATE_PATH.read_text(encoding="utf-8"), values), None)


def scrub_token(text: str, token: str | None) -> str:
    """Remove the token, and anything shaped like an HF token, from text shown to the user."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "hf_***", text)
