"""SAELens folders (cfg.json + sae_weights.safetensors) as ``Imported`` SAEs; the algebra is
explained in ``hf_topafa.convert``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from . import convert_common as common
from .convert_common import Imported, UnsupportedSAEError

# TransformerLens model aliases used in SAELens configs -> Hugging Face ids.
_TRANSFORMER_LENS_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "pythia-160m-deduped": "EleutherAI/pythia-160m-deduped",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-2-27b": "google/gemma-2-27b",
}


_SAELENS_BATCHTOPK = ("batchtopk", "matryoshka_batchtopk")


def read_saelens(path: Path, norm_scaling_factor: float | None = None) -> Imported:
    """SAELens folder: cfg.json + sae_weights.safetensors (v6 layout and the older flat one)."""
    folder = common.folder_of(path, ("cfg.json", "sae_weights.safetensors"))
    cfg = common.read_json(folder / "cfg.json")
    weights = common.read_safetensors(folder / "sae_weights.safetensors")
    legacy = "metadata" not in cfg
    meta = cfg if legacy else (cfg.get("metadata") or {})
    where = f"{folder / 'cfg.json'}"

    architecture, k, training_checkpoint = _architecture(cfg, weights, legacy, folder)
    hook_name = meta.get("hook_name") or meta.get("hook_point")
    reshape = cfg.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if hook_name and "hook_z" in hook_name else "none"
    if reshape != "none":
        raise UnsupportedSAEError(
            f"{where}: reshape_activations={reshape!r} reads [..., n_heads, d_head] inputs; "
            "our SAEs read flat [..., d_in] activations at a residual, MLP or attention output"
        )
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool):
        normalize = "expected_average_only_in" if normalize else "none"
    normalize = normalize or "none"

    d_in = common.positive_int(cfg.get("d_in"), f"{where}: d_in")
    d_sae = common.positive_int(cfg.get("d_sae"), f"{where}: d_sae")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        if "threshold" not in weights and "log_threshold" in weights:
            weights["threshold"] = weights.pop("log_threshold").double().exp()
        shapes["threshold"] = (d_sae,)
    if training_checkpoint:  # a 0-d float64 buffer; save_inference_model turns it into threshold
        topk_threshold = weights.pop("topk_threshold")
        if topk_threshold.numel() != 1:
            raise ValueError(f"{folder}: topk_threshold has shape {list(topk_threshold.shape)}")
    scaling = weights.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise UnsupportedSAEError(
            f"{folder}: sae_weights.safetensors holds a scaling_factor that is not all ones "
            "(the finetuning scaling of SAELens < 6); such files are not converted here"
        )
    common.check_tensors(folder / "sae_weights.safetensors", weights, shapes)
    t = {name: weights[name].double() for name in shapes}

    _fold_input_scale(t, normalize, norm_scaling_factor, where)

    # TopKTrainingSAEConfig defaults rescale_acts_by_decoder_norm to True, TopKSAEConfig to False.
    rescaled = cfg.get("rescale_acts_by_decoder_norm", training_checkpoint)
    if (architecture == "topk" or training_checkpoint) and rescaled:
        # Ranks hidden_pre * ||W_dec,i|| and decodes acts / ||W_dec,i||: fold both (exact).
        # After the input-scale fold, as SAE.from_pretrained orders them.
        norms = torch.linalg.vector_norm(t["W_dec"], dim=-1)
        if not (norms > 0).all():
            raise UnsupportedSAEError(f"{where}: a decoder row has zero norm")
        t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms[:, None]

    if training_checkpoint:
        # What save_inference_model writes: the folded weights and, under architecture
        # jumprelu, threshold = ones_like(b_enc) * topk_threshold (rounded to b_enc's dtype).
        value = float(topk_threshold.reshape(()).item())
        t["threshold"] = torch.full((d_sae,), value, dtype=weights["b_enc"].dtype).double()
        activation, source_k, k = "jumprelu", k, None
    else:
        activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[architecture]
        source_k = None
    if activation == "topk":
        k = common.positive_int(k, f"{where}: k")
    model_name = meta.get("model_name")
    layer, hook_point = _parse_transformer_lens_hook(hook_name)
    if layer is None and meta.get("hook_layer") is not None:
        layer = int(meta["hook_layer"])
    provenance = {
        "base_model": _TRANSFORMER_LENS_NAMES.get(model_name, model_name),
        "layer": layer,
        "hook_point": hook_point,
        "dataset": meta.get("dataset_path"),
        "context_length": meta.get("context_size"),
        "source_architecture": architecture,
        "source_k": source_k,
        "source_matryoshka_widths": cfg.get("matryoshka_widths"),
        "source_model_name": model_name,
        "source_hook_name": hook_name,
        "source_hook_head_index": meta.get("hook_head_index"),
        "source_model_from_pretrained_kwargs": meta.get("model_from_pretrained_kwargs"),
        "source_prepend_bos": meta.get("prepend_bos"),
        "source_sae_lens_version": meta.get("sae_lens_version"),
    }
    return Imported(
        activation=activation,
        W_enc=t["W_enc"],
        W_dec=t["W_dec"],
        b_enc=t["b_enc"],
        b_dec=t["b_dec"],
        subtracts_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        threshold=t.get("threshold"),
        k=k,
        provenance=provenance,
    )


def _architecture(cfg: dict, weights: dict, legacy: bool, folder: Path):
    """(architecture, k, whether it is a BatchTopK training checkpoint), or a refusal."""
    where = f"{folder / 'cfg.json'}"
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k")
    if legacy and activation_fn == "topk" and kwargs.get("k") is not None:
        architecture, k = "topk", kwargs["k"]
    training_checkpoint = architecture in _SAELENS_BATCHTOPK
    if training_checkpoint and "topk_threshold" not in weights:
        raise UnsupportedSAEError(
            f"{where}: architecture {architecture!r} is a SAELens training checkpoint, but "
            f"{folder / 'sae_weights.safetensors'} holds no topk_threshold; convert the file "
            "save_inference_model wrote (architecture 'jumprelu') instead"
        )
    if architecture not in ("standard", "topk", "jumprelu", *_SAELENS_BATCHTOPK):
        raise UnsupportedSAEError(
            f"{where}: architecture {architecture!r} has no exact counterpart here; "
            "convertible SAELens architectures: standard, topk, jumprelu, and the training "
            f"checkpoints {', '.join(_SAELENS_BATCHTOPK)}"
        )
    if architecture in ("standard", "jumprelu") and activation_fn not in (None, "relu"):
        raise UnsupportedSAEError(
            f"{where}: activation_fn {activation_fn!r} is not ReLU; only ReLU-based "
            "standard and jumprelu SAEs convert exactly"
        )

    return architecture, k, training_checkpoint


def _fold_input_scale(t: dict, normalize: str, norm_scaling_factor, where: str) -> None:
    """Fold SAELens' expected_average_only_in input scale into the weights ``t``; refuse the
    per-token schemes."""
    if normalize == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise UnsupportedSAEError(
                f"{where}: normalize_activations='expected_average_only_in' scales inputs by a "
                "dataset constant that SAELens takes from its release table, not from these "
                "files. Pass norm_scaling_factor=S (--norm-scaling-factor S) to fold it exactly, "
                "or 1.0 to read inputs unscaled as SAE.load_from_disk does"
            )
        s = float(norm_scaling_factor)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"norm_scaling_factor must be a positive number; got {s!r}")
        # SAELens' fold_activation_norm_scaling_factor, which leaves b_enc and threshold alone.
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * s, t["W_dec"] / s, t["b_dec"] / s
    elif normalize != "none":
        raise UnsupportedSAEError(
            f"{where}: normalize_activations={normalize!r} transforms inputs at run time in a "
            "way our SAEs cannot reproduce (SAELens layer_norm divides by the Bessel-corrected "
            "std plus 1e-5, ours by the plain std; constant_norm_rescale scales each token to "
            "norm sqrt(d_in); an unfolded covariance_whitening needs statistics not in these "
            "files); refused rather than approximated"
        )
    elif norm_scaling_factor is not None:
        raise ValueError(
            f"norm_scaling_factor applies only to normalize_activations="
            f"'expected_average_only_in'; {where} has {normalize!r}"
        )


def _parse_transformer_lens_hook(name: str | None) -> tuple[int | None, str | None]:
    """'blocks.8.hook_resid_pre' -> (8, 'resid_pre'); other hooks keep only their layer."""
    if not name:
        return None, None
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out|attn_out)", name)
    if match:
        return int(match.group(1)), match.group(2)
    layer = re.match(r"blocks\.(\d+)\.", name)
    return (int(layer.group(1)) if layer else None), None
