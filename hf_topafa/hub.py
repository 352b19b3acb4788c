"""Share SAEs on the Hugging Face Hub: a generated model card and a one-commit upload of a run.

Loading needs nothing from here: ``SparseAutoencoder.from_pretrained("user/repo", revision=...)``
and ``AutoModel.from_pretrained`` (after ``import hf_topafa``) read what ``push_run`` uploads.

The card template is ``hf_topafa/data/model_card.md``: it lives inside the package so that an
installed copy renders the same card as a source checkout (``model_cards/`` holds an example).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

from .configuration_sae import SAEConfig
from .helpers import is_number
from .rules import get_rule

TEMPLATE_PATH = Path(__file__).parent / "data" / "model_card.md"
REQUIRED_FILES = ("config.json", "model.safetensors")
# Uploaded when the run folder has them (written by training, evaluation and plotting).
OPTIONAL_FILES = (
    "metrics.json",
    "zf_plot.png",
    "zf_plot.html",
    "training_config.json",
    "training_config.yaml",
    "features.parquet",  # hf-topafa features: the feature browser's data
    "examples.parquet",
)
FEATURE_TABLE_ROWS = 5
# trust_remote_code: transformers imports these classes from the repo's own copy of the code.
AUTO_MAP = {
    "AutoConfig": "configuration_sae.SAEConfig",
    "AutoModel": "modeling_sae.SparseAutoencoder",
}
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _read_training_config(run_dir: Path) -> dict:
    if (run_dir / "training_config.json").is_file():
        return _read_json(run_dir / "training_config.json")
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

    return {k: v for k, v in training.items() if k != "output" and not private(k, v)}


def _config_from_dir(run_dir: Path) -> SAEConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not an SAE folder: config.json is missing "
            "(a run folder holds config.json and model.safetensors, as written by save_pretrained)"
        )
    raw = _read_json(path)
    if raw.get("model_type") != SAEConfig.model_type:
        raise ValueError(
            f"{path} has model_type={raw.get('model_type')!r}; an hf-topafa SAE has "
            f"model_type={SAEConfig.model_type!r}"
        )
    return SAEConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"})


def check_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """The files of a run folder to upload; a clear error when it is not a saved SAE."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist (or is not a folder)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an SAE folder: {', '.join(missing)} missing "
            f"(a run folder holds {' and '.join(REQUIRED_FILES)}, as written by save_pretrained)"
        )
    from .saved import check_saved_sae  # shapes and truncation, with readable errors

    check_saved_sae(str(folder))
    return [folder / n for n in REQUIRED_FILES + OPTIONAL_FILES if (folder / n).is_file()]


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
    budget = training.get("max_tokens")
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
        "from hf_topafa.lm import load_language_model, truncated_forward",
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
        '    print(f"{token!r:>14}  ||z||={z:8.3f}  ||f~||={f:8.3f}  eps_LBO={eps:.4f}")',
        "",
        "from hf_topafa.plots import save_zf_plot  # needs the plot extra",
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
) -> str:
    """The README.md for an SAE: Hub metadata, what it is, how it was trained, metrics, usage.

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
            metrics = _read_json(run_dir / "metrics.json")
        if training is None:
            training = _read_training_config(run_dir)
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
        "activation_description": rule.card_text.format(k=config.k),
        "sae_table": "\n".join(f"| {name} | {value} |" for name, value in rows),
        "training_summary": _training_summary(config, training, metrics),
        "config_json": json.dumps(full_config, indent=2, default=str),
        "metrics_section": _metrics_section(metrics),
        "zf_plot_section": plot,
        "usage_intro": "Load the SAE and run the ZF analysis on one sentence:",
        "usage_code": _usage_code(config, repo_id),
        "remote_code_section": _remote_code_section(repo_id) if remote_code else "",
        "features_section": _features_section(run_dir, repo_id) if run_dir is not None else "",
    }
    return _scrub(_fill(TEMPLATE_PATH.read_text(encoding="utf-8"), values), None)


# --------------------------------------------------------------------------------------------
# Remote code: loading without installing hf-topafa


def remote_code_files() -> dict[str, bytes]:
    """The package's model code as transformers' ``trust_remote_code`` loader needs it in a repo.

    Starts from the modules AUTO_MAP names and follows their relative imports. The loader fetches
    the sibling modules it spots as ``from .x import y``; a plain ``from . import x`` escapes it,
    so after each such line one more import names the module in the form it spots.
    """
    package = Path(__file__).parent
    pending = sorted({target.split(".")[0] for target in AUTO_MAP.values()})
    files: dict[str, bytes] = {}
    while pending:
        module = pending.pop()
        if f"{module}.py" in files:
            continue
        source = (package / f"{module}.py").read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in sorted(ast.walk(ast.parse(source)), key=lambda n: -getattr(n, "lineno", 0)):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            if node.module is not None:
                pending.append(node.module.split(".")[0])
                continue
            indent = " " * node.col_offset
            for alias in node.names:
                pending.append(alias.name)
                lines.insert(
                    node.end_lineno,
                    f"{indent}from .{alias.name} import __name__ as _{alias.name}_module  # noqa: F401"
                    f" (lets transformers fetch {alias.name}.py)",
                )
        files[f"{module}.py"] = ("\n".join(lines) + "\n").encode()
    return files


def _config_with_auto_map(config_path: Path) -> bytes:
    config = _read_json(config_path)
    config["auto_map"] = dict(AUTO_MAP)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------------------------
# Uploading


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    remote_code: bool = False,
    create_pr: bool = False,
    commit_description: str | None = None,
) -> str:
    """Upload a run folder and its generated model card as one commit; returns the commit URL.

    Creates the repo (and the branch ``revision``) when missing. The returned string is a
    ``huggingface_hub.CommitInfo``: ``.oid`` is the commit id. ``private`` applies only when
    the repo is created. Files unchanged since the last push are not re-uploaded.
    ``training_config.*`` is uploaded without local paths and token-like settings.
    ``remote_code`` also uploads the model code and an ``auto_map``, so that
    ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` works without hf-topafa.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    files = check_run_dir(run_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = render_model_card(run_dir, repo_id=repo_id, remote_code=remote_code)
    uploads: dict[str, str | bytes] = {p.name: str(p) for p in files}
    training = public_training_config(_read_training_config(Path(run_dir)))
    if "training_config.json" in uploads:
        uploads["training_config.json"] = (json.dumps(training, indent=2) + "\n").encode()
    elif "training_config.yaml" in uploads:
        uploads["training_config.yaml"] = yaml.safe_dump(training, sort_keys=False).encode()
    if remote_code:
        uploads["config.json"] = _config_with_auto_map(Path(run_dir) / "config.json")
        uploads.update(remote_code_files())
    uploads["README.md"] = card.encode()
    operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=c) for n, c in uploads.items()]
    with warnings.catch_warnings():  # the feature parquet files belong with the SAE, on purpose
        warnings.filterwarnings("ignore", message=".*commit a data file.*", category=UserWarning)
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload SAE with hf-topafa",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def push_model(
    model,
    repo_id: str,
    *,
    metrics: dict | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    remote_code: bool = False,
    **commit_options,
) -> str:
    """``push_run`` for an SAE in memory: saved to a temporary run folder with its metrics.
    ``commit_options``: ``create_pr``, ``commit_description``."""
    with tempfile.TemporaryDirectory(prefix="hf_topafa_push_") as tmp:
        model.save_pretrained(tmp)
        if metrics:
            Path(tmp, "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        return push_run(
            tmp,
            repo_id,
            private=private,
            revision=revision,
            token=token,
            commit_message=commit_message,
            remote_code=remote_code,
            **commit_options,
        )


# --------------------------------------------------------------------------------------------
# Command line


def _scrub(text: str, token: str | None) -> str:
    """Remove the token, and anything shaped like an HF token, from text shown to the user."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "hf_***", text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-topafa push",
        description="Upload a run folder (config.json, model.safetensors, metrics.json, ZF plot) "
        "to the Hugging Face Hub with a generated model card.",
    )
    parser.add_argument(
        "run_dir", help="folder written by training: config.json, model.safetensors"
    )
    parser.add_argument("repo_id", help="Hub repo, 'user/name' (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument(
        "--token",
        default=None,
        help="Hub token (default: $HF_TOKEN or the token saved by `hf auth login`; prefer those, "
        "a token on the command line is visible to other users of the machine)",
    )
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument(
        "--remote-code",
        action="store_true",
        help="also upload the model code, so AutoModel.from_pretrained(repo, "
        "trust_remote_code=True) loads it without hf-topafa installed",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the folder and print the model card and the file list; upload nothing",
    )
    return parser


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    token = args.token or None
    from .sources import HUB_ID

    if not HUB_ID.fullmatch(args.repo_id) or ".." in args.repo_id:
        print(
            f"error: invalid repo id {args.repo_id!r}: a Hub repo id is 'user/name' (letters, "
            "digits, '-', '_', '.')",
            file=sys.stderr,
        )
        return 2
    try:
        if args.dry_run:
            files = check_run_dir(args.run_dir)
            card = render_model_card(
                args.run_dir, repo_id=args.repo_id, remote_code=args.remote_code
            )
            print(card)
            extra = list(remote_code_files()) if args.remote_code else []
            names = ", ".join([p.name for p in files] + extra + ["README.md"])
            print(f"would upload to {args.repo_id}: {names}", file=sys.stderr)
            return 0
        commit = push_run(
            args.run_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            token=token,
            commit_message=args.message,
            remote_code=args.remote_code,
        )
    except Exception as err:  # noqa: BLE001 - one scrubbed line instead of a traceback
        from huggingface_hub import constants, get_token

        found = token or get_token()
        message = _scrub(" ".join(f"{type(err).__name__}: {err}".split()), found)
        where = f"{constants.ENDPOINT}, token {'found' if found else 'not found'}"
        print(f"error: push failed ({where}): {message}", file=sys.stderr)
        if getattr(getattr(err, "response", None), "status_code", None) == 401:
            print(
                "hint: the Hub refused the token; set HF_TOKEN, run `hf auth login`, or pass "
                "--token with a write token",
                file=sys.stderr,
            )
        return 2
    print(f"pushed {args.run_dir} to {commit}")
    return 0
