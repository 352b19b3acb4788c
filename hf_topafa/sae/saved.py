"""Checks of a saved SAE folder, before transformers reads it, so that errors name the problem.

Its own module so that the Hub code can check a folder without importing the model.
"""

from __future__ import annotations

import json
import os

from safetensors import SafetensorError, safe_open

from .configuration_sae import SAEConfig
from .rules import get_rule


def check_saved_sae(folder: str) -> None:
    """Raise a clear error if a saved SAE folder is missing files, is corrupt, or disagrees with itself."""
    config_path = os.path.join(folder, "config.json")
    weights_path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder} is not a saved SAE: config.json is missing "
            "(a saved SAE folder holds config.json and model.safetensors)"
        )
    try:
        with open(config_path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save the SAE") from err
    if not isinstance(raw, dict) or raw.get("model_type") != SAEConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"{config_path} has model_type={found!r}; an hf-topafa SAE has "
            f"model_type={SAEConfig.model_type!r}"
        )
    config = SAEConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"})
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"{folder} has no model.safetensors (weights load from safetensors only)"
        )
    try:
        with safe_open(weights_path, framework="pt") as fh:
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is truncated or not a safetensors file ({err})") from err
    expected = {
        "W_enc": (config.d_in, config.d_sae),
        "W_dec": (config.d_sae, config.d_in),
        "b_enc": (config.d_sae,),
        "b_dec": (config.d_in,),
    }
    if get_rule(config.activation).threshold is not None:
        expected["threshold"] = (config.d_sae,)
    for name, shape in expected.items():
        if name not in shapes:
            raise ValueError(
                f"{weights_path} lacks the tensor {name!r} (expected shape {list(shape)})"
            )
        if shapes[name] != shape:
            raise ValueError(
                f"{weights_path}: {name} has shape {list(shapes[name])} but config.json says "
                f"{list(shape)} (d_in={config.d_in}, d_sae={config.d_sae})"
            )
    size = os.path.getsize(weights_path)
    with open(weights_path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ValueError(
            f"{weights_path} is truncated: its header describes {8 + header_len + end} bytes, "
            f"the file has {size}"
        )
