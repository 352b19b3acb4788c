"""SAELens folders (cfg.json + sae_weights.safetensors) as ``Imported`` SAEs; the algebra is
explained in ``hf_topafa.convert``. The names both directions share (architectures, hooks, model
aliases, the metadata this package adds) are defined here; the writer is
``hf_topafa.integrations.saelens_export``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from ..sae.rules import ACTIVATIONS, get_rule
from . import convert_common as common
from .convert_common import Imported, UnsupportedSAEError

SAELENS_NATIVE = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
}
"""Our rule -> the SAELens architecture that computes it at inference (BatchTopK: its threshold)."""
SAELENS_REGISTERED = tuple(name for name in ACTIVATIONS if name not in SAELENS_NATIVE)
"""Rules SAELens lacks: ``hf_topafa.integrations.saelens`` registers an architecture of that name."""
METADATA_KEY = "hf_topafa"
"""cfg.json metadata entry holding what SAELens's fields do not: our rule when SAELens computes it
under another name (batchtopk saved as jumprelu), its k, and the training hyperparameters."""
CARRIED_FIELDS = (
    "afa_coef", "aux_k", "aux_coef", "dead_tokens_threshold", "l1_coef", "l0_coef",
    "jumprelu_init_threshold", "jumprelu_bandwidth", "batchtopk_threshold_momentum",
    "loss_convention", "encoder_bias", "init", "matryoshka_levels",
)  # fmt: skip
"""SAEConfig fields that change training only, kept under ``METADATA_KEY`` for the round trip."""
HOOK_NAME = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out|attn_out)")
"""TransformerLens hook names of our hook points."""

# TransformerLens model aliases used in SAELens configs -> Hugging Face ids.
TRANSFORMER_LENS_NAMES = {
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
_CONVERTIBLE = ("standard", "topk", "jumprelu", *_SAELENS_BATCHTOPK, *SAELENS_REGISTERED)


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
    if architecture == "jumprelu" or _registered_threshold(architecture):
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

    _fold_input_scale(t, normalize, norm_scaling_factor, where, architecture)

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

    source_k = None
    if training_checkpoint:
        # What save_inference_model writes: the folded weights and, under architecture
        # jumprelu, threshold = ones_like(b_enc) * topk_threshold (rounded to b_enc's dtype).
        value = float(topk_threshold.reshape(()).item())
        t["threshold"] = torch.full((d_sae,), value, dtype=weights["b_enc"].dtype).double()
        activation, source_k, k = "jumprelu", k, None
    elif architecture in SAELENS_REGISTERED:
        activation, k = architecture, None
    else:
        activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[architecture]
    ours = meta.get(METADATA_KEY)
    if ours is None and architecture in SAELENS_REGISTERED:
        # saved by SAELens's trainer (save_inference_model): its training fields are ours
        ours = meta.get("training_architecture_details")
    ours = _our_fields(ours, activation, where)
    activation, k = ours.pop("activation", activation), ours.pop("k", k)
    if get_rule(activation).needs_k:
        k = common.positive_int(k, f"{where}: k")
    provenance = _provenance(meta, cfg, hook_name, architecture, source_k)
    return Imported(
        activation=activation,
        W_enc=t["W_enc"],
        W_dec=t["W_dec"],
        b_enc=t["b_enc"],
        b_dec=t["b_dec"],
        subtracts_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        threshold=t.get("threshold"),
        k=k,
        input_normalization="layer_norm" if normalize == "layer_norm" else "none",
        provenance={**provenance, **ours},
    )


def _registered_threshold(architecture: str) -> bool:
    """Whether a registered architecture (one of our rules) keeps a per-feature threshold."""
    return architecture in SAELENS_REGISTERED and get_rule(architecture).threshold is not None


def _our_fields(ours, activation: str, where: str) -> dict:
    """The SAEConfig fields this package wrote under ``METADATA_KEY``: the carried training
    hyperparameters, and batchtopk (with its k) where SAELens reads a jumprelu threshold."""
    if not isinstance(ours, dict):
        return {}
    fields = {name: ours[name] for name in CARRIED_FIELDS if name in ours}
    if ours.get("activation") == "batchtopk" and activation == "jumprelu":
        # the same inference (pre > threshold); the rule and k say how it goes on training
        fields.update(activation="batchtopk", k=ours.get("k"))
    elif ours.get("activation") not in (None, activation):
        raise UnsupportedSAEError(
            f"{where}: metadata.{METADATA_KEY}.activation is {ours.get('activation')!r} but "
            f"the architecture computes {activation!r}; the folder was edited inconsistently"
        )
    return fields


def _provenance(meta: dict, cfg: dict, hook_name, architecture: str, source_k) -> dict:
    """SAEConfig provenance and ``source_*`` extras from SAELens's metadata."""
    model_name = meta.get("model_name")
    layer, hook_point = parse_transformer_lens_hook(hook_name)
    if layer is None and meta.get("hook_layer") is not None:
        layer = int(meta["hook_layer"])
    return {
        "base_model": TRANSFORMER_LENS_NAMES.get(model_name, model_name),
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
    if architecture not in _CONVERTIBLE:
        raise UnsupportedSAEError(
            f"{where}: architecture {architecture!r} has no exact counterpart here; "
            "convertible SAELens architectures: standard, topk, jumprelu, the training "
            f"checkpoints {', '.join(_SAELENS_BATCHTOPK)}, and those hf_topafa.integrations."
            f"saelens registers ({', '.join(SAELENS_REGISTERED)})"
        )
    if architecture in ("standard", "jumprelu") and activation_fn not in (None, "relu"):
        raise UnsupportedSAEError(
            f"{where}: activation_fn {activation_fn!r} is not ReLU; only ReLU-based "
            "standard and jumprelu SAEs convert exactly"
        )

    return architecture, k, training_checkpoint


def _fold_input_scale(
    t: dict, normalize: str, norm_scaling_factor, where: str, architecture: str
) -> None:
    """Fold SAELens' expected_average_only_in input scale into the weights ``t``; layer_norm is
    ours (``input_normalization="layer_norm"``); refuse the other per-token schemes."""
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
        # SAELens' fold_activation_norm_scaling_factor, which leaves b_enc and threshold alone,
        # except a threshold on decoder-scaled activations (afa_batch), which scales with W_dec.
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * s, t["W_dec"] / s, t["b_dec"] / s
        if _registered_threshold(architecture) and t["threshold"][0] >= 0:
            t["threshold"] = t["threshold"] / s ** get_rule(architecture).threshold_power
    elif normalize not in ("none", "layer_norm"):
        raise UnsupportedSAEError(
            f"{where}: normalize_activations={normalize!r} transforms inputs at run time in a "
            "way our SAEs cannot reproduce (constant_norm_rescale scales each token to norm "
            "sqrt(d_in); an unfolded covariance_whitening needs statistics not in these "
            "files); refused rather than approximated"
        )
    elif norm_scaling_factor is not None:
        raise ValueError(
            f"norm_scaling_factor applies only to normalize_activations="
            f"'expected_average_only_in'; {where} has {normalize!r}"
        )


def parse_transformer_lens_hook(name: str | None) -> tuple[int | None, str | None]:
    """'blocks.8.hook_resid_pre' -> (8, 'resid_pre'); other hooks keep only their layer."""
    if not name:
        return None, None
    match = HOOK_NAME.fullmatch(name)
    if match:
        return int(match.group(1)), match.group(2)
    layer = re.match(r"blocks\.(\d+)\.", name)
    return (int(layer.group(1)) if layer else None), None


def transformer_lens_hook(layer: int | None, hook_point: str | None) -> str | None:
    """(8, 'resid_pre') -> 'blocks.8.hook_resid_pre', the inverse of the reader's parse; None
    when either is unknown."""
    if layer is None or hook_point is None:
        return None
    return f"blocks.{layer}.hook_{hook_point}"


def transformer_lens_name(base_model: str | None) -> str | None:
    """The TransformerLens alias SAELens configs use for a Hugging Face id (the first alias
    the reader maps to it), or the id itself."""
    for alias, hf_id in TRANSFORMER_LENS_NAMES.items():
        if hf_id == base_model:
            return alias
    return base_model
