"""sparsify (EleutherAI) folders as ``Imported`` SAEs; the algebra is explained in
``hf_topafa.convert``."""

from __future__ import annotations

import re
from pathlib import Path

from . import convert_common as common
from .convert_common import Imported, UnsupportedSAEError


def read_sparsify(path: Path) -> Imported:
    """EleutherAI sparsify hookpoint folder: cfg.json + sae.safetensors.

    sparsify encodes ``topk(ReLU(encoder(x - b_dec)))`` and decodes
    ``sum_i acts_i W_dec[i] + b_dec`` with encoder.weight [M, d_in] and W_dec [M, d_in].
    """
    folder = common.folder_of(path, ("cfg.json", "sae.safetensors"), subfolders_hint=True)
    cfg = common.read_json(folder / "cfg.json")
    where = f"{folder / 'cfg.json'}"
    if cfg.get("activation", "topk") != "topk":
        raise UnsupportedSAEError(
            f"{where}: activation {cfg.get('activation')!r} is not TopK; only sparsify's topk "
            "sparse coders convert exactly"
        )
    for flag, why in (
        ("transcode", "a transcoder predicts another module's output from this one's input"),
        ("skip_connection", "a linear skip connection W_skip adds x W_skip to the output"),
        ("signed", "signed TopK ranks |pre| and keeps negative activations"),
    ):
        if cfg.get(flag):
            raise UnsupportedSAEError(f"{where}: {flag}=true ({why}); our SAEs cannot express it")
    d_in = common.positive_int(cfg.get("d_in"), f"{where}: d_in")
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    d_sae = common.positive_int(d_sae, f"{where}: num_latents")
    k = common.positive_int(cfg.get("k"), f"{where}: k")
    weights = common.read_safetensors(folder / "sae.safetensors")
    shapes = {
        "encoder.weight": (d_sae, d_in),
        "encoder.bias": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    common.check_tensors(folder / "sae.safetensors", weights, shapes)
    run_cfg = (
        common.read_json(folder.parent / "config.json")
        if (folder.parent / "config.json").is_file()
        else {}
    )
    layer, hook_point = _parse_module_path(folder.name)
    model = run_cfg.get("model")
    provenance = {
        "base_model": model if isinstance(model, str) else None,
        "layer": layer,
        "hook_point": hook_point,
        "dataset": run_cfg.get("dataset") if isinstance(run_cfg.get("dataset"), str) else None,
        "context_length": run_cfg.get("ctx_len"),
        "source_hook_name": folder.name,
    }
    return Imported(
        activation="topk",
        W_enc=weights["encoder.weight"].double().T,
        W_dec=weights["W_dec"].double(),
        b_enc=weights["encoder.bias"].double(),
        b_dec=weights["b_dec"].double(),
        subtracts_b_dec=True,
        k=k,
        provenance=provenance,
    )


def _parse_module_path(name: str) -> tuple[int | None, str | None]:
    """sparsify hookpoints: 'layers.8' -> resid_post, 'layers.8.mlp' -> mlp_out, ..."""
    match = re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?", name)
    if not match:
        layer = re.search(r"(?:layers|h)\.(\d+)", name)
        return (int(layer.group(1)) if layer else None), None
    part = match.group(2)
    hook = "resid_post" if part is None else ("mlp_out" if part == "mlp" else "attn_out")
    return int(match.group(1)), hook
