"""dictionary_learning (saprmarks) checkpoints as ``Imported`` SAEs; the algebra is explained in
``hf_topafa.convert``."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import convert_common as common
from .convert_common import Imported, UnsupportedSAEError

_DL_CLASSES = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def read_dictionary_learning(path: Path, normalize_decoder: bool = True) -> Imported:
    """dictionary_learning folder: ae.pt (a state dict) + config.json ({"trainer": {...}}).

    Loaded with ``torch.load(weights_only=True)``. ``normalize_decoder`` mirrors
    ``AutoEncoder.from_pretrained``'s default: decoder columns scaled to unit norm, encoder rows
    and bias scaled up to match (reconstructions unchanged, activations rescaled).
    """
    weights_file, config_file = _dictionary_learning_files(path)
    cfg = common.read_json(config_file)
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    dict_class = trainer.get("dict_class")
    where = f"{config_file}"
    if dict_class not in _DL_CLASSES:
        raise UnsupportedSAEError(
            f"{where}: trainer.dict_class={dict_class!r} has no exact counterpart here; "
            f"convertible classes: {', '.join(_DL_CLASSES)}"
        )
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle errors come in many types
        raise ValueError(
            f"{weights_file} could not be read as a tensor-only state dict ({err})"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{weights_file} holds a {type(state).__name__}, not a state dict")
    d_in = trainer.get("activation_dim")
    d_sae = trainer.get("dict_size")
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        if "W_enc" in state:
            d_in, d_sae = state["W_enc"].shape
        shapes = {
            "W_enc": (d_in, d_sae),
            "b_enc": (d_sae,),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            "threshold": (d_sae,),
        }
        optional = {}
        if dict_class == "MatryoshkaBatchTopKSAE":  # same names; scalar k and threshold buffers
            del shapes["threshold"]
            optional = {"k": (), "threshold": (), "group_sizes": None}
        common.check_tensors(weights_file, state, shapes, optional)
        W_enc, b_enc = state["W_enc"].double(), state["b_enc"].double()
        W_dec, b_dec = state["W_dec"].double(), state["b_dec"].double()
        if dict_class == "JumpReluAutoEncoder":
            # apply_b_dec_to_input is an attribute, not saved; its default is False.
            subtracts_b_dec, threshold, k = False, state["threshold"].double(), None
            activation = "jumprelu"
        else:  # encode: ReLU((x - b_dec) W_enc + b_enc), then the threshold rule
            subtracts_b_dec = True
            activation, threshold, k = _batchtopk_rule(weights_file, state, trainer, d_sae)
    else:
        if "encoder.weight" in state:
            d_sae, d_in = state["encoder.weight"].shape
        shapes = {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae),
        }
        if dict_class == "AutoEncoder":
            shapes["bias"] = (d_in,)
            optional = {}
        else:
            shapes["b_dec"] = (d_in,)
            optional = {"k": (), "threshold": ()}  # 0-d buffers of the TopK classes
        common.check_tensors(weights_file, state, shapes, optional)
        W_enc = state["encoder.weight"].double().T
        b_enc = state["encoder.bias"].double()
        W_dec = state["decoder.weight"].double().T
        b_dec = state["bias" if dict_class == "AutoEncoder" else "b_dec"].double()
        subtracts_b_dec, threshold, k = True, None, None
        if dict_class == "AutoEncoder":
            activation = "relu"
            if normalize_decoder:
                norms = torch.linalg.vector_norm(W_dec, dim=-1)
                if not (norms > 0).all():
                    raise UnsupportedSAEError(f"{weights_file}: a decoder column is zero")
                W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        else:
            if dict_class == "BatchTopKSAE":
                activation, threshold, k = _batchtopk_rule(weights_file, state, trainer, d_sae)
            else:
                k = int(state["k"]) if "k" in state else trainer.get("k")
                k = common.positive_int(
                    k, f"{where}: k (neither the weights nor trainer.k give it)"
                )
                activation = "topk"
    if dict_class != "AutoEncoder" and normalize_decoder is not True:
        raise ValueError("normalize_decoder applies only to dictionary_learning AutoEncoder")
    submodule = trainer.get("submodule_name")
    hook = re.search(r"(resid_pre|resid_post|mlp_out|attn_out)", submodule or "")
    layer = trainer.get("layer")
    buffer = cfg.get("buffer") if isinstance(cfg.get("buffer"), dict) else {}
    provenance = {
        "base_model": trainer.get("lm_name"),
        "layer": int(layer) if isinstance(layer, int) else None,
        "hook_point": hook.group(1) if hook else None,
        "context_length": buffer.get("ctx_len"),
        "source_hook_name": submodule,
        "source_architecture": dict_class,
        "source_trainer_class": trainer.get("trainer_class"),
        "source_weights_file": weights_file.name,
    }
    return Imported(
        activation=activation,
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=b_enc,
        b_dec=b_dec,
        subtracts_b_dec=subtracts_b_dec,
        threshold=threshold,
        k=k,
        provenance=provenance,
    )


def _dictionary_learning_files(path: Path) -> tuple[Path, Path]:
    """The weights file asked for (a folder means its ae.pt) and the run's config.json.

    trainSAE writes ``ae.pt`` and ``config.json`` side by side and its checkpoints as
    ``checkpoints/ae_<step>.pt``, so a file's config.json is looked for next to it, then one up.
    """
    if path.is_dir():
        folder = common.folder_of(path, ("ae.pt", "config.json"))
        return folder / "ae.pt", folder / "config.json"
    if path.suffix != ".pt":
        raise ValueError(
            f"{path} is not a .pt file; give a dictionary_learning folder (ae.pt + config.json) "
            "or one of its .pt weight files (ae.pt, checkpoints/ae_<step>.pt)"
        )
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").is_file():
            return path, folder / "config.json"
    raise FileNotFoundError(
        f"no config.json next to {path} or in {path.parent.parent} (dictionary_learning keeps "
        "the run's config.json beside ae.pt, one folder above checkpoints/)"
    )


def _batchtopk_rule(file: Path, state: dict, trainer: dict, d_sae: int):
    """(activation, threshold, k) of dictionary_learning's BatchTopK encode at inference.

    ``encode(use_threshold=True)`` keeps ``ReLU(pre) * (ReLU(pre) > threshold)``. A threshold
    still at its initial -1 (never calibrated) keeps every ReLU(pre): that is a ReLU SAE.
    """
    k = int(state["k"]) if "k" in state else trainer.get("k")
    k = common.positive_int(k, f"{file}: k (neither the weights nor trainer.k give it)")
    if "threshold" not in state:
        raise UnsupportedSAEError(
            f"{file}: this BatchTopK SAE has no inference threshold (older dictionary_learning); "
            "its encode is a batch-level top-k, which depends on the batch and is not converted"
        )
    value = float(state["threshold"])
    if value < 0:  # ReLU output is >= 0 > value: the mask keeps everything
        return "relu", None, None
    return "batchtopk", torch.full((d_sae,), value).double(), k
