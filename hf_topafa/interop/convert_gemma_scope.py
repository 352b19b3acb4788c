"""Gemma Scope params.npz files as ``Imported`` SAEs; the algebra is explained in
``hf_topafa.convert``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from . import convert_common as common
from .convert_common import Imported, UnsupportedSAEError

_GEMMA_KEYS = "W_enc, W_dec, b_enc, b_dec, threshold"


def read_gemma_scope(path: Path) -> Imported:
    """Gemma Scope params.npz: W_enc [d_model, d_sae], W_dec, b_enc, b_dec, threshold.

    Encoding is ``p = x W_enc + b_enc`` (no b_dec on the input), then JumpReLU.
    """
    file = path if path.is_file() else path / "params.npz"
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no params.npz (Gemma Scope's weights file)")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: torch.from_numpy(np.array(npz[name])) for name in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{file} is not a readable .npz file ({err})") from err
    if "W_enc" not in arrays:
        raise ValueError(f"{file} lacks W_enc; Gemma Scope params.npz holds {_GEMMA_KEYS}")
    d_in, d_sae = arrays["W_enc"].shape
    shapes = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    common.check_tensors(file, arrays, shapes)
    threshold = arrays["threshold"].double()
    if (threshold < 0).any():
        raise UnsupportedSAEError(
            f"{file}: {int((threshold < 0).sum())} thresholds are negative (min "
            f"{threshold.min().item():.4g}); Gemma Scope's JumpReLU p * [p > t] then keeps "
            "negative activations, which our ReLU-first rule cannot express"
        )
    # the path as named, not resolved: in the Hub cache params.npz is a link to blobs/<hash>,
    # and the layer and site are only in the name of the link
    text = file.absolute().as_posix()
    layer_match = re.search(r"layer_(\d+)", text)
    layer = int(layer_match.group(1)) if layer_match else None
    site = re.search(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)", text)
    base_model = hook_point = hook_name = None
    if site:
        size, kind, where = site.groups()
        base_model = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        hook_point = {"res": "resid_post", "mlp": "mlp_out", "att": None}[where]
        if layer is not None:
            suffix = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
            hook_name = f"blocks.{layer}.{suffix[where]}"
    provenance = {
        "base_model": base_model,
        "layer": layer,
        "hook_point": hook_point,
        "source_hook_name": hook_name,
    }
    weights = {name: arrays[name] for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    return Imported(
        "jumprelu", **weights, subtracts_b_dec=False, threshold=threshold, provenance=provenance
    )
