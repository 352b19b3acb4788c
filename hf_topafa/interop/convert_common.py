"""What every converter shares: the SAE rewritten in our parameterization (``Imported``), the
refusal error, and readers of JSON and safetensors files whose errors name the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..helpers import read_json, require_positive_int  # noqa: F401 - read_json: the readers call common.read_json


class UnsupportedSAEError(ValueError):
    """The source SAE uses something our family cannot express exactly."""


@dataclass
class Imported:
    """A foreign SAE rewritten in our parameterization, before b_dec folding (float64)."""

    activation: str
    """Our selection rule: relu, topk, jumprelu or batchtopk."""
    W_enc: torch.Tensor
    """[d_in, d_sae]."""
    W_dec: torch.Tensor
    """[d_sae, d_in]."""
    b_enc: torch.Tensor
    """[d_sae], as the source adds it (to x W_enc, or to (x - b_dec) W_enc)."""
    b_dec: torch.Tensor
    """[d_in]."""
    subtracts_b_dec: bool
    """Whether the source encodes x - b_dec (True) or x (False; b_dec is then folded)."""
    threshold: torch.Tensor | None = None
    """[d_sae] for the rules that keep a threshold (jumprelu and batchtopk)."""
    k: int | None = None
    """Features per token for topk; the nominal k of batchtopk."""
    input_normalization: str = "none"
    """``SAEConfig.input_normalization``: "layer_norm" where the source standardizes as ours does."""
    provenance: dict = field(default_factory=dict)
    """SAEConfig keyword arguments: base_model, layer, hook_point, ... and source_* extras."""

    def __post_init__(self):
        # Held in float64 until written: folding b_dec and rescaling then add no rounding.
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.double())


def folder_of(path: Path, needed: tuple[str, ...], subfolders_hint: bool = False) -> Path:
    """The folder holding ``needed``: the path itself, or the folder of one of those files."""
    if not path.is_dir() and path.name not in needed:
        # Converting the folder's default file instead would report another SAE as this one.
        raise ValueError(
            f"{path} is not one of this format's files ({', '.join(needed)}); give the folder "
            "or one of those files"
        )
    folder = path if path.is_dir() else path.parent
    missing = [name for name in needed if not (folder / name).is_file()]
    if not missing:
        return folder
    hint = ""
    if subfolders_hint and folder.is_dir():
        inner = sorted(p.name for p in folder.iterdir() if (p / needed[0]).is_file())
        if inner:
            hint = f"; it has one folder per hook point, pick one: {', '.join(inner)}"
    raise FileNotFoundError(
        f"{folder} lacks {', '.join(missing)} (this format needs {', '.join(needed)}){hint}"
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is truncated or not a safetensors file ({err})") from err


def check_tensors(file, tensors: dict, shapes: dict, optional: dict | None = None) -> None:
    """Every expected tensor present with its shape; anything else is an unknown variant."""
    optional = optional or {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"{file} lacks the tensor {name!r} (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{file}: {name} has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
        if not tensors[name].is_floating_point():
            raise ValueError(f"{file}: {name} has dtype {tensors[name].dtype}, expected floats")
    extra = sorted(set(tensors) - set(shapes) - set(optional))
    if extra:
        raise UnsupportedSAEError(
            f"{file} holds tensors this converter does not know ({', '.join(extra)}); "
            f"expected {', '.join(shapes)} — a variant whose computation is not verified here"
        )
    for name, shape in optional.items():
        if name in tensors and shape is not None and tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{file}: {name} has shape {list(tensors[name].shape)}")


def check_output_folder(output: Path, overwrite: bool, marker: str) -> None:
    """Refuse an ``output`` that is a file, or a non-empty folder unless ``overwrite`` and it
    holds ``marker`` (the file a saved SAE of that layout has), so nothing else is replaced."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output {output} is a file; give a folder path")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {output} is not empty; choose another folder or pass "
                "overwrite=True (--overwrite)"
            )
        if not (output / marker).is_file():
            raise FileExistsError(
                f"refusing to replace {output}: it is not empty and holds no {marker}, so it "
                "is not a saved SAE"
            )


def positive_int(value, what: str) -> int:
    """Configs written by Python tools may hold 32.0 for 32."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return require_positive_int(what, value)
