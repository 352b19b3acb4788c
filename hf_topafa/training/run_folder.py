"""The run folder: checking it before work, resuming from it, and writing its final files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..helpers import replace, write_json
from ..sae.rules import RULE_OPTIONS, get_rule
from .checkpoint import load_latest_intact
from .train_config import (
    FIELD_DEFAULTS,
    METRICS,
    PLOT_HINT,
    RUN_CONTROL,
    TRAINING_CONFIG,
    ZF_PLOT,
    TrainConfig,
    flat_training_config,
)


def check_output_folder(config: TrainConfig) -> tuple[bool, bool]:
    """Check --output before any work; returns (continue from a checkpoint, delete it first).

    Read-only, so every process can run it; only the main process deletes.
    """
    run = Path(config.run.output)
    saved = run / TRAINING_CONFIG
    if run.exists() and not run.is_dir():
        raise ValueError(f"--output {run} is a file; give a folder")
    if not run.exists() or not any(run.iterdir()):
        return False, False
    if not saved.is_file():
        raise ValueError(
            f"--output {run} is not empty and holds no hf-topafa run ({TRAINING_CONFIG} missing); "
            "choose an empty or new folder"
        )
    if config.run.overwrite:
        return False, True
    try:
        saved_config = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{saved} is corrupt ({err}); it records the run in --output, so restore it or "
            "choose another --output"
        ) from err
    if not isinstance(saved_config, dict):
        raise ValueError(f"{saved} must hold a JSON object; got {type(saved_config).__name__}")
    differences = _config_differences(saved_config, config)
    if differences:
        hint = "" if config.run.resume else " Pass --overwrite to replace it."
        raise ValueError(
            f"--output {run} holds a different run ({'; '.join(differences)}). "
            f"Choose another --output.{hint}"
        )
    return True, False


def finished_run_note(config: TrainConfig) -> str | None:
    """When --output holds this very run, finished (its metrics.json is written), the line that
    says so and how to start again; else None. Without --overwrite such a run is left as it is,
    byte for byte: continuing it would redo its held-out metrics and rewrite its files. A
    different run there is refused as ``check_output_folder`` says."""
    if config.run.overwrite:
        return None
    same_run, _ = check_output_folder(config)
    run = Path(config.run.output)
    if not (same_run and (run / METRICS).is_file()):
        return None
    return (
        f"{run} holds this run, finished ({METRICS} is written); it was left as it is. To train "
        "it again pass --overwrite, or give a new --output."
    )


def recorded_config(config: TrainConfig) -> dict:
    """``training_config.json``'s content: the configuration without the one-time actions
    --resume and --overwrite, so that ``--config RUN/training_config.json`` replays neither."""
    recorded = config.to_dict()
    recorded["run"].update(resume=False, overwrite=False)
    return recorded


def _config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """What differs, field by field, between a saved training_config.json (by section, or flat as
    written before the sections) and ``config``, leaving out the run section (RUN_CONTROL)."""
    saved = flat_training_config(saved)
    current = config.to_flat()
    current["dead_tokens_threshold"] = config.resolved_dead_threshold()
    out = []
    for key, value in current.items():
        if key in RUN_CONTROL:
            continue
        if key in ("model", "layer", "hook_point", "dataset", "context_length") and saved.get(
            "activation_cache"
        ):
            continue  # taken from the cache's manifest
        if key == "d_sae" and value is None:
            continue
        if key in RULE_OPTIONS and key not in get_rule(config.sae.activation).options:
            continue  # a run written before such options were refused may hold one
        if key not in saved and key in FIELD_DEFAULTS and value == FIELD_DEFAULTS[key]:
            continue  # a field added after the run was written, left at its default
        if saved.get(key) != value:
            out.append(f"{key}: saved {saved.get(key)!r}, now {value!r}")
    return out


def held_out_metrics(sae, eval_x: torch.Tensor) -> tuple[dict, dict]:
    """Top-level figures for metrics.json, the full evaluation block, and the ZF diagnostics.

    ``normalized_mse`` is the paper's per-token mean of ||x - x_hat||^2 / ||x||^2, as in
    ``hf-topafa evaluate``; ``total_normalized_mse`` is sum ||x - x_hat||^2 / sum ||x||^2.
    """
    from ..evaluation.evaluate import evaluate_activations

    ev, details = evaluate_activations(sae, eval_x, device=str(eval_x.device))
    rec, sparsity, afa_block = ev["reconstruction"], ev["sparsity"], ev["afa"]
    top = {
        "eval_tokens": ev["num_tokens"],
        "l0_mean": sparsity["l0_mean"],
        "normalized_mse": rec["normalized_mse"],
        "total_normalized_mse": rec["total_normalized_mse"],
        "fvu": rec["fvu"],
        "eps_lbo_quartiles": [afa_block["eps_lbo_quartiles"][q] for q in ("q25", "q50", "q75")],
        "dead_features_held_out": sparsity["dead_features"],
    }
    if "k_quantiles" in sparsity:
        top["k_mean"] = sparsity["k_mean"]
        top["k_quantiles"] = sparsity["k_quantiles"]
    top["evaluation"] = ev
    return top, details.diagnostics()


def save_final(run: Path, sae, metrics: dict, diagnostics: dict, config: TrainConfig) -> None:
    """save_pretrained into a temporary folder and move the files in; then metrics and the plot."""
    tmp = run / f".final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_pretrained(tmp)
    for item in tmp.iterdir():
        item.chmod(0o644)
        replace(item, run / item.name)
    tmp.rmdir()
    from ..evaluation.evaluate import to_json

    write_json(run / METRICS, to_json(metrics))
    try:
        from ..evaluation import plots

        cfg = sae.config
        title = f"{cfg.activation} SAE, {cfg.base_model} layer {cfg.layer} {cfg.hook_point}"
        plots.save_zf_plot(diagnostics, run / ZF_PLOT, title)
    except ImportError as err:
        print(f"note: the ZF plot was skipped ({err}). Install matplotlib with: {PLOT_HINT}")


def summary(run: str | os.PathLike) -> str:
    """The final figures and where each file of the run folder is."""
    run = Path(run).resolve()
    m = json.loads((run / METRICS).read_text(encoding="utf-8"))
    q = ", ".join("inf" if v is None else f"{v:.4g}" for v in m["eps_lbo_quartiles"])
    lines = [
        f"trained {m['tokens_trained']:,} tokens in {m['steps']} steps "
        f"({m['wall_time_s']:.0f} s wall)",
        f"held-out ({m['eval_tokens']} tokens): L0 {m['l0_mean']:.2f}, normalized MSE "
        f"{m['normalized_mse']:.4f}, FVU {m['fvu']:.4f}, eps_LBO quartiles [{q}], "
        f"dead features {m['dead_features']}",
    ]
    if "k_quantiles" in m:
        kq = m["k_quantiles"]
        saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
        rule = get_rule(saved["activation"]).display_name
        lines.append(f"{rule} k: median {kq['q50']:.0f} (5%-95%: {kq['q05']:.0f}-{kq['q95']:.0f})")
    lines.append("files:")
    for name, what in (
        ("config.json", "SAE configuration"),
        ("model.safetensors", "SAE weights"),
        (METRICS, "final metrics"),
        (ZF_PLOT, "ZF plot of held-out tokens"),
        (TRAINING_CONFIG, "resolved training configuration"),
    ):
        path = run / name
        lines.append(f"  {what:32s} {path}" + ("" if path.exists() else "  (missing)"))
    return "\n".join(lines)


def intact_checkpoint(run: Path, config: TrainConfig, resuming: bool, is_main: bool):
    """The newest loadable checkpoint of the run, or None; refuses a resume with nothing to
    resume (a finished run never gets here: ``finished_run_note``)."""
    if not resuming:
        if config.run.resume:
            raise ValueError(
                f"--resume: {run} holds no run to resume (missing or empty); drop --resume to "
                "start a new run there"
            )
        return None
    found = load_latest_intact(run, on_skip=lambda m: is_main and print(f"warning: {m}"))
    if found is None and config.run.resume:
        raise ValueError(
            f"--resume: {run} has no intact checkpoint to resume; drop --resume to start this "
            "run again from step 0, or pass --overwrite"
        )
    return found
